"""Self-describing bundles of trained HE/PSE models (scikit-learn, stored with skops, never pickle).

A bundle is a folder (format in docs/prediction.md "Model bundles"): ``model.json`` (what,
how trained, feature names in order, library versions, file hashes, intended use),
``model.skops`` (the fitted sklearn estimator, a Pipeline that imputes), optionally
``radiomics-params.yaml``.
Inputs: a fitted estimator and its description (``save_predictor``) or a folder
(``load_predictor``). Outputs: a :class:`Predictor`. Side effects: ``save_predictor`` writes
the folder. Every refusal is a :class:`~dicomnode.errors.ModelError` that says why.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.errors import ModelError

from .bundle_checks import (
    ALLOWED_TYPES,
    LIBRARIES,
    check_names,
    describe_difference,
    installed_version,
    jsonable,
    major_version,
    model_checks,
    predict_positive,
    sha256,
    skops_io,
    untrusted_types,
)

if TYPE_CHECKING:
    from dicomnode.domain import CTVolume, LabelMap, Measurements

__all__ = [
    "ALLOWED_TYPES",
    "BUNDLE_FORMAT",
    "FORMAT_VERSION",
    "SYNTHETIC_INTENDED_USE",
    "Predictor",
    "load_predictor",
    "save_predictor",
]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "dicomnode-predictor"
FORMAT_VERSION = 1
MODEL_FILE = "model.skops"
META_FILE = "model.json"
RADIOMICS_FILE = "radiomics-params.yaml"
TARGETS = ("he", "pse")
SYNTHETIC_INTENDED_USE = "Fit on synthetic data; not clinically validated."

def save_predictor(
    folder: Path,
    model: Any,
    *,
    name: str,
    version: str,
    target: str,
    preset: str,
    feature_names: Sequence[str],
    training_data: Mapping[str, Any] | str,
    metrics: Mapping[str, Any],
    synthetic_training: bool,
    calibration: Mapping[str, Any] | str | None = None,
    intended_use: str | None = None,
    radiomics_params: Path | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_trusted: Iterable[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write a fitted sklearn classifier and its description to ``folder``; return ``model.json``.

    ``model`` must take the features in ``feature_names`` order and cope with NaN (impute inside
    the Pipeline): a row of NaN is predicted as a check. ``rad_*`` features need
    ``radiomics_params``. Types skops does not
    trust must be in :data:`ALLOWED_TYPES` or ``extra_trusted`` (a loader must then pass the
    same ``extra_trusted``). Raises :class:`ModelError`.
    """
    sio = skops_io()

    folder = Path(folder)
    names = check_names(feature_names)
    desc = _Description(
        name=name,
        version=version,
        target=target,
        preset=preset,
        training_data=training_data,
        metrics=metrics,
        synthetic_training=synthetic_training,
        calibration=calibration,
        intended_use=intended_use,
        extra=extra,
    )
    uses_rad = _check_before_saving(model, names, desc, radiomics_params)
    _clear_folder(folder, overwrite=overwrite)
    untrusted = _dump_model(sio, folder, model, names, target, extra_trusted)
    files = [MODEL_FILE]
    if radiomics_params is not None:
        shutil.copyfile(radiomics_params, folder / RADIOMICS_FILE)
        files.append(RADIOMICS_FILE)
    meta = _metadata(
        desc, model, names, folder, files, untrusted, uses_radiomics=uses_rad or radiomics_params is not None
    )
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, folder / META_FILE)
    log.info("saved predictor %s %s (%s, %d features) to %s", name, version, target, len(names), folder)
    return folder / META_FILE


@dataclass(frozen=True)
class _Description:
    """What :func:`save_predictor` records about a model besides the estimator and its files."""

    name: str
    version: str
    target: str
    preset: str
    training_data: Mapping[str, Any] | str
    metrics: Mapping[str, Any]
    synthetic_training: bool
    calibration: Mapping[str, Any] | str | None
    intended_use: str | None
    extra: Mapping[str, Any] | None


def _check_before_saving(
    model: Any, names: list[str], desc: _Description, radiomics_params: Path | None
) -> bool:
    """Refuse a bundle that could not be served; return whether it uses ``rad_*`` features."""
    if desc.target not in TARGETS:
        raise ModelError(f"target must be one of {TARGETS}, got {desc.target!r}")
    if not desc.name or not desc.version or not desc.preset:
        raise ModelError("name, version and preset must be non-empty")
    positive = model_checks(model, names)
    try:
        p = predict_positive(model, np.full((1, len(names)), np.nan), positive)
    except ValueError as exc:
        raise ModelError(
            "the model cannot predict a row of missing values; impute inside the Pipeline "
            f"(e.g. SimpleImputer): {exc}"
        ) from exc
    if not (0.0 <= float(p[0]) <= 1.0):
        raise ModelError(f"predict_proba of a missing row is {p[0]}, not a probability")
    uses_rad = any(n.startswith("rad_") for n in names)
    if uses_rad and radiomics_params is None:
        raise ModelError("the model uses rad_* features: radiomics_params is required")
    return uses_rad


def _clear_folder(folder: Path, *, overwrite: bool) -> None:
    """Create ``folder``, refusing an existing bundle unless ``overwrite``; drop stale files."""
    if (folder / META_FILE).exists() and not overwrite:
        raise ModelError(f"{folder} already holds a model bundle (overwrite=False)")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (MODEL_FILE, RADIOMICS_FILE):
        (folder / stale).unlink(missing_ok=True)


def _dump_model(
    sio: Any, folder: Path, model: Any, names: list[str], target: str, extra_trusted: Iterable[str]
) -> list[str]:
    """Write ``model.skops``; return its untrusted types, sorted (removed and refused if any is
    outside the allow-list)."""
    # The payload repeats the feature names and target, so that model.json and the weights
    # cannot drift apart unnoticed.
    payload = {"estimator": model, "feature_names": names, "target": target, "format_version": FORMAT_VERSION}
    sio.dump(payload, folder / MODEL_FILE)
    allowed = ALLOWED_TYPES | set(extra_trusted)
    untrusted = sorted(untrusted_types(folder / MODEL_FILE))
    refused = [t for t in untrusted if t not in allowed]
    if refused:
        (folder / MODEL_FILE).unlink()
        raise ModelError(f"the model holds types outside the allow-list: {refused}")
    return untrusted


def _intended_use(desc: _Description) -> str:
    """The given intended use (or a default per target), marked when fit on synthetic data."""
    use = desc.intended_use or "Research use: predicts {} from the admission non-contrast head CT.".format(
        "haematoma expansion" if desc.target == "he" else "post-stroke epilepsy"
    )
    if desc.synthetic_training and SYNTHETIC_INTENDED_USE.lower().rstrip(".") not in use.lower():
        use = f"{use.rstrip()} {SYNTHETIC_INTENDED_USE}"
    return use


def _metadata(
    desc: _Description,
    model: Any,
    names: list[str],
    folder: Path,
    files: list[str],
    untrusted: list[str],
    *,
    uses_radiomics: bool,
) -> dict[str, Any]:
    """The content of ``model.json`` for files already written to ``folder``."""
    use = _intended_use(desc)
    libs = ["scikit-learn", "skops", "numpy", "scipy"]
    if uses_radiomics:
        libs.append("pyradiomics")
    return {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": desc.name,
        "version": str(desc.version),
        "target": desc.target,
        "preset": desc.preset,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "estimator": type(model).__name__,
        "positive_class": 1,
        "n_features": len(names),
        "feature_names": names,
        "libraries": {lib: installed_version(lib) for lib in libs},
        "python": platform.python_version(),
        "training_data": jsonable(desc.training_data),
        "metrics": jsonable(desc.metrics),
        "calibration": jsonable(desc.calibration),
        "intended_use": use,
        "synthetic_training": bool(desc.synthetic_training),
        "skops_untrusted_types": untrusted,
        "radiomics_params": RADIOMICS_FILE if RADIOMICS_FILE in files else None,
        "files": {f: {"sha256": sha256(folder / f), "bytes": (folder / f).stat().st_size} for f in files},
        "extra": jsonable(desc.extra or {}),
    }


@dataclass
class Predictor:
    """A loaded, checked bundle. ``predict_proba`` builds the vector in ``feature_names`` order."""

    folder: Path
    name: str
    version: str
    target: str
    preset: str
    feature_names: tuple[str, ...]
    model: Any
    metadata: Mapping[str, Any]
    positive_index: int
    radiomics_params: Path | None = None

    @property
    def synthetic_training(self) -> bool:
        return bool(self.metadata.get("synthetic_training"))

    @property
    def intended_use(self) -> str:
        return str(self.metadata.get("intended_use", ""))

    def check_features(self, feature_names: Sequence[str]) -> None:
        """Raise :class:`ModelError` unless ``feature_names`` equal the model's, in order."""
        given = list(feature_names)
        if given != list(self.feature_names):
            raise ModelError(
                f"model {self.name} {self.version}: feature names/order differ from the caller's: "
                + describe_difference(list(self.feature_names), given)
            )

    def vector(self, features: Mapping[str, float]) -> np.ndarray:
        """(1, n) float array in the stored order; missing or non-numeric -> NaN."""
        x = np.full((1, len(self.feature_names)), np.nan)
        for j, n in enumerate(self.feature_names):
            v = features.get(n)
            if v is None:
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            x[0, j] = f if math.isfinite(f) else np.nan
        return x

    def predict_proba(self, features: Mapping[str, float]) -> float:
        """Probability of the positive class (HE or PSE) for one study's feature dict.

        Features the model does not use are ignored; those it uses but are absent are NaN
        (imputed by the pipeline).
        """
        return float(predict_positive(self.model, self.vector(features), self.positive_index)[0])

    def predict_proba_many(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """``predict_proba`` of several studies at once, shape (N,)."""
        if not rows:
            return np.zeros(0)
        x = np.vstack([self.vector(r) for r in rows])
        return predict_positive(self.model, x, self.positive_index)

    def extract(
        self,
        volume: CTVolume,
        labels: LabelMap,
        measurements: Measurements,
        *,
        header: Mapping[str, Any] | None = None,
        clinical: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        """``extract_features`` with this bundle's radiomics params."""
        from .features import extract_features

        return extract_features(
            volume,
            labels,
            measurements,
            header=header,
            clinical=clinical,
            radiomics_params=self.radiomics_params,
        )


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        raise ModelError(f"{folder}: no {META_FILE}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{path}: not a {BUNDLE_FORMAT} bundle")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path}: format version {meta.get('format_version')}, this dicomnode reads {FORMAT_VERSION}"
        )
    for key in ("name", "version", "target", "preset", "feature_names", "libraries", "files"):
        if key not in meta:
            raise ModelError(f"{path}: missing {key!r}")
    if meta["target"] not in TARGETS:
        raise ModelError(f"{path}: unknown target {meta['target']!r}")
    if MODEL_FILE not in meta["files"]:
        raise ModelError(f"{path}: {MODEL_FILE} is not listed in files")
    return meta


def load_predictor(
    folder: Path,
    *,
    feature_names: Sequence[str] | None = None,
    extra_trusted: Iterable[str] = (),
) -> Predictor:
    """Load and check a bundle written by :func:`save_predictor`.

    Refuses (``ModelError``) when: ``model.json`` is missing or of another format; a listed file
    is missing or its SHA-256 differs; a recorded library's major version differs from the
    installed one (a minor difference of scikit-learn is logged); the skops file holds a type
    outside :data:`ALLOWED_TYPES` and ``extra_trusted``; the estimator does not match the stored
    feature names; or ``feature_names`` (what the caller will provide) differ in names or order.
    """
    sio = skops_io()

    folder = Path(folder)
    meta = _read_meta(folder)
    _check_files(folder, meta)
    _check_libraries(folder, meta)
    payload = _load_payload(sio, folder, extra_trusted)
    model = payload["estimator"]
    names = check_names(meta["feature_names"])
    _check_payload_matches(folder, meta, payload, names)
    positive = model_checks(model, names)
    pred = Predictor(
        folder=folder,
        name=str(meta["name"]),
        version=str(meta["version"]),
        target=str(meta["target"]),
        preset=str(meta["preset"]),
        feature_names=tuple(names),
        model=model,
        metadata=meta,
        positive_index=positive,
        radiomics_params=_radiomics_path(folder, meta, names),
    )
    if feature_names is not None:
        pred.check_features(feature_names)
    if pred.synthetic_training:
        log.info("model %s %s: %s", pred.name, pred.version, pred.intended_use)
    return pred


def _check_files(folder: Path, meta: Mapping[str, Any]) -> None:
    """Every file listed in ``model.json`` is present with the recorded SHA-256."""
    for fname, info in meta["files"].items():
        p = folder / fname
        if not p.is_file():
            raise ModelError(f"{folder}: {fname} is missing")
        digest = sha256(p)
        if digest != info.get("sha256"):
            raise ModelError(f"{folder}: {fname} hash differs from model.json (file changed or corrupt)")


def _check_libraries(folder: Path, meta: Mapping[str, Any]) -> None:
    """Recorded libraries are installed with the same major version (scikit-learn minor: logged)."""
    for lib, saved in meta["libraries"].items():
        if lib not in LIBRARIES or saved is None:
            continue
        now = installed_version(lib)
        if now is None:
            raise ModelError(f"{folder}: needs {lib} {saved}, which is not installed")
        if major_version(now) != major_version(saved):
            raise ModelError(f"{folder}: saved with {lib} {saved}, installed {now} (major version differs)")
        if lib == "scikit-learn" and now.split(".")[:2] != str(saved).split(".")[:2]:
            log.warning("%s: saved with scikit-learn %s, running %s", folder, saved, now)


def _load_payload(sio: Any, folder: Path, extra_trusted: Iterable[str]) -> dict[str, Any]:
    """The skops payload, loaded only when every untrusted type in it is allowed."""
    allowed = ALLOWED_TYPES | set(extra_trusted)
    untrusted = untrusted_types(folder / MODEL_FILE)
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise ModelError(f"{folder}: {MODEL_FILE} holds untrusted types {refused}")
    try:
        payload = sio.load(folder / MODEL_FILE, trusted=sorted(untrusted))
    except Exception as exc:  # noqa: BLE001 - skops raises many types for a bad file
        raise ModelError(f"{folder}: cannot load {MODEL_FILE} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or "estimator" not in payload:
        raise ModelError(f"{folder}: {MODEL_FILE} is not a dicomnode predictor payload")
    return payload


def _check_payload_matches(
    folder: Path, meta: Mapping[str, Any], payload: Mapping[str, Any], names: list[str]
) -> None:
    """``model.json`` and the payload agree on the feature names and the target."""
    if list(payload.get("feature_names", [])) != names:
        raise ModelError(
            f"{folder}: model.json feature names differ from those stored with the estimator: "
            + describe_difference(list(payload.get("feature_names", [])), names)
        )
    if payload.get("target") != meta["target"]:
        raise ModelError(
            f"{folder}: model.json target {meta['target']!r} differs from the estimator's "
            f"{payload.get('target')!r}"
        )


def _radiomics_path(folder: Path, meta: Mapping[str, Any], names: list[str]) -> Path | None:
    """The bundle's radiomics params file, required by ``rad_*`` features; ``deep_*`` refused."""
    rad = meta.get("radiomics_params")
    rad_path = folder / rad if rad else None
    if any(n.startswith("rad_") for n in names) and rad_path is None:
        raise ModelError(f"{folder}: the model uses rad_* features but the bundle has no radiomics params")
    if meta.get("deep_extractor") or any(n.startswith("deep_") for n in names):
        raise ModelError(f"{folder}: deep_* features (a separate deep feature extractor) are not "
                         "supported; image presets use img_* columns")
    return rad_path
