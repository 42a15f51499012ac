"""Session fixtures for the measure tests: synthetic phantoms rendered once."""

from __future__ import annotations

import pytest
from measure_helpers import PHANTOMS, read_study

from dicomnode.lab.synth import make_study


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory):
    """[(truth, volume, labels)] for PHANTOMS, rendered once per session."""
    out = []
    root = tmp_path_factory.mktemp("measure_phantoms")
    for seed, site, ml in PHANTOMS:
        truth = make_study(root / f"{site}-{seed}", seed=seed, hemorrhage_ml=ml, site=site,
                           matrix=128, thickness_mm=5.0)
        volume, labels = read_study(truth.dicom_dir, truth.label_path)
        out.append((truth, volume, labels))
    return out


@pytest.fixture(scope="session")
def measured(phantoms):
    """[(truth, Measurements)] for the session's phantoms."""
    from dicomnode.measure import measure

    return [(truth, measure(volume, labels)) for truth, volume, labels in phantoms]
