"""Serving: the configured HE and PSE models and the CAVE score for one analysed series.

Inputs: the volume, its label map and measurements (and an optional clinical sidecar).
Outputs: a :class:`~dicomnode.domain.Prediction`. Models are loaded once per process.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.domain import CaveScore, CTVolume, LabelMap, Measurements, Prediction, Risk
from dicomnode.predict.bundle import Predictor, load_predictor
from dicomnode.predict.clinical import ClinicalTable, read_clinical
from dicomnode.predict.estimators import TRUSTED_TYPES
from dicomnode.predict.image_features import ImageSpec, image_features
from dicomnode.predict.scores import cave_score

log = logging.getLogger(__name__)


@dataclass
class Predictors:
    he: Predictor | None = None
    pse: Predictor | None = None
    clinical: ClinicalTable | None = None

    @classmethod
    def load(cls, he_model: Path | None, pse_model: Path | None,
             clinical_sidecar: Path | None = None) -> Predictors:
        """Load and check the bundles (raises ModelError on any mismatch)."""
        out = cls()
        if he_model is not None:
            out.he = load_predictor(he_model, extra_trusted=TRUSTED_TYPES)
        if pse_model is not None:
            out.pse = load_predictor(pse_model, extra_trusted=TRUSTED_TYPES)
        if clinical_sidecar is not None:
            out.clinical = read_clinical(clinical_sidecar)
        return out

    def _clinical(self, volume: CTVolume) -> dict[str, Any]:
        if self.clinical is None:
            return {}
        return dict(self.clinical.lookup(
            accession_number=volume.header.get("accession_number"),
            study_instance_uid=volume.study_instance_uid) or {})

    def predict(self, volume: CTVolume, labels: LabelMap, m: Measurements) -> Prediction:
        header = dict(volume.header)
        clinical = self._clinical(volume)
        early = clinical.get("early_seizure")
        early_seizure = None if early is None or (isinstance(early, float) and math.isnan(early)) \
            else bool(early)
        cave = cave_score(m.cortical_involvement, header.get("patient_age_y"), m.ich_volume_ml,
                          early_seizure)
        risks: dict[str, Risk] = {}
        features: dict[str, float] | None = None
        for key, model in (("he", self.he), ("pse", self.pse)):
            if model is None:
                continue
            if features is None:
                features = model.extract(volume, labels, m, header=header, clinical=clinical)
            elif model.radiomics_params is not None:
                features = {**features, **model.extract(volume, labels, m, header=header,
                                                        clinical=clinical)}
            if any(n.startswith("img_") for n in model.feature_names) and \
                    not any(n.startswith("img_") for n in features):
                features = {**features, **image_features(volume, labels, ImageSpec())}
            risks[key] = Risk(probability=round(model.predict_proba(features), 4),
                              model=model.name, model_version=model.version,
                              synthetic_training=model.synthetic_training)
        return Prediction(
            cave=CaveScore(score=cave.score, partial=cave.partial,
                           risk=(float(cave.risk[0]), float(cave.risk[1])),
                           components=dict(cave.components)),
            expansion=risks.get("he"), epilepsy=risks.get("pse"), features=features or {})


def prediction_record(prediction: Prediction | None) -> dict[str, Any]:
    """The prediction keys of ``result.json`` (all present; None when not computed)."""
    out: dict[str, Any] = {"he_probability": None, "pse_probability": None,
                           "cave_score": None, "cave_partial": None}
    if prediction is None:
        return out
    if prediction.cave is not None:
        c = prediction.cave
        out.update({"cave_score": c.score, "cave_partial": c.partial, "cave_risk": list(c.risk),
                    "cave_components": dict(c.components)})
    for key, risk in (("he", prediction.expansion), ("pse", prediction.epilepsy)):
        if risk is not None:
            out.update({f"{key}_probability": risk.probability, f"{key}_model": risk.model,
                        f"{key}_model_version": risk.model_version,
                        f"{key}_synthetic_training": risk.synthetic_training})
    return out
