"""``dicomnode train segmentation``: fit the ``unet`` bundle on labelled cases, CPU or CUDA.

A case is a folder with ``labels.nii.gz`` and either ``image.nii.gz`` (HU) or ``dicom/`` (one
series); ``dicomnode synth`` studies have this layout, and ``--synth N`` makes N of them first.
Labels in the files: 0 background, 1 ICH, 2 IVH, 3 oedema (the synthetic phantoms' values).
Cases are resampled once to the model spacing and cached; training uses random patches (two of
three centred on a labelled class, the class picked first so that small ones such as IVH are
seen), Dice + cross-entropy, AdamW, flips and intensity jitter; a held-out part of the cases
picks the best epoch. The result is a bundle (see bundle.py).
"""

from __future__ import annotations

import json
import logging
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from dicomnode.segment.bundle import write_bundle
from dicomnode.segment.unet import build_network, normalise, resample_to_spacing

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
CLASS_NAMES = {1: "ICH", 2: "IVH", 3: "oedema"}
VALIDATION_MIN_ML = 5.0


@dataclass(frozen=True)
class TrainConfig:
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.5)
    hu_window: tuple[float, float] = (-20.0, 120.0)
    roi_size_zyx: tuple[int, int, int] = (24, 64, 64)
    filters: tuple[int, ...] = (8, 16, 32, 64)
    epochs: int = 30
    iterations_per_epoch: int = 40
    batch_size: int = 2
    learning_rate: float = 3e-3
    warmup_iterations: int = 50
    validation_fraction: float = 0.15
    max_validation_cases: int = 8
    validate_every: int = 5
    seed: int = 0
    device: str = "auto"
    antialias: bool = True  # Gaussian before downsampling (see unet.resample_to_spacing)
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default (all cores)
    init_weights: str | None = None  # start from these weights (a bundle's model.pt)


def read_case(folder: Path) -> tuple[sitk.Image, sitk.Image]:
    """(HU image, label image) of one case folder."""
    labels = sitk.ReadImage(str(folder / "labels.nii.gz"), sitk.sitkUInt8)
    if (folder / "image.nii.gz").is_file():
        image = sitk.ReadImage(str(folder / "image.nii.gz"), sitk.sitkFloat32)
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "dicom")))
        image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    if labels.GetSize() != image.GetSize():
        raise ValueError(f"{folder}: labels {labels.GetSize()} and image {image.GetSize()} differ")
    labels.CopyInformation(image)  # NIfTI round-off must not shift the mask
    return image, labels


def prepare(folders: Sequence[Path], cfg: TrainConfig, cache: Path) -> list[Path]:
    """Resample every case to the model spacing once; returns the cached ``.npz`` files."""
    cache.mkdir(parents=True, exist_ok=True)
    # The name holds everything the cached array depends on: a retrain into the same folder
    # with another grid or window must not reuse stale arrays.
    key = (f"{'x'.join(f'{v:g}' for v in cfg.spacing_mm)}mm_{cfg.hu_window[0]:g}_"
           f"{cfg.hu_window[1]:g}HU{'_aa' if cfg.antialias else ''}")
    out = []
    for folder in folders:
        target = cache / f"{folder.name}_{key}.npz"
        if not target.is_file():
            image, labels = read_case(folder)
            img = resample_to_spacing(image, cfg.spacing_mm, antialias=cfg.antialias)
            lab = sitk.Resample(labels, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                sitk.sitkUInt8)
            np.savez_compressed(target, image=normalise(sitk.GetArrayViewFromImage(img),
                                                        cfg.hu_window),
                                labels=sitk.GetArrayFromImage(lab))
        out.append(target)
    return out


def _patch(image: np.ndarray, labels: np.ndarray, roi: tuple[int, int, int],
           rng: random.Random, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    pad = [(0, max(0, r - s)) for r, s in zip(roi, image.shape, strict=True)]
    if any(p[1] for p in pad):
        image = np.pad(image, pad, constant_values=0.0)
        labels = np.pad(labels, pad, constant_values=0)
    fg: np.ndarray = np.empty((0, 3), dtype=np.intp)
    if positive:
        # Class first, then a voxel of it: small classes (IVH) get centred as often as ICH.
        present = [c for c in np.unique(labels) if c > 0]
        if present:
            fg = np.argwhere(labels == present[rng.randrange(len(present))])
    if len(fg):
        centre = fg[rng.randrange(len(fg))]
    else:
        centre = [rng.randrange(s) for s in image.shape]
    start = [int(min(max(0, c - r // 2), s - r)) for c, r, s in zip(centre, roi, image.shape,
                                                                     strict=True)]
    sl = tuple(slice(b, b + r) for b, r in zip(start, roi, strict=True))
    return image[sl], labels[sl]


def _augment(x: np.ndarray, y: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.5:  # left-right
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    if rng.random() < 0.2:  # anterior-posterior (shape prior, not anatomy)
        x, y = x[:, ::-1, :], y[:, ::-1, :]
    # Scanner calibration and noise differ between sites: jitter level, contrast and noise.
    x = x * rng.uniform(0.92, 1.08) + rng.uniform(-0.05, 0.05)
    x = x + np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(0, 0.04), x.shape)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y)


def split_validation(cases: Sequence[Path], ich_ml: Sequence[float],
                     cfg: TrainConfig) -> tuple[list[Path], list[Path]]:
    """(validation, fit) cases, given each case's ICH volume: validation prefers haematomas of
    at least ``VALIDATION_MIN_ML`` (the quality target's range; Dice of a 1 mL clot is mostly
    noise) plus a quarter negatives (reported, not scored), so that the best epoch is picked on
    what the targets measure."""
    cases = list(cases)
    if len(cases) <= 3:
        return [], cases
    n_val = min(cfg.max_validation_cases, max(1, int(len(cases) * cfg.validation_fraction)))
    big = [p for p, ml in zip(cases, ich_ml, strict=True) if ml >= VALIDATION_MIN_ML]
    negative = [p for p, ml in zip(cases, ich_ml, strict=True) if ml == 0]
    n_neg = min(len(negative), n_val // 4)
    val = negative[:n_neg] + big[: n_val - n_neg]
    val += [p for p in cases if p not in val][: n_val - len(val)]
    fit = [p for p in cases if p not in val]
    return val, fit or cases


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def train(folders: Sequence[Path], out: Path, cfg: TrainConfig, *,
          progress: Callable[[int, int, dict[str, float]], None] | None = None,
          data_description: str = "", synthetic: bool = True) -> Path:
    """Train and write a bundle to ``out``; returns the model.json path."""
    import torch

    from dicomnode.segment.base import select_device

    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = select_device(cfg.device)
    data, fit, val = _load_cases(folders, cfg, out, rng)
    arch = _architecture(cfg)
    fitting = _fitting(arch, cfg, device)
    best: dict[str, Any] = {"dice": float("-inf")}
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(out=out, cfg=cfg, arch=arch, fit=fit, val=val, device=device,
               started=time.monotonic(), data_description=data_description, synthetic=synthetic)
    for epoch in range(1, cfg.epochs + 1):
        metrics = {"loss": _train_epoch(fitting, data, cfg, rng)}
        if val and (epoch % cfg.validate_every == 0 or epoch == cfg.epochs):
            metrics.update(_validate(fitting, val, cfg))
        # With validation cases, only validated epochs compete for the best weights.
        if not val or "val_ich_dice" in metrics:
            best = _keep_if_best(run, fitting, epoch, metrics, best)
        log.info("epoch %d/%d %s", epoch, cfg.epochs, metrics)
        if progress is not None:
            progress(epoch, cfg.epochs, metrics)
    return write_bundle(out, _meta(run, best), run.weights)


@dataclass(frozen=True)
class _Run:
    """What a training run records in its bundle besides the best metrics."""

    out: Path
    cfg: TrainConfig
    arch: dict[str, Any]
    fit: list[Path]
    val: list[Path]
    device: Any
    started: float  # time.monotonic() when the epochs began
    data_description: str
    synthetic: bool

    @property
    def weights(self) -> Path:
        return self.out / "model.pt"


@dataclass(frozen=True)
class _Fitting:
    """The network on its device and what updates it."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    device: torch.device


def _voxel_ml(cfg: TrainConfig) -> float:
    return float(np.prod(cfg.spacing_mm)) / 1000.0


def _load_cases(folders: Sequence[Path], cfg: TrainConfig, out: Path, rng: random.Random
                ) -> tuple[list[dict[str, np.ndarray]], list[Path], list[Path]]:
    """(arrays of the fit cases, fit cases, validation cases), after a shuffle drawn from ``rng``."""
    cases = prepare(folders, cfg, out / ".cache")
    rng.shuffle(cases)
    loaded = {p: dict(np.load(p)) for p in cases}  # read once: split, then fit
    voxel_ml = _voxel_ml(cfg)
    val, fit = split_validation(
        cases, [float((loaded[p]["labels"] == 1).sum()) * voxel_ml for p in cases], cfg)
    data = [loaded.pop(p) for p in fit]
    del loaded  # validation cases are re-read per validation, as before
    return data, fit, val


def _architecture(cfg: TrainConfig) -> dict[str, Any]:
    """The DynUNet description stored in the bundle (downsampling in-plane first)."""
    return {"type": "DynUNet", "in_channels": 1, "out_channels": 4,
            "filters": list(cfg.filters),
            "kernels": [[3, 3, 3]] * len(cfg.filters),
            "strides": [[1, 1, 1]] + [[1, 2, 2] if i == 0 else [2, 2, 2]
                                      for i in range(len(cfg.filters) - 1)]}


def _fitting(arch: dict[str, Any], cfg: TrainConfig, device: torch.device) -> _Fitting:
    """Network (optionally from ``cfg.init_weights``), AdamW, learning-rate schedule and loss."""
    import torch
    from monai.losses import DiceCELoss

    if cfg.threads > 0:
        # On a shared CPU, fewer threads than cores avoids the stalls of oversubscribed
        # OpenMP thread teams (measured: 0.5 s/iteration alone, 9 s with 2 threads under load).
        torch.set_num_threads(cfg.threads)
    net = build_network(arch)
    if cfg.init_weights:
        state = torch.load(cfg.init_weights, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    total = cfg.epochs * cfg.iterations_per_epoch
    # Linear warm-up, then cosine decay per iteration (not per epoch: short runs decay too).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: min(
        (it + 1) / max(1, cfg.warmup_iterations),
        0.5 * (1 + np.cos(np.pi * min(it, total) / max(1, total)))))
    # Batch Dice without the background: a patch without a class must not push that class's
    # probabilities to zero everywhere (per-patch Dice of an empty class is all-or-nothing).
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    return _Fitting(net=net, opt=opt, sched=sched, loss_fn=loss_fn, device=device)


def _batch(data: Sequence[dict[str, np.ndarray]], cfg: TrainConfig, rng: random.Random,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of augmented random patches (images and labels) on ``device``."""
    import torch

    xs, ys = [], []
    for _ in range(cfg.batch_size):
        case = data[rng.randrange(len(data))]
        x, y = _patch(case["image"], case["labels"], cfg.roi_size_zyx, rng,
                      positive=rng.random() < 2 / 3)
        x, y = _augment(x, y, rng)
        xs.append(x)
        ys.append(y)
    xb = torch.from_numpy(np.stack(xs))[:, None].to(device)
    yb = torch.from_numpy(np.stack(ys).astype(np.int64))[:, None].to(device)
    return xb, yb


def _train_epoch(fitting: _Fitting, data: Sequence[dict[str, np.ndarray]], cfg: TrainConfig,
                 rng: random.Random) -> float:
    """``cfg.iterations_per_epoch`` optimiser steps; returns the mean loss."""
    import torch

    device = fitting.device
    fitting.net.train()
    losses = []
    for _ in range(cfg.iterations_per_epoch):
        xb, yb = _batch(data, cfg, rng, device)
        fitting.opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = fitting.loss_fn(fitting.net(xb).float(), yb)
        loss.backward()
        fitting.opt.step()
        fitting.sched.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _validate(fitting: _Fitting, val: Sequence[Path], cfg: TrainConfig) -> dict[str, float]:
    """ICH Dice of the validation cases with ICH, and the largest blood volume (mL) predicted
    in a case without (on the model grid)."""
    import torch
    from monai.inferers import sliding_window_inference

    voxel_ml = _voxel_ml(cfg)
    fitting.net.eval()
    dices, negative_ml = [], [0.0]
    with torch.inference_mode():
        for p in val:
            case = np.load(p)
            x_val = torch.from_numpy(case["image"])[None, None].to(fitting.device)
            logits = sliding_window_inference(x_val, cfg.roi_size_zyx, 2, fitting.net, overlap=0.25,
                                              mode="gaussian")
            if not isinstance(logits, torch.Tensor):
                raise TypeError("the network returned more than one tensor")
            pred = logits.argmax(1)[0].cpu().numpy()
            if (case["labels"] == 1).any():
                dices.append(_dice(pred == 1, case["labels"] == 1))
            else:
                negative_ml.append(float(np.isin(pred, (1, 2)).sum()) * voxel_ml)
    return {"val_ich_dice": float(np.mean(dices)) if dices else 0.0,
            "val_negative_max_ml": max(negative_ml)}


def _keep_if_best(run: _Run, fitting: _Fitting, epoch: int, metrics: dict[str, float],
                  best: dict[str, Any]) -> dict[str, Any]:
    """Save weights and bundle when this epoch scores better; returns the (new) best."""
    import torch

    score = metrics.get("val_ich_dice", -metrics["loss"])
    if score > best["dice"]:
        best = {"dice": score, "epoch": epoch, **metrics}
        torch.save({k: v.detach().half().cpu() for k, v in fitting.net.state_dict().items()},
                   run.weights)
        # A usable bundle exists after every improvement, so a long run can be stopped.
        write_bundle(run.out, _meta(run, best), run.weights)
    return best


def _meta(run: _Run, best: dict[str, Any]) -> dict[str, Any]:
    """model.json content for the weights saved so far."""
    import monai
    import torch

    cfg = run.cfg
    return {
        "name": run.out.name, "version": datetime.now(UTC).strftime("%Y.%m.%d"), "backend": "unet",
        "architecture": run.arch, "labels": {str(k): v for k, v in CLASS_NAMES.items()},
        "spacing_mm": list(cfg.spacing_mm), "hu_window": list(cfg.hu_window),
        "roi_size_zyx": list(cfg.roi_size_zyx), "antialias": cfg.antialias,
        "dtype": "float16 weights, float32 compute",
        "min_component_ml": 0.1,
        "synthetic_training": run.synthetic,
        "intended_use": ("Research and demonstration only. Fit on synthetic data; not clinically "
                         "validated; not for diagnostic use." if run.synthetic else
                         "Research use; not clinically validated; not for diagnostic use."),
        "training": {"data": run.data_description, "cases": len(run.fit),
                     "validation_cases": len(run.val),
                     "config": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in cfg.__dict__.items()},
                     "device": str(run.device), "seconds": round(time.monotonic() - run.started, 1),
                     "best_epoch": best.get("epoch")},
        "metrics": ({"validation_ich_dice_model_grid": round(best["val_ich_dice"], 4),
                     "validation_negative_max_ml": round(best.get("val_negative_max_ml", 0.0), 2),
                     "validation_rule": f"cases with ICH >= {VALIDATION_MIN_ML} mL scored; "
                                        "negatives reported"}
                    if "val_ich_dice" in best else {}),
        "versions": {"torch": torch.__version__, "monai": monai.__version__,
                     "python": platform.python_version()},
    }


def is_synthetic_case(folder: Path) -> bool:
    """True for a case folder written by ``dicomnode synth`` (its truth.json says so)."""
    try:
        truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(truth, dict) and truth.get("generator") == "dicomnode.lab.synth"


def synth_cases(out_dir: Path, n: int, *, seed: int = 1000, matrix: int = 160,
                thicknesses_mm: Sequence[float] = (1.25, 2.5, 5.0, 5.0),
                progress: Callable[[int], None] | None = None) -> list[Path]:
    """Make ``n`` varied synthetic phantoms for training (about 1 in 5 without blood), each
    with a slice thickness drawn from ``thicknesses_mm`` (repeat a value to weight it).

    Seeds start at ``seed`` so training phantoms never reuse the validation or held-out
    evaluation seeds (from 800000 and 900000).
    """
    from dicomnode.lab.synth import SITES, make_study

    rng = random.Random(seed)
    sites = sorted(SITES)
    folders = []
    for i in range(n):
        folder = out_dir / f"case-{seed + i:06d}"
        # Draw every case's parameters even when it exists, so that a resumed run makes the
        # same cases as an uninterrupted one.
        negative = rng.random() < 0.2
        volume_ml = float(np.exp(rng.uniform(np.log(0.5), np.log(120))))
        site, thickness_mm = rng.choice(sites), rng.choice(list(thicknesses_mm))
        ivh, noise_sd_hu, artefacts = rng.random() < 0.3, rng.uniform(3, 8), rng.random() < 0.8
        if not (folder / "labels.nii.gz").is_file():
            make_study(folder, seed=seed + i, matrix=matrix,
                       hemorrhage_ml=None if negative else volume_ml, site=site,
                       thickness_mm=thickness_mm, ivh=ivh, noise_sd_hu=noise_sd_hu,
                       artefacts=artefacts)
        folders.append(folder)
        if progress is not None:
            progress(i + 1)
    return folders
