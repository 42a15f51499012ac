"""Classical threshold baseline: fresh blood is 50 to 90 HU inside the brain.

Inputs: a :class:`~dicomnode.domain.CTVolume` in HU. Outputs: a
:class:`~dicomnode.domain.LabelMap` with ICH (1) only: IVH is not separated from ICH by this
baseline (every blood voxel is labelled ICH). Side effects: none; it needs no weights.

Steps (constants below; rationale and validation in docs/measurements.md, "Threshold baseline"):

1. brain mask (``dicomnode.brain.brain_mask``: intracranial soft tissue);
2. in-plane Gaussian smoothing (sigma 1 mm) against quantum noise;
3. candidates: smoothed HU in [50, 90] inside the brain, excluding a 2.5 mm rim under its
   surface (partial volume of the inner table) and voxels next to hyperdense voxels
   (>= 120 HU: bone, calcifications);
4. in-plane opening (3 x 3 cross), then 3-D components smaller than 0.2 mL are dropped;
5. holes are filled slice by slice (hypodense parts of a clot: blend, black hole, swirl).

The brain mask lives in ``dicomnode.brain`` (shared with the measure stage).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from dicomnode.brain import brain_mask, depth_mm, image_brain_mask
from dicomnode.domain import ICH, LABELS, CTVolume, LabelMap

LOW_HU, HIGH_HU = 50.0, 90.0
SMOOTH_MM = 1.0
RIM_MM = 2.5
HYPERDENSE_HU = 120.0
MIN_COMPONENT_ML = 0.2

_CROSS = np.zeros((3, 3, 3), dtype=bool)
_CROSS[1] = ndi.generate_binary_structure(2, 1)


class ThresholdBackend:
    """``segment(volume) -> LabelMap`` by HU thresholds and morphology; no model, no weights."""

    name = "threshold"
    model = "threshold-baseline"
    model_version = "1"
    synthetic_training = False

    def __init__(
        self,
        *,
        low_hu: float = LOW_HU,
        high_hu: float = HIGH_HU,
        rim_mm: float = RIM_MM,
        min_component_ml: float = MIN_COMPONENT_ML,
    ) -> None:
        if not low_hu < high_hu:
            raise ValueError(f"low_hu {low_hu} must be below high_hu {high_hu}")
        if rim_mm < 0 or min_component_ml < 0:
            raise ValueError(f"rim_mm {rim_mm} and min_component_ml {min_component_ml} must be >= 0")
        self.low_hu, self.high_hu = float(low_hu), float(high_hu)
        self.rim_mm, self.min_component_ml = float(rim_mm), float(min_component_ml)

    def segment(self, volume: CTVolume) -> LabelMap:
        hu = sitk.GetArrayFromImage(volume.image).astype(np.float32, copy=False)
        spacing = tuple(float(s) for s in volume.image.GetSpacing()[::-1])
        blood = self.blood_mask(hu, spacing,  # type: ignore[arg-type]
                                brain=image_brain_mask(volume.image))
        labels = np.where(blood, np.uint8(ICH), np.uint8(0)).astype(np.uint8)
        out = sitk.GetImageFromArray(labels)
        out.CopyInformation(volume.image)
        return LabelMap(image=out, backend=self.name, model=self.model, model_version=self.model_version,
                        labels={ICH: LABELS[ICH]}, synthetic_training=self.synthetic_training)

    def blood_mask(self, hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float],
                   brain: np.ndarray | None = None) -> np.ndarray:
        """Bool (z, y, x): voxels taken as fresh blood (``brain``: the mask, when known)."""
        if hu.ndim != 3:
            raise ValueError(f"hu must be 3-D (z, y, x), got shape {hu.shape}")
        sz, sy, sx = spacing_zyx_mm
        if brain is None:
            brain = brain_mask(hu, spacing_zyx_mm)
        if not brain.any():
            return np.zeros(hu.shape, dtype=bool)
        smooth = ndi.gaussian_filter(hu, sigma=(0.0, SMOOTH_MM / sy, SMOOTH_MM / sx))
        depth = depth_mm(brain, spacing_zyx_mm)
        near_hyper = ndi.binary_dilation(hu >= HYPERDENSE_HU, structure=np.ones((3, 3, 3), dtype=bool))
        cand = brain & (depth > self.rim_mm) & ~near_hyper
        cand &= (smooth >= self.low_hu) & (smooth <= self.high_hu)
        cand = ndi.binary_opening(cand, structure=_CROSS)
        lab, n = ndi.label(cand, structure=np.ones((3, 3, 3), dtype=bool))
        if n == 0:
            return cand
        sizes_ml = np.bincount(lab.ravel()) * (sz * sy * sx / 1000.0)
        keep = sizes_ml >= self.min_component_ml
        keep[0] = False
        blood = keep[lab]
        for k in np.flatnonzero(blood.any(axis=(1, 2))):
            blood[k] = ndi.binary_fill_holes(blood[k])
        return blood & brain
