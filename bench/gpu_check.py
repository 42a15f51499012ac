"""GPU check: every GPU figure of the unet and BLAST-CT backends from one prepared run.

Needs only this repository, a kit built by ``bench/gpu_kit.py`` (``make gpu-kit``) and a Python
with PyTorch and numpy: the kit's wheels (MONAI) are unpacked into a temporary folder and put on
``sys.path``, and the node's own array inference (``dicomnode/segment/inference.py``) is imported
from this repository, so the figures describe the node's code. Runs from any working directory.

Measures the device, driver, torch and CUDA versions; unet on the kit's 1 mm and 5 mm studies
in fp32 and bf16 autocast (seconds per series, Dice between the precisions and against the
truth); BLAST-CT with one model and the ensemble in fp32 and half precision (fp16 on CUDA, bf16
on the CPU: the node's half precision there), with per-class volume differences and lesion Dice
between the precisions, and what the kit's fp16 storage of the weights changes (model 1); peak
GPU memory per step; the precision each backend picks by default (``device = "auto"``);
``pytest -m gpu`` where pytest and the node's imports are present. Every timing is the median
of up to 5 runs after one warm-up run (fewer when a run takes over 6 s, see ``STEP_CAP_S``);
fp32 steps run with TF32 off. Writes one JSON file and prints a table.

    python bench/gpu_check.py --kit .gpu-kit --device cuda --out gpu.json
    python bench/gpu_check.py --kit .gpu-kit --device cpu --quick --out cpu-quick.json

``--quick`` runs the same steps on crops around the haematoma (one 110^3 BLAST-CT patch per model,
a 2-model ensemble) with one timed run; it works with a full kit and with a ``--quick`` kit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUICK_UNET_ZYX = (32, 96, 96)
QUICK_BLAST_ZYX = (29, 29, 29)  # one 110^3 patch per model (tiles = n // 30 + 1 per axis)
QUICK_ENSEMBLE = 2
STEP_CAP_S = 30.0  # timed seconds per step after its warm-up: fewer repeats for slow steps
BLAST_CLASSES = {1: "IPH", 2: "EAH", 3: "oedema", 4: "IVH"}
TARGETS = {"unet_1mm_s": 0.5, "blast_ensemble_s": 2.0, "blast_volume_pct": 1.0, "blast_dice": 0.99}


# --- kit, environment ------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_kit(kit: Path, tmp: Path) -> dict[str, Any]:
    """Check every file of the kit against its manifest, unpack its wheels onto ``sys.path``."""
    manifest = json.loads((kit / "manifest.json").read_text(encoding="utf-8"))
    for rel, meta in manifest["files"].items():
        path = kit / rel
        if not path.is_file() or sha256(path) != meta["sha256"]:
            raise SystemExit(f"kit {kit}: {rel} missing or changed since the kit was built")
    site = tmp / "site-packages"
    for wheel in sorted((kit / "wheels").glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    sys.path[:0] = [str(REPO), str(site)]
    return manifest


def environment(torch: Any, device: Any) -> dict[str, Any]:
    """Versions, CPU, and for CUDA the GPU, its memory, cuDNN and the driver."""
    import monai

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "torch": torch.__version__, "cuda": torch.version.cuda,
                            "numpy": np.__version__, "monai": monai.__version__,
                            "monai_from": str(Path(monai.__file__).parent),
                            "device": str(device), "cpu_cores": len(os.sched_getaffinity(0)), "cpu": "?"}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version(), driver=None)
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                info["driver"] = out.stdout.strip().splitlines()[0]
    return info


# --- measuring --------------------------------------------------------------------------------------

class Clock:
    """Wall-clock budget: steps that start after ``budget_s`` get one timed run."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def measure(fn: Callable[[], Any], torch: Any, device: Any, repeats: int,
            clock: Clock) -> tuple[Any, dict[str, Any]]:
    """One warm-up run, then up to ``repeats`` timed runs (median); peak GPU memory of the step."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = fn()
    sync()
    warm_s = time.perf_counter() - t0
    limited = clock.elapsed() > clock.budget_s
    n = 1 if limited else max(1, min(repeats, int(STEP_CAP_S / max(warm_s, 1e-6))))
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None
    return result, {"seconds": round(statistics.median(times), 4), "times_s": [round(t, 4) for t in times],
                    "warmup_s": round(warm_s, 4), "repeats": n, "budget_limited": limited,
                    "peak_gpu_mib": peak}


@contextlib.contextmanager
def strict_fp32(torch: Any) -> Iterator[None]:
    """TF32 off for the fp32 reference (cuDNN turns it on by default for convolutions)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2 |a & b| / (|a| + |b|); 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else round(2.0 * int((a & b).sum()) / total, 5)


def crop_centred(arrays: list[np.ndarray], truth: np.ndarray, size: tuple[int, ...]) -> list[np.ndarray]:
    """The same ``size`` box of every array, centred on the truth's label-1 centroid (kept inside)."""
    idx = np.argwhere(truth == 1)
    centre = idx.mean(axis=0) if len(idx) else np.array(truth.shape) / 2
    box = []
    for c, s, n in zip(centre, size, truth.shape, strict=True):
        m = min(s, n)
        start = min(max(0, int(round(c - m / 2))), n - m)
        box.append(slice(start, start + m))
    return [a[tuple(box)] for a in arrays]


def volumes_ml(labels: np.ndarray) -> dict[str, float]:
    """Per-class volumes of a BLAST-CT class map on its 1 mm grid (1 voxel = 0.001 mL)."""
    counts = np.bincount(labels.ravel(), minlength=5)
    return {name: round(float(counts[v]) / 1000.0, 3) for v, name in BLAST_CLASSES.items()}


def volume_diff_pct(ref: dict[str, float], got: dict[str, float]) -> dict[str, float | None]:
    """|got - ref| / ref in %, per class; None where the reference volume is 0 and got is not."""
    return {k: (round(abs(got[k] - ref[k]) / ref[k] * 100, 3) if ref[k] > 0
                else (0.0 if got[k] == 0 else None)) for k in ref}


# --- the two backends ---------------------------------------------------------------------------------

def run_unet(torch: Any, inf: Any, kit: Path, manifest: dict, device: Any, args: argparse.Namespace,
             clock: Clock, mirror: bool) -> dict[str, Any]:
    from dicomnode.segment.bundle import load_bundle

    bundle = load_bundle(kit / "unet", backend="unet")  # the node's own checks (SHA-256)
    net = inf.load_unet(bundle.meta["architecture"], bundle.weights_path, device)
    out: dict[str, Any] = {"model": f"{bundle.name} {bundle.version}", "mirror": mirror,
                           "sw_batch_size": inf.UNET_SW_BATCH_SIZE, "overlap": inf.UNET_OVERLAP}
    voxel_ml = float(np.prod(bundle.spacing_mm)) / 1000.0
    for name, study in manifest["inputs"].items():
        data = np.load(kit / study["file"])
        hu, truth = data["unet_hu"], data["unet_truth"]
        if args.quick:
            hu, truth = crop_centred([hu, truth], truth, QUICK_UNET_ZYX)
        x = inf.unet_normalise(hu, bundle.hu_window)
        row: dict[str, Any] = {"shape_zyx": list(x.shape), "spacing_mm": list(bundle.spacing_mm),
                               "truth_ich_ml": round(float((truth == 1).sum()) * voxel_ml, 3)}
        labels = {}
        for prec, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            fn = functools.partial(inf.unet_probabilities, net, x, bundle.roi_size_zyx, device=device,
                                   autocast_dtype=dtype, mirror=mirror)
            with strict_fp32(torch) if dtype is None else contextlib.nullcontext():
                probs, stats = measure(fn, torch, device, args.repeats, clock)
            labels[prec] = probs.argmax(axis=0).astype(np.uint8)
            stats["ich_ml"] = round(float((labels[prec] == 1).sum()) * voxel_ml, 3)
            stats["ich_dice_vs_truth"] = dice(labels[prec] == 1, truth == 1)
            row[prec] = stats
        row["ich_dice_fp32_vs_bf16"] = dice(labels["fp32"] == 1, labels["bf16"] == 1)
        row["lesion_dice_fp32_vs_bf16"] = dice(labels["fp32"] > 0, labels["bf16"] > 0)
        row["voxels_differing"] = int((labels["fp32"] != labels["bf16"]).sum())
        out[name] = row
    return out


def load_blast(torch: Any, paths: list[Path]) -> list[Any]:
    """Weights (fp16-stored ones back in fp32) through the node's strict key and shape checks."""
    from dicomnode.segment.blast_ct_net import DeepMedic, map_state_dict

    nets = []
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {key: v.float() if v.dtype == torch.float16 else v for key, v in state.items()}
        net = DeepMedic()
        net.load_state_dict(map_state_dict(state, net, path))
        nets.append(net.eval())
    return nets


def run_blast(torch: Any, inf: Any, kit: Path, manifest: dict, device: Any, args: argparse.Namespace,
              clock: Clock) -> dict[str, Any]:
    numbers = list(manifest["blast"]["models"])
    if args.quick:
        numbers = numbers[:QUICK_ENSEMBLE]
    half_dtype, memory_format = inf.blast_runtime(device, half_precision=True)
    nets = inf.blast_to_device(load_blast(torch, [kit / "blast" / f"model_{k}.pt" for k in numbers]),
                               device, memory_format)
    published = kit / "blast" / "model_1.fp32.pt"
    exact = (inf.blast_to_device(load_blast(torch, [published]), device, memory_format)
             if published.is_file() and numbers[0] == 1 else None)
    configs = {"1 model": nets[:1], f"{len(nets)} models": nets}
    out: dict[str, Any] = {"models": numbers, "weights": manifest["blast"]["storage"],
                           "half_dtype": str(half_dtype).replace("torch.", ""),
                           "memory_format": str(memory_format).replace("torch.", ""),
                           "batch_size": inf.BLAST_BATCH_SIZE}
    caches: dict[tuple[str, str], dict[float, int]] = {}  # uniform-tile labels, kept as a backend does
    for name, study in manifest["inputs"].items():
        data = np.load(kit / study["file"])
        hu, truth = data["blast_hu"], data["blast_truth"]
        if args.quick:
            hu, truth = crop_centred([hu, truth], truth, QUICK_BLAST_ZYX)
        x = inf.blast_normalise(hu)
        row: dict[str, Any] = {"shape_zyx": list(x.shape),
                               "truth_ich_ml": round(float((truth == 1).sum()) / 1000.0, 3)}
        single_fp32 = None
        for cfg, subset in configs.items():
            res: dict[str, Any] = {}
            labels = {}
            for prec, dtype in (("fp32", None), ("half", half_dtype)):
                predict = functools.partial(inf.blast_predict_patches, subset, device=device,
                                            autocast_dtype=dtype, memory_format=memory_format)
                fn = functools.partial(inf.blast_predict_array, x, predict, batch_size=inf.BLAST_BATCH_SIZE,
                                       uniform_labels=caches.setdefault((cfg, prec), {}))
                with strict_fp32(torch) if dtype is None else contextlib.nullcontext():
                    (labels[prec], tiles), stats = measure(fn, torch, device, args.repeats, clock)
                stats["volumes_ml"] = volumes_ml(labels[prec])
                stats["ich_dice_vs_truth"] = dice(labels[prec] == 1, truth == 1)
                stats["blood_dice_vs_truth"] = dice(np.isin(labels[prec], (1, 2, 4)), np.isin(truth, (1, 2)))
                res[prec] = stats
            res["patches"] = {k: int(v) for k, v in tiles.items() if k in ("patches", "run", "uniform")}
            res["volume_diff_pct"] = volume_diff_pct(res["fp32"]["volumes_ml"], res["half"]["volumes_ml"])
            res["lesion_dice_fp32_vs_half"] = dice(labels["fp32"] > 0, labels["half"] > 0)
            res["voxels_differing"] = int((labels["fp32"] != labels["half"]).sum())
            row[cfg] = res
            if single_fp32 is None:
                single_fp32 = labels["fp32"]
        if exact is not None and single_fp32 is not None:  # published vs fp16-rounded weights
            with strict_fp32(torch):
                ref, _ = inf.blast_predict_array(x, functools.partial(
                    inf.blast_predict_patches, exact, device=device, memory_format=memory_format))
            row["weight_rounding"] = {
                "voxels_differing": int((ref != single_fp32).sum()),
                "lesion_dice": dice(ref > 0, single_fp32 > 0),
                "volume_diff_pct": volume_diff_pct(volumes_ml(ref), volumes_ml(single_fp32))}
        out[name] = row
    return out


# --- configuration, pytest, targets, table -------------------------------------------------------

def default_configuration(inf: Any) -> dict[str, Any]:
    """What the node picks with ``device = "auto"`` here, and the shipped [segmentation] keys."""
    device = inf.select_device("auto")
    unet = inf.unet_autocast_dtype(device)
    half, fmt = inf.blast_runtime(device)
    conf: dict[str, Any] = {"device": device.type,
                            "unet_precision": "fp32" if unet is None else f"{unet} autocast",
                            "blast_ct_precision": "fp32" if half is None else f"{half} autocast",
                            "blast_ct_memory_format": str(fmt)}
    conf = {k: v.replace("torch.", "") for k, v in conf.items()}
    path = REPO / "config" / "dicomnode.toml"
    tomllib = importlib.util.find_spec("tomllib") and importlib.import_module("tomllib")  # Python 3.11+
    if path.is_file() and tomllib:
        seg = tomllib.loads(path.read_text(encoding="utf-8")).get("segmentation", {})
        conf["config"] = {k: seg[k] for k in ("backend", "device", "unet_mirror", "blast_ct_ensemble_size")
                          if k in seg}
    return conf


def run_pytest_gpu(site: Path, limit_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` in the repository, where pytest and the node's own imports are present."""
    missing = [m for m in ("pytest", "SimpleITK", "pydicom", "sqlalchemy", "scipy")
               if importlib.util.find_spec(m) is None]
    if missing or not (REPO / "tests").is_dir():
        return {"status": "skipped", "reason": f"not installed here: {', '.join(missing) or 'tests/'}"}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(site)]))
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": round(time.perf_counter() - t0, 1)}
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    status = {0: "passed", 5: "no tests marked gpu"}.get(out.returncode, "failed")
    return {"status": status, "returncode": out.returncode, "summary": lines[-1] if lines else "",
            "seconds": round(time.perf_counter() - t0, 1)}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, evaluated on what was measured (they apply to a full run on CUDA)."""
    unet, blast = result.get("unet", {}), result.get("blast_ct", {})
    t: dict[str, Any] = {"applies": result["device"] == "cuda" and not result["quick"]}
    node_prec = "bf16" if result["device"] == "cuda" else "fp32"  # unet_autocast_dtype
    if "1mm" in unet:
        s = unet["1mm"][node_prec]["seconds"]
        t["unet_1mm_seconds"] = {"value": s, "target": f"< {TARGETS['unet_1mm_s']}",
                                 "met": s < TARGETS["unet_1mm_s"]}
    studies = [k for k in ("1mm", "5mm") if k in blast]
    if studies:
        ens = [blast[k][f"{len(blast['models'])} models"] for k in studies]
        s = max(e["half"]["seconds"] for e in ens)
        t["blast_ensemble_half_seconds"] = {"value": s, "target": f"< {TARGETS['blast_ensemble_s']}",
                                            "met": s < TARGETS["blast_ensemble_s"]}
        diffs = [d for e in ens for c, d in e["volume_diff_pct"].items()
                 if d is None or e["fp32"]["volumes_ml"][c] >= 1.0]
        worst = None if None in diffs else max(diffs, default=0.0)
        t["blast_volume_diff_pct"] = {"value": worst, "target": f"<= {TARGETS['blast_volume_pct']} "
                                      "(classes of >= 1 mL in fp32)",
                                      "met": worst is not None and worst <= TARGETS["blast_volume_pct"]}
        d = min(e["lesion_dice_fp32_vs_half"] for e in ens)
        t["blast_lesion_dice"] = {"value": d, "target": f">= {TARGETS['blast_dice']}",
                                  "met": d >= TARGETS["blast_dice"]}
    return t


def table(result: dict[str, Any]) -> str:
    rows = [("step", "study", "precision", "s/series", "runs", "peak GPU MiB", "Dice vs other prec.",
             "Dice vs truth (unet: ICH, BLAST-CT: blood)")]
    unet, blast = result.get("unet", {}), result.get("blast_ct", {})
    for study in ("1mm", "5mm"):
        for p in ("fp32", "bf16") if study in unet else ():
            r = unet[study][p]
            rows.append(("unet", study, p, f"{r['seconds']:.3f}", str(r["repeats"]), str(r["peak_gpu_mib"]),
                         f"{unet[study]['ich_dice_fp32_vs_bf16']:.4f}", f"{r['ich_dice_vs_truth']:.3f}"))
    for study in ("1mm", "5mm"):
        for cfg, res in blast.get(study, {}).items():
            if not (isinstance(res, dict) and "half" in res):
                continue
            for p in ("fp32", "half"):
                r = res[p]
                rows.append((f"BLAST-CT {cfg}", study, blast["half_dtype"] if p == "half" else p,
                             f"{r['seconds']:.3f}", str(r["repeats"]), str(r["peak_gpu_mib"]),
                             f"{res['lesion_dice_fp32_vs_half']:.4f}", f"{r['blood_dice_vs_truth']:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kit", required=True, help="folder built by bench/gpu_kit.py")
    ap.add_argument("--device", required=True, choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="small crops, one timed run")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--repeats", type=int, help="timed runs per step (default 5; --quick: 1)")
    ap.add_argument("--steps", default="unet,blast,pytest", help="any of unet, blast, pytest")
    ap.add_argument("--budget-s", type=float, default=360.0,
                    help="steps starting after this many seconds get one timed run (default 360)")
    args = ap.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 5)
    steps = set(args.steps.split(","))
    out_path, kit = Path(args.out).resolve(), Path(args.kit).resolve()
    clock = Clock(args.budget_s)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        manifest = open_kit(kit, Path(tmp))
        import torch

        import dicomnode.segment.inference as inf

        if not Path(inf.__file__).resolve().is_relative_to(REPO):
            raise SystemExit(f"imported {inf.__file__}, not this repository's inference module")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available to this torch")
        device = torch.device(args.device)
        if device.type == "cpu":
            inf.select_device("cpu")  # one thread per core, as the node does
        result: dict[str, Any] = {"device": device.type, "quick": args.quick,
                                  "kit": {k: manifest[k] for k in ("created", "quick", "bytes", "commit")},
                                  "environment": environment(torch, device),
                                  "default_configuration": default_configuration(inf)}
        mirror = bool(result["default_configuration"].get("config", {}).get("unet_mirror", False))
        if "unet" in steps:
            result["unet"] = run_unet(torch, inf, kit, manifest, device, args, clock, mirror)
        if "blast" in steps:
            result["blast_ct"] = run_blast(torch, inf, kit, manifest, device, args, clock)
        if "pytest" in steps:
            result["pytest_gpu"] = run_pytest_gpu(Path(tmp) / "site-packages", 120.0)
    result["targets"] = targets(result)
    result["wall_s"] = round(clock.elapsed(), 1)
    out_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    print("targets:", json.dumps(result["targets"]))
    print(f"wall {result['wall_s']} s; JSON written to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
