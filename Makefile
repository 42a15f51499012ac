# dicomnode: `make run` starts the node on its embedded defaults; `make test` runs the tests.
# Every target bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
PYTEST_ARGS ?=

.PHONY: run test test-slow reliability bench gpu-kit lint migration venv clean ohif viewer \
	bench-viewer

venv: $(STAMP)

# torch is pinned in constraints.txt (the CPU wheel on local disk); installing it first keeps pip
# from resolving a multi-GB CUDA build for packages that depend on it (monai).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,nnunet,postgres]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dicomnode serve

# The viewer tests (marked viewer) need OHIF's prebuilt viewer: fetched once into .ohif/.
test: $(STAMP) ohif
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# OHIF (npm @ohif/app, pinned in dicomnode/lab/viewer/ohif.py with its integrity hash), fetched
# with `npm pack` into the git-ignored .ohif/ once; never at run time. Without npm it says so and
# the viewer tests skip.
ohif: $(STAMP)
	@$(BIN)/python -m dicomnode.lab.viewer.ohif || echo "OHIF not fetched: the viewer tests will skip"

# Orthanc (DICOMweb), OHIF and the node on loopback, a synthetic study sent through the node;
# prints the URL to open. VIEWER_ARGS="--backend threshold" for a quicker run.
viewer: $(STAMP) ohif
	$(BIN)/python -m dicomnode.lab.viewer $(VIEWER_ARGS)

# Last instance acknowledged -> SEG drawn in OHIF (headless Chromium), docs/benchmarks.md.
bench-viewer: $(STAMP) ohif
	$(BIN)/python bench/viewer.py

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# The full reliability profile (make test runs the reduced one); prints the figures table.
reliability: $(STAMP)
	DICOMNODE_RELIABILITY=full $(BIN)/python -m pytest tests/reliability -m 'not gpu' \
		--timeout 3600 $(PYTEST_ARGS)
	$(BIN)/python bench/reliability_report.py

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

# .gpu-kit/ (<= 52 MiB, git-ignored): what a GPU machine with only torch and numpy needs for
# bench/gpu_check.py (docs/benchmarks.md, "GPU").
gpu-kit: $(STAMP)
	$(BIN)/python bench/gpu_kit.py --out .gpu-kit

# The next schema revision after a change to dicomnode/db/models.py: make migration m="add job leases"
# (docs/architecture.md, "How to change the schema").
migration: $(STAMP)
	test -n "$(m)" || { echo 'usage: make migration m="what the revision changes"'; exit 2; }
	$(BIN)/python -m dicomnode.db.migrate "$(m)"

# mypy runs inside bench/: its scripts import each other as top-level modules (not a package).
lint: $(STAMP)
	$(BIN)/ruff check dicomnode tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy dicomnode
	cd bench && $(abspath $(BIN))/mypy --config-file ../pyproject.toml *.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .ohif
