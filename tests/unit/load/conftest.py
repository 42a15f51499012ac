"""Fixtures of the load tests: the GE head CT and small synth studies (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.lab.synth import StudyTruth, make_study
from tests.conftest import GE_DIR
from tests.ct_series import files


@pytest.fixture(scope="session")
def ge_paths() -> list[Path]:
    paths = files(GE_DIR)
    if len(paths) != 28:
        pytest.skip(f"GE head CT not found in {GE_DIR}")
    return paths


def _study(tmp_path_factory: pytest.TempPathFactory, name: str, **kw: object) -> StudyTruth:
    return make_study(tmp_path_factory.mktemp(name), seed=7, matrix=64, thickness_mm=5.0,
                      hemorrhage_ml=30.0, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def synth_plain(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    return _study(tmp_path_factory, "plain")


@pytest.fixture(scope="session")
def synth_tilted(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    return _study(tmp_path_factory, "tilted", tilt_deg=15.0)


@pytest.fixture(scope="session")
def synth_jpegls(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    return _study(tmp_path_factory, "jpegls", compress="jpegls")


@pytest.fixture(scope="session")
def synth_j2k(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    return _study(tmp_path_factory, "j2k", compress="j2k")
