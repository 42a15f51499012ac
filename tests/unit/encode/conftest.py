"""Fixtures of the encode tests: small synthetic studies, built once per session (cases.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomnode.lab.synth import make_study
from tests.unit.encode.cases import Case, _case


@pytest.fixture(scope="session")
def plain_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    study = make_study(tmp_path_factory.mktemp("enc-plain"), seed=11, matrix=64, thickness_mm=5.0,
                       hemorrhage_ml=20.0, site="lobar", ivh=True)
    return _case(study, tilted=False)


@pytest.fixture(scope="session")
def tilted_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    study = make_study(tmp_path_factory.mktemp("enc-tilted"), seed=12, matrix=64, thickness_mm=5.0,
                       hemorrhage_ml=20.0, site="lobar", ivh=True, tilt_deg=15.0)
    return _case(study, tilted=True)


@pytest.fixture
def save(tmp_path: Path) -> Iterator:
    """Write a dataset to a file in tmp_path and return the path."""

    def _save(ds: Dataset, name: str) -> Path:
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
        return path

    yield _save
