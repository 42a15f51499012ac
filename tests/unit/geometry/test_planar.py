"""Planar geometry: Feret lines and pixel-edge outlines of 2-D masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicomnode.geometry.planar import feret, outline, to_scoord


def _shoelace(v: np.ndarray) -> float:
    y, x = v[:, 0], v[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def test_feret_lines_have_the_reported_lengths_and_b_is_perpendicular_to_a() -> None:
    yy, xx = np.mgrid[0:120, 0:120]
    t = math.radians(30)
    u = (xx - 60) * math.cos(t) + (yy - 60) * math.sin(t)
    v = -(xx - 60) * math.sin(t) + (yy - 60) * math.cos(t)
    blob = (u / 40) ** 2 + (v / 15) ** 2 <= 1
    sy, sx = 0.7, 0.5
    f = feret(blob, sy, sx)
    scale = np.array([sy, sx])
    a_vec = (f.a_ends[1] - f.a_ends[0]) * scale
    b_vec = (f.b_ends[1] - f.b_ends[0]) * scale
    assert np.linalg.norm(a_vec) == pytest.approx(f.a_mm)
    assert np.linalg.norm(b_vec) == pytest.approx(f.b_mm)
    assert abs(a_vec @ b_vec) < 1e-6 * f.a_mm * f.b_mm
    assert f.a_mm > f.b_mm > 0


def test_feret_refuses_an_empty_mask() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        feret(np.zeros((4, 4), bool), 1.0, 1.0)


def test_outline_of_a_square_is_its_four_corners() -> None:
    m = np.zeros((10, 10), bool)
    m[2:5, 3:7] = True
    o = outline(m)
    assert o.n_pixels == 12
    assert len(o.vertices) == 5 and (o.vertices[0] == o.vertices[-1]).all()
    assert {tuple(p) for p in o.vertices} == {(1.5, 2.5), (1.5, 6.5), (4.5, 6.5), (4.5, 2.5)}
    assert _shoelace(o.vertices) == pytest.approx(12.0)  # clockwise on screen: positive here
    sc = to_scoord(o.vertices)
    assert sc[:, 0].min() == 3.0 and sc[:, 0].max() == 7.0  # columns, pixel edges
    assert sc[:, 1].min() == 2.0 and sc[:, 1].max() == 5.0  # rows


@pytest.mark.parametrize("seed", range(8))
def test_outline_area_equals_the_filled_largest_part(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.random((24, 24)) < 0.55  # ragged, with diagonal pinches and holes
    o = outline(m)
    assert (o.vertices[0] == o.vertices[-1]).all()
    assert _shoelace(o.vertices) == pytest.approx(o.n_pixels)
    steps = np.abs(np.diff(o.vertices, axis=0))
    assert ((steps[:, 0] == 0) | (steps[:, 1] == 0)).all()  # along pixel edges only


def test_outline_keeps_the_largest_part_and_fills_its_holes() -> None:
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5:8, 5:8] = False  # a hole
    m[15:17, 15:17] = True  # a smaller part
    o = outline(m)
    assert o.n_pixels == 100
    assert o.vertices[:, 0].max() < 12
