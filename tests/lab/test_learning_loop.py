"""The learning loop end to end on a small synthetic department: baselines and follow-ups through
the worker's pipeline (database, shipped HE/PSE bundles, threshold segmentation), clinical
outcomes imported from a CSV, the cohort exported, a model trained on it and validated."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicomnode.assemble.series import sweep
from dicomnode.cli import main
from dicomnode.config import AssemblySettings, EligibilitySettings, load_settings
from dicomnode.db.models import ExpansionOutcome, Series, SeriesPrediction, utcnow
from dicomnode.db.session import SessionFactory, make_sessions
from dicomnode.jobs.queue import claim_next
from dicomnode.lab.synth.study import StudyTruth
from dicomnode.pipeline import make_context, process_series
from dicomnode.predict.image_features import ImageSpec
from dicomnode.receive.instance_store import InstanceStore
from tests.followup_cases import followup_pair
from tests.unit.receive.test_instance_store import put

#: (seed, baseline mL, growth mL, seizure within a year): growth well on both sides of the
#: default definition (6 mL or 33 %).
PATIENTS = ((31, 20.0, 25.0, True), (32, 18.0, 1.0, False), (33, 22.0, 25.0, False),
            (34, 16.0, 0.5, True))
EXPANDED = sum(growth > 6.0 for _, _, growth, _ in PATIENTS)
SEIZURES = sum(seizure for *_, seizure in PATIENTS)


@dataclass
class Department:
    config: Path
    root: Path
    sessions: SessionFactory
    pairs: list[tuple[StudyTruth, StudyTruth]]
    outcomes_csv: Path


def _analyse(store: InstanceStore, truths: list[StudyTruth], root: Path, ctx) -> None:  # type: ignore[no-untyped-def]
    for truth in truths:
        for path in sorted(truth.dicom_dir.glob("*.dcm")):
            put(store, pydicom.dcmread(path))
    sweep(store.sessions, AssemblySettings(settle_s=0), EligibilitySettings(),
          now=utcnow() + timedelta(seconds=1))
    while (ref := claim_next(store.sessions, root, "w1")) is not None:
        assert process_series(ref, ctx, store.sessions)["status"] == "done"


@pytest.fixture(scope="module")
def department(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Department]:
    tmp = tmp_path_factory.mktemp("department")
    root = tmp / "storage"
    config = tmp / "c.toml"
    config.write_text(f'[storage]\npath = "{root}"\n[segmentation]\nbackend = "threshold"\n')
    sessions = make_sessions(f"sqlite:///{root / 'dicomnode.db'}")
    store = InstanceStore(root, sessions)
    pairs = [followup_pair(tmp / "synth" / str(seed), seed=seed, baseline_ml=ml, growth_ml=growth,
                           matrix=96)
             for seed, ml, growth, _ in PATIENTS]
    ctx = make_context(load_settings(config))
    _analyse(store, [b for b, _ in pairs], root, ctx)  # baselines first: nothing is deferred
    _analyse(store, [f for _, f in pairs], root, ctx)
    outcomes = tmp / "outcomes.csv"
    with outcomes.open("w", newline="") as f:  # half keyed by accession number, half by UID
        w = csv.writer(f)
        w.writerow(["accession_number", "study_instance_uid", "seizure_1y", "comment"])
        for i, ((base, _), (_, _, _, seizure)) in enumerate(zip(pairs, PATIENTS, strict=True)):
            accession = pydicom.dcmread(next(base.dicom_dir.glob("*.dcm"))).AccessionNumber
            key = [accession, ""] if i % 2 else ["", base.study_instance_uid]
            w.writerow([*key, "yes" if seizure else "no", "checked by neurology"])
    yield Department(config, root, sessions, pairs, outcomes)
    sessions.kw["bind"].dispose()


def test_each_comparison_records_the_baselines_outcome_and_prediction(department: Department) -> None:
    with department.sessions() as s:
        uid = {i: u for i, u in s.execute(select(Series.id, Series.series_instance_uid))}
        rows = {uid[e.baseline_series_id]: e for e in s.scalars(select(ExpansionOutcome))}
        preds = {uid[p.series_id]: p for p in s.scalars(select(SeriesPrediction))}
    assert len(rows) == len(PATIENTS) and len(preds) == 2 * len(PATIENTS)
    for (base, follow), (*_, growth, _) in zip(department.pairs, PATIENTS, strict=True):
        row = rows[base.series_instance_uid]
        assert uid[row.followup_series_id] == follow.series_instance_uid
        stored = json.loads(next((department.root / "_results" / follow.series_instance_uid)
                                 .glob("v*/result.json")).read_text())["comparison"]
        assert row.ich_change_ml == stored["ich_change_ml"] and row.new_ivh is stored["new_ivh"]
        assert row.expansion is stored["expansion"] is (growth > 6.0)
        assert row.registration_trusted
        assert row.definition and row.interval_h == 24.0
        baseline = preds[base.series_instance_uid]
        assert row.he_probability == baseline.he_probability is not None
        assert row.he_model == baseline.he_model == "he-multitask-he" and row.he_model_version
        assert baseline.pse_model == "pse-psenet" and baseline.pse_probability is not None
        assert baseline.features["m_ich_volume_ml"] == pytest.approx(row.baseline_ich_volume_ml,
                                                                     abs=0.01)
        assert sum(n.startswith("img_") for n in baseline.features) > 1000


def test_outcomes_import_is_idempotent(department: Department) -> None:
    args = ["outcomes", "import", str(department.outcomes_csv), "--config", str(department.config)]
    assert main(args) == 0
    assert main(args) == 0  # again: nothing changes
    with department.sessions() as s:
        from dicomnode.db.models import ClinicalOutcome

        found = list(s.scalars(select(ClinicalOutcome)))
    assert len(found) == len(PATIENTS) and {o.outcome for o in found} == {"pse"}


def _export(department: Department, out: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    assert main(["outcomes", "import", str(department.outcomes_csv), "--config",
                 str(department.config)]) == 0
    assert main(["cohort", "export", "--out", str(out), "--config", str(department.config),
                 *extra]) == 0
    return json.loads((out / "cohort.json").read_text())


def test_export_train_validate_round_trip(department: Department, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    meta = _export(department, tmp_path / "cohort")
    n = len(PATIENTS)
    assert meta["outcomes"] == {"he": {"n": n, "events": EXPANDED},
                                "pse": {"n": n, "events": SEIZURES}}
    assert meta["left_out"]["follow-up scans"] == len(PATIENTS)
    header = (tmp_path / "cohort" / "features.csv").read_text().split("\n", 1)[0].split(",")
    pixels = [h for h in header if h.startswith("img_")]
    assert pixels and pixels == ImageSpec().column_names()  # in the order image presets reshape
    model = tmp_path / "he-model"
    assert main(["train", "he", "--cohort", str(tmp_path / "cohort"), "--preset",
                 "psenet-clinical-rf", "--out", str(model), "--folds", "2", "--repeats", "1",
                 "--bootstrap", "20", "--no-compare"]) == 0
    assert (model / "model.json").is_file()
    assert "department cohort" in json.loads((model / "model.json").read_text())["training_data"]
    capsys.readouterr()
    for args in (["he", "--model", str(model)], ["he"], ["pse"]):  # trained, then the served ones
        out = tmp_path / f"validation-{len(args)}-{args[0]}"
        assert main(["validate", *args, "--config", str(department.config), "--out", str(out),
                     "--bootstrap", "50"]) == 0
        result = json.loads((out / "validation.json").read_text())
        assert result["n_patients"] == result["n_cases"] == len(PATIENTS)
        assert result["n_positive"] == (EXPANDED if args[0] == "he" else SEIZURES)
        m = result["cv"]["metrics"]
        assert 0.0 <= m["auc"]["ci_low"] <= m["auc"]["value"] <= m["auc"]["ci_high"] <= 1.0
        assert 0.0 <= m["brier"]["value"] <= 1.0 and "slope" in result["cv"]["calibration"]
        page = (out / "report.html").read_text()
        assert 'id="calibration"' in page and 'id="roc"' in page and "brier" in page
        assert "validation" in page and "cross-validated" not in page
    printed = capsys.readouterr()
    assert "he-multitask-he" in printed.out and "pse-psenet" in printed.out
    # The served models scored on the recorded features give the risks they gave at the time.
    for name, model in (("he", "he-multitask-he"), ("pse", "pse-psenet")):
        served = json.loads((tmp_path / f"validation-1-{name}" / "validation.json").read_text())
        assert served["model"] == model and served["recorded_agreement"]["n"] == len(PATIENTS)
        assert served["recorded_agreement"]["max_abs_diff"] < 1e-3
    trained = json.loads((tmp_path / "validation-3-he" / "validation.json").read_text())
    assert trained["recorded_agreement"]["n"] == 0  # never served


def test_export_holds_no_names_or_identifiers(department: Department, tmp_path: Path) -> None:
    _export(department, tmp_path / "a")
    _export(department, tmp_path / "b")
    secrets = set()
    for base, follow in department.pairs:
        for truth in (base, follow):
            ds = pydicom.dcmread(next(truth.dicom_dir.glob("*.dcm")), stop_before_pixels=True)
            secrets |= {str(ds.PatientName), str(ds.PatientName).split("^")[0], ds.PatientID,
                        ds.AccessionNumber, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    text = "".join(p.read_text() for p in (tmp_path / "a").iterdir())
    assert not [s for s in secrets if s and s in text]
    key = department.root / ".pseudonym-key"  # made by the first export, the owner's only
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) == 64
    for name in ("cases.csv", "features.csv"):  # the same key: the same pseudonyms
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    with (tmp_path / "a" / "cases.csv").open() as f:
        ids = [r["case_id"] for r in csv.DictReader(f)]
    assert len(set(ids)) == len(PATIENTS) and all(i.startswith("case-") for i in ids)
    _export(department, tmp_path / "kept", "--keep-identifiers")
    kept = (tmp_path / "kept" / "cases.csv").read_text()
    assert department.pairs[0][0].series_instance_uid in kept
    assert department.pairs[0][0].patient_id in kept


def test_validation_warns_under_the_minimum_size(department: Department, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _export(department, tmp_path / "cohort")
    capsys.readouterr()
    out = tmp_path / "small"
    assert main(["validate", "he", "--cohort", str(tmp_path / "cohort"), "--config",
                 str(department.config), "--out", str(out), "--bootstrap", "20"]) == 0
    err = capsys.readouterr().err
    assert "Too small for a reliable validation" in err and "minimum of 100" in err
    page = (out / "report.html").read_text()
    assert '<p class="warn">Too small' in page
    assert json.loads((out / "validation.json").read_text())["warnings"]
    out = tmp_path / "enough"
    assert main(["validate", "he", "--cohort", str(tmp_path / "cohort"), "--config",
                 str(department.config), "--out", str(out), "--bootstrap", "20",
                 "--min-events", "2"]) == 0
    assert "Too small" not in capsys.readouterr().err
    assert json.loads((out / "validation.json").read_text())["warnings"] == []
