"""The image input of the CNN presets: the largest ICH cross-section and its neighbours.

Inputs: a :class:`~dicomnode.domain.CTVolume` (HU) and a :class:`~dicomnode.domain.LabelMap` on
its grid. Outputs: ``deep_slices`` -> float32 array (C, H, W) in [0, 1] (CT planes windowed,
the lesion mask optionally last). Side effects: none. Definitions in docs/prediction.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import ICH, CTVolume, LabelMap

if TYPE_CHECKING:
    pass

__all__ = ["deep_slices", "largest_ich_slice"]

BRAIN_WINDOW_HU = (40.0, 80.0)  # centre, width
AIR_HU = -1000.0


def largest_ich_slice(labels: LabelMap) -> int | None:
    """z index with the most ICH pixels (lowest index on a tie), None without ICH (as measure)."""
    ich = sitk.GetArrayViewFromImage(labels.image) == ICH
    area = ich.reshape(ich.shape[0], -1).sum(axis=1)
    return int(np.argmax(area)) if area.any() else None


def _resample_plane(
    image: sitk.Image,
    centre_mm: np.ndarray,
    offset_mm: float,
    crop_mm: float,
    size_px: int,
    interpolator: int,
    default: float,
) -> np.ndarray:
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: image axes (LPS)
    px = crop_mm / size_px
    origin = centre_mm + d[:, 2] * offset_mm - (d[:, 0] + d[:, 1]) * (crop_mm / 2 - px / 2)
    out = sitk.Resample(
        image,
        [size_px, size_px, 1],
        sitk.Transform(),
        interpolator,
        [float(v) for v in origin],
        [px, px, 1.0],
        [float(v) for v in d.ravel()],
        default,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)[0]  # (H = image y, W = image x)


def deep_slices(
    volume: CTVolume,
    labels: LabelMap,
    *,
    offsets_mm: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    k_slices: int | None = None,
    crop_mm: float = 96.0,
    size_px: int = 64,
    window_hu: tuple[float, float] = BRAIN_WINDOW_HU,
    mask_channel: bool = False,
) -> np.ndarray:
    """The axial slice with the largest ICH area and its neighbours, cropped on the haematoma.

    Planes lie ``offsets_mm`` along the image's z axis from the largest-area slice (linear
    interpolation between slices), or, with ``k_slices``, at the slices -k..+k themselves.
    Each plane is a ``crop_mm`` square centred on the ICH centroid of that slice (image x/y axes),
    resampled to ``size_px`` square (linear), outside the volume -1000 HU; values in the
    ``window_hu`` (centre, width) window scaled to [0, 1]. ``mask_channel`` appends the ICH mask
    of the centre plane (linear, so partial values at the border). Returns float32
    (C, size_px, size_px), C = number of planes (+1). Raises ``ValueError`` without ICH.
    """
    if crop_mm <= 0 or size_px < 8:
        raise ValueError(f"crop_mm must be > 0 and size_px >= 8, got {crop_mm}, {size_px}")
    if window_hu[1] <= 0:
        raise ValueError(f"window width must be > 0, got {window_hu}")
    image = volume.image
    if labels.image.GetSize() != image.GetSize():
        raise ValueError(
            f"label map size {labels.image.GetSize()} differs from the volume's {image.GetSize()}"
        )
    z = largest_ich_slice(labels)
    if z is None:
        raise ValueError("no ICH in the label map: deep slices need a haematoma")
    if k_slices is not None:
        if k_slices < 0:
            raise ValueError(f"k_slices must be >= 0, got {k_slices}")
        dz = float(image.GetSpacing()[2])
        offsets = [k * dz for k in range(-k_slices, k_slices + 1)]
    else:
        offsets = [float(o) for o in offsets_mm]
        if not offsets:
            raise ValueError("offsets_mm is empty")
    lab = sitk.GetArrayViewFromImage(labels.image)
    ys, xs = np.nonzero(lab[z] == ICH)
    centre = np.asarray(
        image.TransformContinuousIndexToPhysicalPoint((float(xs.mean()), float(ys.mean()), float(z)))
    )
    hu_img = sitk.Cast(image, sitk.sitkFloat32)
    lo = window_hu[0] - window_hu[1] / 2
    planes = [
        np.clip(
            (_resample_plane(hu_img, centre, o, crop_mm, size_px, sitk.sitkLinear, AIR_HU) - lo)
            / window_hu[1],
            0,
            1,
        )
        for o in offsets
    ]
    if mask_channel:
        m = sitk.Cast(labels.image == ICH, sitk.sitkFloat32)
        m.CopyInformation(image)
        planes.append(np.clip(_resample_plane(m, centre, 0.0, crop_mm, size_px, sitk.sitkLinear, 0.0), 0, 1))
    return np.stack(planes).astype(np.float32)
