"""BLAST-CT v1 backend: the pretrained DeepMedic ensemble for traumatic/haemorrhagic lesions.

Inputs: a :class:`~dicomnode.domain.CTVolume` (float32 HU). Outputs: a
:class:`~dicomnode.domain.LabelMap` on the grid of ``volume.image`` with canonical labels
(BLAST-CT 1 IPH -> ICH, 2 EAH -> EXTRA_AXIAL, 3 oedema -> OEDEMA, 4 IVH -> IVH).
Side effects: none (weights are read once, in the constructor).

Clean-room implementation of ``blast-ct-v1/SPEC.md``: preprocessing (section 4), tiling
(section 5), ensembling and return to the input grid (section 6). See docs/models/blast-ct.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import BACKGROUND, EXTRA_AXIAL, ICH, IVH, OEDEMA, CTVolume, LabelMap
from dicomnode.errors import ModelError
from dicomnode.segment.blast_ct_net import N_CLASSES, DeepMedic, load_deepmedic
from dicomnode.segment.inference import (
    BLAST_BATCH_SIZE,
    BLAST_WINDOW_HU,
    blast_normalise,
    blast_predict_array,
    blast_predict_patches,
    blast_runtime,
    blast_to_device,
    select_device,
)

log = logging.getLogger(__name__)

MODEL_NAME = "blast-ct-v1"
N_MODELS = 12
WINDOW_HU = BLAST_WINDOW_HU
# BLAST-CT class value -> canonical label value (index = BLAST-CT value).
TO_CANONICAL = np.array([BACKGROUND, ICH, EXTRA_AXIAL, OEDEMA, IVH], dtype=np.uint8)
normalise = blast_normalise  # SPEC 4.3-4.4 (numpy only, in dicomnode.segment.inference)


# --- preprocessing (SPEC section 4) -------------------------------------------------------------

def as_reference_pixel_type(image: sitk.Image) -> sitk.Image:
    """Float images holding integral values that fit int16 -> int16 (what upstream saw).

    Upstream read int16 NIfTI and resamples with the pixel type unchanged (integer outputs are
    truncated). Our volumes are float32 HU, so without this cast the resampled values would keep
    their fractions and labels could differ from the reference by a few voxels.
    """
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    arr = sitk.GetArrayViewFromImage(image)
    if arr.size and np.isfinite(arr).all() and arr.min() >= -32768 and arr.max() <= 32767 \
            and np.array_equal(arr, np.round(arr)):
        return sitk.Cast(image, sitk.sitkInt16)
    return image


def _min_value(image: sitk.Image) -> float:
    f = sitk.MinimumMaximumImageFilter()
    f.Execute(image)
    return float(f.GetMinimum())


def _resample(image: sitk.Image, size, spacing, origin, direction, default: float) -> sitk.Image:
    r = sitk.ResampleImageFilter()
    r.SetSize([int(n) for n in size])
    r.SetOutputSpacing([float(v) for v in spacing])
    r.SetOutputOrigin([float(v) for v in origin])
    r.SetOutputDirection([float(v) for v in np.asarray(direction).ravel()])
    r.SetTransform(sitk.Transform())
    r.SetInterpolator(sitk.sitkLinear)
    r.SetDefaultPixelValue(default)
    r.SetOutputPixelType(image.GetPixelID())
    return r.Execute(image)


def reorient(image: sitk.Image) -> sitk.Image:
    """SPEC 4.1: permute/flip axes towards the identity direction by resampling.

    Reproduces upstream exactly, including its quirk: along a flipped axis the origin moves by
    the full extent n * spacing, so the new grid is one voxel off (its first voxel lies outside
    the source and takes the minimum value; source voxel 0 is lost).
    """
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    p = np.argmax(np.abs(d), axis=0)
    size = np.array(image.GetSize())[p]
    spacing = np.array(image.GetSpacing(), dtype=float)[p]
    d_new = d[:, p]
    flipped = np.diag(d_new) < 0
    origin = np.array(image.GetOrigin(), dtype=float) + d_new @ (size * spacing * flipped)
    d_new[:, flipped] *= -1
    try:
        return _resample(image, size, spacing, origin, d_new, _min_value(image))
    except RuntimeError:  # SimpleITK refuses a singular direction: upstream skips the step
        return image


def resample_1mm(image: sitk.Image) -> sitk.Image:
    """SPEC 4.2: 1 mm isotropic, n = round((n - 1) * spacing + 1) (half to even), same pixel type."""
    pairs = zip(image.GetSize(), image.GetSpacing(), strict=True)
    size = [int(round(float((n - 1) * s) / 1.0 + 1)) for n, s in pairs]
    return _resample(image, size, (1.0, 1.0, 1.0), image.GetOrigin(), image.GetDirection(),
                     _min_value(image))


def preprocess(image: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
    """Image -> (normalised float32 array in (z, y, x), the 1 mm grid image it lies on)."""
    iso = resample_1mm(reorient(as_reference_pixel_type(image)))
    return normalise(sitk.GetArrayFromImage(iso)), iso


def crop_around(image: sitk.Image, centre_lps_mm: Sequence[float], size_mm: float = 120.0) -> sitk.Image:
    """The voxels within a ``size_mm`` box (per image axis) centred on a physical point."""
    idx = image.TransformPhysicalPointToContinuousIndex([float(v) for v in centre_lps_mm])
    start, size = [], []
    for i, s, n in zip(idx, image.GetSpacing(), image.GetSize(), strict=True):
        m = min(n, max(1, int(round(size_mm / s))))
        start.append(min(max(0, int(round(i - m / 2))), n - m))
        size.append(m)
    return sitk.RegionOfInterest(image, size, start)


# --- the backend --------------------------------------------------------------------------------

class BlastCTBackend:
    """BLAST-CT v1 ensemble (models loaded once, in the constructor).

    Parameters
    ----------
    model_dir : Path
        The ``blast-ct-v1`` bundle (holding ``weights/model_{1..12}.pt``) or the weights folder.
    ensemble_size : int
        1..12: uses ``model_1`` .. ``model_N``; probabilities are summed (SPEC section 6).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    batch_size : int
        110^3 patches per forward pass (does not change results).
    half_precision : bool or None
        None: fp16 autocast on CUDA, fp32 on CPU. True/False force it on/off (bf16 on CPU).
    skip_empty_patches : bool
        Give background, without running the network, to tiles whose 30^3 output region is all
        air (normalised input == -1). Off by default: it can change labels (see the model card).
    models : sequence of int, optional
        Explicit model numbers instead of ``1..ensemble_size`` (e.g. ``[3]`` to run model 3 alone).
    channels_last : bool or None
        channels-last-3d tensors; None: on CUDA only. On CPU it is about 1.5x faster but changes
        logits by ~5e-5 (other oneDNN kernels), so CPU keeps the reference layout by default.
    """

    name = "blast_ct"

    def __init__(self, model_dir: Path, *, ensemble_size: int = N_MODELS, device: str = "auto",
                 batch_size: int = BLAST_BATCH_SIZE, half_precision: bool | None = None,
                 skip_empty_patches: bool = False, models: Sequence[int] | None = None,
                 channels_last: bool | None = None) -> None:
        import torch

        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) \
                or not 1 <= ensemble_size <= N_MODELS:
            raise ValueError(f"ensemble_size {ensemble_size!r}: expected an int in 1..{N_MODELS}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected a positive int")
        numbers = list(models) if models is not None else list(range(1, ensemble_size + 1))
        if not numbers or any(not isinstance(k, int) or not 1 <= k <= N_MODELS for k in numbers):
            raise ValueError(f"models {models!r}: expected model numbers in 1..{N_MODELS}")
        self.device = select_device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError("BLAST-CT: device 'cuda' requested but CUDA is not available")
        model_dir = Path(model_dir)
        weights = model_dir / "weights" if (model_dir / "weights").is_dir() else model_dir
        self.model_numbers = tuple(numbers)
        self.batch_size = batch_size
        self.skip_empty_patches = bool(skip_empty_patches)
        # fp16 on CUDA, fp32 on the CPU unless forced; measured (bench/blast_precision.py, CPU):
        # bf16 moved 2 % of the voxels between ICH and extra-axial blood, skipping empty patches
        # and batching moved none.
        self.autocast_dtype, self._memory_format = blast_runtime(
            self.device, half_precision=half_precision, channels_last=channels_last)
        t0 = time.perf_counter()
        self.nets: list[DeepMedic] = blast_to_device(
            [load_deepmedic(weights / f"model_{k}.pt") for k in numbers], self.device, self._memory_format)
        self.model_version = (f"1 (ensemble of {len(numbers)})" if models is None
                              else "1 (models " + ",".join(map(str, numbers)) + ")")
        self._uniform: dict[float, int] = {}
        self.last_stats: dict[str, float] = {}
        log.info("BLAST-CT: %d model(s) from %s on %s (%s) in %.1f s", len(numbers), weights,
                 self.device, self.autocast_dtype or "fp32", time.perf_counter() - t0)

    # -- network and tiling (dicomnode.segment.inference) -------------------------------------------
    def predict_patches(self, patches: np.ndarray) -> np.ndarray:
        """(B, 110, 110, 110) normalised patches -> (B, 30, 30, 30) BLAST-CT class values.

        One model: argmax of the logits. Several: argmax of the summed softmax (SPEC section 6).
        """
        return blast_predict_patches(self.nets, patches, device=self.device,
                                     autocast_dtype=self.autocast_dtype,
                                     memory_format=self._memory_format)

    def predict_array(self, array: np.ndarray) -> np.ndarray:
        """SPEC section 5: tile a normalised (z, y, x) array; returns BLAST-CT classes (uint8)."""
        t0 = time.perf_counter()
        out, stats = blast_predict_array(array, self.predict_patches, batch_size=self.batch_size,
                                         skip_empty_patches=self.skip_empty_patches,
                                         uniform_labels=self._uniform)
        seconds = time.perf_counter() - t0
        self.last_stats = {**stats, "seconds": seconds,
                           "seconds_per_patch": seconds / max(1.0, stats["run"])}
        return out

    def segment_image(self, image: sitk.Image) -> sitk.Image:
        """HU image -> canonical labels (uint8) on the same grid (nearest-neighbour return)."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ModelError(f"BLAST-CT needs a 3-D scalar image, got {image.GetDimension()}-D with "
                             f"{image.GetNumberOfComponentsPerPixel()} components")
        array, grid = preprocess(image)
        classes = self.predict_array(array)
        if classes.max(initial=0) >= N_CLASSES:  # pragma: no cover - argmax over 5 logits
            raise ModelError(f"BLAST-CT produced class {classes.max()}")
        labels = sitk.GetImageFromArray(TO_CANONICAL[classes])
        labels.SetSpacing((1.0, 1.0, 1.0))
        labels.SetOrigin(grid.GetOrigin())
        labels.SetDirection(grid.GetDirection())
        return sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    def segment(self, volume: CTVolume) -> LabelMap:
        """Segment a CT volume; labels on the grid of ``volume.image``."""
        t0 = time.perf_counter()
        labels = self.segment_image(volume.image)
        s = self.last_stats
        log.info("BLAST-CT series %s: %d patches (%d run, %d uniform, %d skipped) in %.1f s",
                 volume.series_instance_uid, s["patches"], s["run"], s["uniform"], s["skipped"],
                 time.perf_counter() - t0)
        return LabelMap(image=labels, backend=self.name, model=MODEL_NAME,
                        model_version=self.model_version, synthetic_training=False)

    def segment_crop(self, image: sitk.Image, centre_lps_mm: Sequence[float], *,
                     size_mm: float = 120.0) -> tuple[sitk.Image, sitk.Image]:
        """Segment only a ``size_mm`` box around a point; returns (crop, canonical labels on it)."""
        crop = crop_around(image, centre_lps_mm, size_mm)
        return crop, self.segment_image(crop)


def run_model_on_crop(model_dir: Path, image: sitk.Image, centre_lps_mm: Sequence[float], *,
                      model: int = 1, size_mm: float = 120.0, device: str = "auto",
                      batch_size: int = 4) -> tuple[sitk.Image, sitk.Image]:
    """One BLAST-CT model on a ``size_mm`` crop around a point: (crop, canonical labels on it).

    About 100-125 patches, i.e. 2 minutes on 2 CPU cores for a 120 mm crop.
    """
    backend = BlastCTBackend(model_dir, models=[model], device=device, batch_size=batch_size)
    return backend.segment_crop(image, centre_lps_mm, size_mm=size_mm)
