"""``unet``: our own 3D network (MONAI DynUNet) with sliding-window inference.

The volume is resampled to the bundle's spacing, clipped to its HU window and scaled to [0, 1];
MONAI's sliding-window inference with Gaussian blending gives class probabilities, which are
resampled back onto the volume's grid (linear) before the argmax, so the mask keeps sub-voxel
boundaries at the source resolution. Then labels are kept inside the skull only and blood
components under the bundle's minimum are dropped.
CUDA with bf16 autocast when present, else the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import ICH, IVH, LABELS, CTVolume, LabelMap
from dicomnode.errors import ModelError
from dicomnode.segment.bundle import Bundle, load_bundle
from dicomnode.segment.inference import (
    UNET_OVERLAP,
    UNET_SW_BATCH_SIZE,
    build_unet,
    load_unet,
    select_device,
    unet_autocast_dtype,
    unet_normalise,
    unet_probabilities,
)

log = logging.getLogger(__name__)
_LABEL_VALUES = {name: value for value, name in LABELS.items()}
build_network = build_unet  # the DynUNet of a bundle's architecture (also used by training)
normalise = unet_normalise  # clip to the HU window, scale to [0, 1]


def resample_to_spacing(image: sitk.Image, spacing_mm: tuple[float, float, float],
                        *, interpolator: int = sitk.sitkLinear,
                        default: float = -1024.0, antialias: bool = False) -> sitk.Image:
    """Resample onto a grid with the same origin and direction and the given spacing.

    With ``antialias``, axes that get coarser are first smoothed with a Gaussian of
    sigma = (new - old) / 2 mm, so that a 0.5 mm, 1 mm-slice scan reaches the model with the
    noise level of a coarse one instead of keeping its per-voxel noise (aliasing).
    """
    old_size = np.array(image.GetSize(), float)
    old_spacing = np.array(image.GetSpacing(), float)
    new_size = np.maximum(1, np.round(old_size * old_spacing / np.array(spacing_mm))).astype(int)
    if antialias:
        sigma_mm = np.maximum(0.0, (np.array(spacing_mm) - old_spacing) / 2)
        if sigma_mm.max() > 0.05:
            image = sitk.DiscreteGaussian(image, [float(v) for v in sigma_mm ** 2], 32, 0.01,
                                          True)
    return sitk.Resample(image, [int(v) for v in new_size], sitk.Transform(), interpolator,
                         image.GetOrigin(), spacing_mm, image.GetDirection(), default,
                         image.GetPixelID())


class UNetBackend:
    """Segments ICH, IVH (and oedema) with a trained DynUNet bundle."""

    name = "unet"

    def __init__(self, model_dir: Path, *, device: str = "auto", mirror: bool = False,
                 sw_batch_size: int = UNET_SW_BATCH_SIZE, overlap: float = UNET_OVERLAP) -> None:
        self.bundle: Bundle = load_bundle(model_dir, backend="unet")
        self.device = select_device(device)
        self.autocast_dtype = unet_autocast_dtype(self.device)
        self.mirror = mirror
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.net = load_unet(self.bundle.meta["architecture"], self.bundle.weights_path, self.device)
        # Model classes -> canonical label values, by name (checked once, here).
        self.class_values = {}
        for cls, name in self.bundle.labels.items():
            if name not in _LABEL_VALUES:
                raise ModelError(f"{self.bundle.folder}: unknown label name {name!r}")
            self.class_values[cls] = _LABEL_VALUES[name]
        self.min_component_ml = float(self.bundle.meta.get("min_component_ml", 0.0))

    def probabilities(self, volume: CTVolume) -> tuple[np.ndarray, sitk.Image]:
        """Class probabilities (C, z, y, x) on the model grid, and that grid as an image."""
        grid = resample_to_spacing(volume.image, self.bundle.spacing_mm,
                                   antialias=bool(self.bundle.meta.get("antialias", False)))
        x = unet_normalise(sitk.GetArrayViewFromImage(grid), self.bundle.hu_window)
        probs = unet_probabilities(self.net, x, self.bundle.roi_size_zyx, device=self.device,
                                   autocast_dtype=self.autocast_dtype,
                                   sw_batch_size=self.sw_batch_size, overlap=self.overlap,
                                   mirror=self.mirror)
        return probs, grid

    def segment(self, volume: CTVolume) -> LabelMap:
        probs, grid = self.probabilities(volume)
        target = volume.image
        best = np.zeros(sitk.GetArrayViewFromImage(target).shape, np.float32)
        labels = np.zeros(best.shape, np.uint8)
        # Background competes like any class: start from its probability.
        for cls in range(probs.shape[0]):
            img = sitk.GetImageFromArray(probs[cls])
            img.CopyInformation(grid)
            p = sitk.GetArrayFromImage(sitk.Resample(img, target, sitk.Transform(),
                                                     sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            win = p > best
            best[win] = p[win]
            labels[win] = self.class_values.get(cls, 0) if cls else 0
        labels = keep_intracranial(labels, volume)
        labels = remove_small_components(labels, target.GetSpacing(), self.min_component_ml)
        out = sitk.GetImageFromArray(labels)
        out.CopyInformation(target)
        return LabelMap(image=out, backend=self.name, model=self.bundle.name,
                        model_version=self.bundle.version,
                        labels={v: LABELS[v] for v in self.class_values.values()},
                        synthetic_training=self.bundle.synthetic_training)


def keep_intracranial(labels: np.ndarray, volume: CTVolume) -> np.ndarray:
    """Clear every label outside the intracranial soft tissue (``anatomy.image_brain_mask``).

    Blood, IVH and oedema lie inside the skull by definition; this removes responses in the
    scalp, skull base and facial soft tissue that no training phantom can cover completely.
    """
    if not labels.any():
        return labels
    from dicomnode.brain import image_brain_mask

    inside = image_brain_mask(volume.image)
    out = labels.copy()
    out[~inside] = 0
    return out


def remove_small_components(labels: np.ndarray, spacing_mm: tuple[float, ...],
                            min_ml: float) -> np.ndarray:
    """Drop connected blood components smaller than ``min_ml`` (noise, partial volume of bone)."""
    if min_ml <= 0:
        return labels
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    blood = np.isin(labels, (ICH, IVH))
    components, n = ndimage.label(blood)
    if n == 0:
        return labels
    sizes_ml = np.bincount(components.ravel())[1:] * voxel_ml
    small = np.flatnonzero(sizes_ml < min_ml) + 1
    out = labels.copy()
    out[np.isin(components, small)] = 0
    return out
