"""Self-describing model bundles: ``model.json`` + weights, checked when loaded.

A bundle folder carries everything needed to use the model: architecture, labels, voxel spacing,
HU window, patch size, versions, training data, metrics and intended use. Weights are a plain
``state_dict`` loaded with ``weights_only=True`` (no code runs on load) and checked by SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.errors import ModelError

REQUIRED = ("name", "version", "backend", "architecture", "labels", "spacing_mm", "hu_window",
            "roi_size_zyx", "weights", "weights_sha256", "intended_use")


@dataclass(frozen=True)
class Bundle:
    """A loaded ``model.json`` (the weights are loaded by the backend)."""

    folder: Path
    meta: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.meta["labels"].items()}

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        x, y, z = (float(v) for v in self.meta["spacing_mm"])
        return (x, y, z)

    @property
    def hu_window(self) -> tuple[float, float]:
        lo, hi = (float(v) for v in self.meta["hu_window"])
        return (lo, hi)

    @property
    def roi_size_zyx(self) -> tuple[int, int, int]:
        z, y, x = (int(v) for v in self.meta["roi_size_zyx"])
        return (z, y, x)

    @property
    def synthetic_training(self) -> bool:
        return bool(self.meta.get("synthetic_training", False))

    @property
    def weights_path(self) -> Path:
        return self.folder / str(self.meta["weights"])


def load_bundle(folder: Path, *, backend: str) -> Bundle:
    """Read and check ``folder/model.json``; raises ModelError naming the problem."""
    folder = Path(folder)
    path = folder / "model.json"
    if not path.is_file():
        raise ModelError(f"{path}: model bundle not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable model.json: {exc}") from exc
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ModelError(f"{path}: missing keys {missing}")
    if meta["backend"] != backend:
        raise ModelError(f"{path}: bundle is for backend {meta['backend']!r}, not {backend!r}")
    bundle = Bundle(folder, meta)
    weights = bundle.weights_path
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file missing")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != meta["weights_sha256"]:
        raise ModelError(f"{weights}: SHA-256 {digest[:16]}... does not match model.json")
    return bundle


def write_bundle(folder: Path, meta: dict[str, Any], weights_file: Path) -> Path:
    """Write ``model.json`` next to already-saved weights (adds their SHA-256)."""
    meta = dict(meta)
    meta["weights"] = weights_file.name
    meta["weights_sha256"] = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    path = folder / "model.json"
    path.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
