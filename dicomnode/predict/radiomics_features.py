"""Radiomics of the ICH mask with pyradiomics (IBSI-style settings from a params file).

Inputs: a :class:`~dicomnode.domain.CTVolume` (HU), a :class:`~dicomnode.domain.LabelMap` on its
grid and a pyradiomics params file (``models/radiomics-params.yaml``, copied into every model
bundle). Outputs: ``{"rad_<imageType>_<class>_<Feature>": float}`` with a fixed set of names for
a given params file; NaN for every feature when the mask is empty or too small. Side effects:
pyradiomics' loggers are set to WARNING on first use.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import ICH, CTVolume, LabelMap

__all__ = ["DEFAULT_RADIOMICS_PARAMS", "MIN_ROI_VOXELS", "radiomics_feature_names", "radiomics_features"]

log = logging.getLogger(__name__)

#: The params file shipped with the repository (models/ at the repository root).
DEFAULT_RADIOMICS_PARAMS = Path(__file__).resolve().parents[2] / "models" / "radiomics-params.yaml"
#: Fewer ICH voxels than this (on the source grid) -> every feature NaN, pyradiomics not called.
MIN_ROI_VOXELS = 10
PREFIX = "rad_"

_lock = threading.Lock()
_quiet = False


def _silence_radiomics() -> None:
    """pyradiomics logs every step at INFO; keep WARNING and above (once per process)."""
    global _quiet
    if _quiet:
        return
    import radiomics

    radiomics.setVerbosity(logging.WARNING)
    for name in ("radiomics", "pykwalify", "pykwalify.core", "pykwalify.rule"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Logged at WARNING on every case with a symmetric GLCM (always, here): a note, not a problem.
    logging.getLogger("radiomics.glcm").addFilter(_SumAverageNote())
    _quiet = True


class _SumAverageNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Sum Average = 2 * Joint Average" not in record.getMessage()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=8)
def _extractor(path: str, digest: str) -> Any:  # digest: a changed file builds a new extractor
    from radiomics import featureextractor

    _silence_radiomics()
    return featureextractor.RadiomicsFeatureExtractor(path)


def _get_extractor(params_path: Path) -> Any:
    params_path = Path(params_path)
    if not params_path.is_file():
        raise FileNotFoundError(f"radiomics params file not found: {params_path}")
    return _extractor(str(params_path.resolve()), _digest(params_path))


def _image_type_names(extractor: Any) -> list[str]:
    names: list[str] = []
    for image_type in extractor.enabledImagetypes:
        if image_type != "Original":
            # pyradiomics names filtered images after their settings (e.g. log-sigma-1-0-mm-3D);
            # dicomnode only supports the original image so that the names are known up front.
            raise ValueError(f"only the Original image type is supported, params enable {image_type!r}")
        names.append("original")
    return names


def radiomics_feature_names(params_path: Path = DEFAULT_RADIOMICS_PARAMS) -> list[str]:
    """The ``rad_*`` names a params file produces, in extraction order (class, then feature).

    Deprecated pyradiomics features are left out, as pyradiomics itself does when a class is
    enabled without a feature list.
    """
    from radiomics import getFeatureClasses

    extractor = _get_extractor(params_path)
    classes = getFeatureClasses()
    names: list[str] = []
    for image_type in _image_type_names(extractor):
        for cls_name, features in extractor.enabledFeatures.items():
            if cls_name not in classes:
                raise ValueError(f"unknown pyradiomics feature class {cls_name!r} in {params_path}")
            available = classes[cls_name].getFeatureNames()  # name -> deprecated
            wanted = features or [f for f, deprecated in available.items() if not deprecated]
            names.extend(f"{PREFIX}{image_type}_{cls_name}_{f}" for f in wanted)
    return names


def _nan_features(names: list[str]) -> dict[str, float]:
    return dict.fromkeys(names, math.nan)


def radiomics_features(
    volume: CTVolume, labels: LabelMap, params_path: Path = DEFAULT_RADIOMICS_PARAMS
) -> dict[str, float]:
    """Radiomics of the ICH label (1) of ``labels`` on the HU image of ``volume``.

    Returns every name of :func:`radiomics_feature_names` (same order). An empty mask, one with
    fewer than :data:`MIN_ROI_VOXELS` voxels, or one pyradiomics rejects (fewer than
    ``minimumROIDimensions`` / ``minimumROISize`` after resampling) gives NaN for every feature.
    A label map on another grid raises ``ValueError``.
    """
    names = radiomics_feature_names(params_path)
    image, mask = volume.image, labels.image
    if image.GetSize() != mask.GetSize() or not (
        np.allclose(image.GetSpacing(), mask.GetSpacing(), atol=1e-4)
        and np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-5)
    ):
        raise ValueError(
            f"label map grid {mask.GetSize()} / {mask.GetSpacing()} differs from the volume grid "
            f"{image.GetSize()} / {image.GetSpacing()}"
        )
    n_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask) == ICH))
    if n_voxels < MIN_ROI_VOXELS:
        log.debug("ICH mask has %d voxels (< %d): radiomics all NaN", n_voxels, MIN_ROI_VOXELS)
        return _nan_features(names)
    extractor = _get_extractor(params_path)
    # pyradiomics wants an integer mask with the same metadata; give it ICH = 1 only.
    roi = sitk.Cast(sitk.BinaryThreshold(mask, ICH, ICH, 1, 0), sitk.sitkUInt8)
    roi.CopyInformation(image)
    hu = sitk.Cast(image, sitk.sitkFloat32)
    try:
        with _lock:  # the extractor object keeps per-call state
            raw: Mapping[str, Any] = extractor.execute(hu, roi, label=1)
    except ValueError as exc:  # pyradiomics' signal for an ROI it cannot use (too small, flat)
        log.warning("radiomics not computed (%s): all NaN", exc)
        return _nan_features(names)
    out = _nan_features(names)
    for key, value in raw.items():
        if key.startswith("diagnostics_"):
            continue
        name = PREFIX + key
        if name not in out:
            log.debug("unexpected radiomics feature %s ignored", name)
            continue
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            out[name] = math.nan
    return out
