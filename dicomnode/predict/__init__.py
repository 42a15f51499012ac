"""Predict stage: features (radiomics, deep, measurements, header, clinical), published scores
(CAVE) and trained HE/PSE models in self-describing bundles.

Inputs: CTVolume, LabelMap, Measurements, optional clinical variables. Outputs: feature dicts,
:class:`CaveResult`, probabilities from a :class:`Predictor`. Side effects: none (bundles are
written only by ``save_predictor``). See docs/prediction.md.

torch and monai are imported only when deep features are used (``dicomnode.predict.deep``).
"""

from .bundle import Predictor, load_predictor, save_predictor
from .clinical import ClinicalTable, clinical_features, read_clinical
from .features import extract_features, features_from_cohort_row, header_features, measurement_features
from .radiomics_features import DEFAULT_RADIOMICS_PARAMS, radiomics_feature_names, radiomics_features
from .scores import CAVE_RISK, CaveResult, cave_from_features, cave_score

__all__ = [
    "CAVE_RISK",
    "DEFAULT_RADIOMICS_PARAMS",
    "CaveResult",
    "ClinicalTable",
    "Predictor",
    "cave_from_features",
    "cave_score",
    "clinical_features",
    "extract_features",
    "features_from_cohort_row",
    "header_features",
    "load_predictor",
    "measurement_features",
    "radiomics_feature_names",
    "radiomics_features",
    "read_clinical",
    "save_predictor",
]


def __getattr__(name: str):  # lazy: torch/monai only on demand
    if name in ("DeepFeatureExtractor", "SliceConfig", "deep_slices"):
        from . import deep

        return getattr(deep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
