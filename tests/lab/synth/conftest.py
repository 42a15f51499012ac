"""Shared small studies (64 and 128 matrices render in well under a second or two)."""

from __future__ import annotations

import pytest

from dicomnode.lab.synth import make_study


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study64")
    return make_study(out, seed=11, matrix=64, n_slices=16, hemorrhage_ml=25.0, site="lobar", ivh=True)
