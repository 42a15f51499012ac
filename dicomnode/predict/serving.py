"""Serving: the configured HE and PSE models and the CAVE score for one analysed series.

Inputs: the volume, its label map and measurements (and an optional clinical sidecar).
Outputs: a JSON-ready dict for ``result.json`` and the SR/overlays. Models are loaded once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.domain import CTVolume, LabelMap, Measurements
from dicomnode.predict.bundle import Predictor, load_predictor
from dicomnode.predict.scores import cave_score

log = logging.getLogger(__name__)


@dataclass
class Predictors:
    he: Predictor | None = None
    pse: Predictor | None = None
    clinical: Any = None  # a ClinicalTable, or None

    @classmethod
    def load(cls, he_model: Path | None, pse_model: Path | None,
             clinical_sidecar: Path | None = None) -> Predictors:
        """Load and check the bundles (raises ModelError on any mismatch)."""
        from dicomnode.predict.presets import TRUSTED_TYPES

        out = cls()
        if he_model is not None:
            out.he = load_predictor(he_model, extra_trusted=TRUSTED_TYPES)
        if pse_model is not None:
            out.pse = load_predictor(pse_model, extra_trusted=TRUSTED_TYPES)
        if clinical_sidecar is not None:
            from dicomnode.predict.clinical import read_clinical

            out.clinical = read_clinical(clinical_sidecar)
        return out

    def predict(self, volume: CTVolume, labels: LabelMap, m: Measurements) -> dict[str, Any]:
        header = dict(volume.header)
        clinical: dict[str, Any] = {}
        if self.clinical is not None:
            clinical = dict(self.clinical.lookup(
                accession_number=header.get("accession_number"),
                study_instance_uid=volume.study_instance_uid) or {})
        early = clinical.get("early_seizure")
        early_seizure = None if early is None or (isinstance(early, float) and math.isnan(early)) \
            else bool(early)
        cave = cave_score(m.cortical_involvement, header.get("patient_age_y"), m.ich_volume_ml,
                          early_seizure)
        out: dict[str, Any] = {
            "cave_score": cave.score, "cave_partial": cave.partial,
            "cave_risk": list(cave.risk), "cave_components": dict(cave.components),
            "he_probability": None, "pse_probability": None,
        }
        features: dict[str, float] | None = None
        for key, model in (("he", self.he), ("pse", self.pse)):
            if model is None:
                continue
            if features is None:
                features = model.extract(volume, labels, m, header=header, clinical=clinical)
            elif model.deep is not None or model.radiomics_params is not None:
                features = {**features, **model.extract(volume, labels, m, header=header,
                                                        clinical=clinical)}
            if any(n.startswith("img_") for n in model.feature_names) and \
                    not any(n.startswith("img_") for n in features):
                # Image presets take the lesion-centred slice stack as columns (cohort.ImageSpec).
                from dicomnode.predict.cohort import ImageSpec, image_features

                features = {**features, **image_features(volume, labels, ImageSpec())}
            out[f"{key}_probability"] = round(model.predict_proba(features), 4)
            out[f"{key}_model"] = model.name
            out[f"{key}_model_version"] = model.version
            out[f"{key}_synthetic_training"] = model.synthetic_training
        return out


def for_encoders(predictions: dict[str, Any]) -> dict[str, Any]:
    """The shape the SR and overlay encoders take."""
    out: dict[str, Any] = {}
    for key, name in (("he", "expansion"), ("pse", "epilepsy")):
        if predictions.get(f"{key}_probability") is not None:
            out[name] = {"probability": predictions[f"{key}_probability"],
                         "model": predictions[f"{key}_model"],
                         "model_version": predictions[f"{key}_model_version"],
                         "synthetic_training": predictions[f"{key}_synthetic_training"]}
    if predictions.get("cave_score") is not None:
        out["cave"] = {"score": predictions["cave_score"], "partial": predictions["cave_partial"],
                       "model": "CAVE (Haapaniemi 2014)", "model_version": "published"}
    return out
