"""One geometry: assemble (what status records) and load (what is resampled) agree on a series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.assemble.stack_summary import series_geometry
from dicomnode.geometry.stack import GeometryError, assess_stack, axes
from dicomnode.load import load_series
from dicomnode.receive.checks import read_header
from tests.ct_series import stack, write

IDENTITY = axes((1, 0, 0, 0, 1, 0))


def _z(gaps_mm: list[float]) -> list[list[float]]:
    return [[-5.0, -4.0, float(z)] for z in np.concatenate([[0.0], np.cumsum(gaps_mm)])]


def _verdicts(folder: Path, positions: list[list[float]]) -> tuple[bool, bool]:
    paths = write(stack(positions), folder)
    status = series_geometry([read_header(pydicom.dcmread(p, stop_before_pixels=True))[1]
                              for p in paths])
    volume = load_series(paths)
    return bool(status["uneven_spacing"]), volume.resampled


@pytest.mark.parametrize(("gaps", "uneven"), [
    ([4.97, 5.03] * 4, False),  # scanner jitter: within max(0.05 mm, 1 %) of the median gap
    ([5.0] * 8, False),
    ([5.0, 5.0, 5.0, 2.5, 5.0, 5.0, 5.0], True),  # a thin slice in the middle
    ([5.0, 5.0, 5.0, 5.0, 10.0, 5.0], True),  # a missing slice
])
def test_assemble_and_load_agree_on_unevenness(tmp_path: Path, gaps: list[float], uneven: bool) -> None:
    recorded, resampled = _verdicts(tmp_path, _z(gaps))
    assert recorded is uneven
    assert resampled is uneven


def test_tilt_is_one_definition(tmp_path: Path) -> None:
    # Positions drift along y by 1 mm per 5 mm slice: an 11.3 degree gantry tilt.
    positions = [[-5.0, -4.0 + k * 1.0, k * 5.0] for k in range(8)]
    paths = write(stack(positions), tmp_path)
    status = series_geometry([read_header(pydicom.dcmread(p, stop_before_pixels=True))[1]
                              for p in paths])
    volume = load_series(paths)
    expected = np.degrees(np.arctan2(1.0, 5.0))
    assert status["tilt_deg"] == pytest.approx(expected, abs=0.01)
    assert status["tilted"] is True and volume.resampled
    assert any(f"{expected:.1f} deg" in w for w in volume.warnings) or volume.resampled


def test_assess_stack_orders_and_counts_duplicates() -> None:
    positions = np.array([[0, 0, 10.0], [0, 0, 0.0], [0, 0, 5.0], [0, 0, 5.0]])
    s = assess_stack(positions, IDENTITY)
    assert list(s.uvw_mm[:, 2]) == [0.0, 5.0, 5.0, 10.0]
    assert s.duplicates == 1 and list(s.gaps_mm) == [5.0, 5.0]
    assert not s.uneven and not s.tilted and s.tilt_deg == 0.0 and s.extent_mm == 10.0


def test_axes_refuses_cosines_that_are_not_a_plane() -> None:
    with pytest.raises(GeometryError, match="not two orthogonal unit vectors"):
        axes((1, 0, 0, 1, 0, 0))
