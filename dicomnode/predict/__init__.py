"""Predict stage: features (measurements, header, clinical, radiomics, image), published scores
(CAVE) and trained HE/PSE models in self-describing bundles.

Inputs: CTVolume, LabelMap, Measurements, optional clinical variables. Outputs: feature dicts,
:class:`CaveResult`, probabilities from a :class:`Predictor`. Side effects: none (bundles are
written only by ``save_predictor``). See docs/prediction.md.
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

