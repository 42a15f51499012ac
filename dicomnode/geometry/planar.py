"""Planar geometry of one 2-D mask: Feret diameters (ABC/2's A and B) and the outline polygon.

Used by measure (ABC/2) and by encode (the SR's planar measurement groups), so that the lines a
viewer draws are the ones the numbers come from. No I/O.

Pixel convention: pixel (row j, column i) is a filled square centred on (j, i); points are
returned in pixel units. The DICOM spatial coordinates of PS3.3 C.18.6.1.1 (column, row, with
(0, 0) the top left corner of the top left pixel) are these plus 0.5 (``to_scoord``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

__all__ = ["Feret", "Outline", "feret", "outline", "to_scoord"]

_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Feret:
    """A (maximum caliper diameter) and B (caliper width perpendicular to A), in mm.

    ``a_ends`` and ``b_ends`` are the two ends of each line as (row, column) pixel positions:
    A joins the two hull corners farthest apart; B is perpendicular to A, spans the mask's
    whole width across A and crosses A's line at the middle of the two extreme corners.
    """

    a_mm: float
    b_mm: float
    a_ends: np.ndarray  # (2, 2): (row, column) of each end
    b_ends: np.ndarray


def _row_extreme_corners(sl: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Corner points (mm) of the first and last pixel of every row: they hold the hull vertices."""
    rows = np.flatnonzero(sl.any(axis=1))
    first = sl[rows].argmax(axis=1)
    last = sl.shape[1] - 1 - sl[rows, ::-1].argmax(axis=1)
    j = np.concatenate([rows, rows]).astype(float)
    i = np.concatenate([first, last]).astype(float)
    pts = [np.stack([(j + dj) * sy, (i + di) * sx], axis=1) for dj in (-0.5, 0.5) for di in (-0.5, 0.5)]
    return np.unique(np.concatenate(pts), axis=0)


def feret(sl: np.ndarray, sy: float, sx: float) -> Feret:
    """A and B of a non-empty 2-D mask with row spacing ``sy`` and column spacing ``sx`` (mm).

    Raises
    ------
    ValueError
        The mask is empty.
    """
    sl = np.asarray(sl, dtype=bool)
    if not sl.any():
        raise ValueError("feret needs a non-empty mask")
    pts = _row_extreme_corners(sl, sy, sx)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):
        hull = pts
    d = hull[:, None, :] - hull[None, :, :]
    d2 = (d**2).sum(axis=2)
    p, q = np.unravel_index(int(np.argmax(d2)), d2.shape)
    a = float(np.sqrt(d2[p, q]))
    u = (hull[q] - hull[p]) / a
    v = np.array([-u[1], u[0]])
    proj = hull @ v
    lo, hi = int(np.argmin(proj)), int(np.argmax(proj))
    along = 0.5 * float(hull[lo] @ u + hull[hi] @ u)
    b_ends_mm = np.stack([along * u + proj[lo] * v, along * u + proj[hi] * v])
    scale = np.array([sy, sx])
    return Feret(a_mm=a, b_mm=float(proj[hi] - proj[lo]),
                 a_ends=np.stack([hull[p], hull[q]]) / scale, b_ends=b_ends_mm / scale)


@dataclass(frozen=True)
class Outline:
    """The boundary of a mask's largest 4-connected part (holes filled), along pixel edges.

    ``vertices`` are (row, column) corner positions (pixel centres are whole numbers, so corners
    are at halves), the polygon closed (last vertex = first). ``n_pixels`` is the number of
    pixels it encloses, which equals the polygon's area in pixels.
    """

    vertices: np.ndarray  # (n, 2)
    n_pixels: int


def outline(mask: np.ndarray) -> Outline:
    """Outline of the largest 4-connected component of a non-empty 2-D mask.

    Raises
    ------
    ValueError
        The mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("outline needs a non-empty mask")
    parts, n = ndimage.label(mask, structure=_CROSS)
    sizes = np.bincount(parts.ravel())[1:]
    region = ndimage.binary_fill_holes(parts == 1 + int(np.argmax(sizes)), structure=_CROSS)
    return Outline(vertices=_trace(region) - 0.5, n_pixels=int(region.sum()))


def _trace(region: np.ndarray) -> np.ndarray:
    """Closed loop of pixel corners (row, column) around a hole-free region, clockwise on screen.

    Every boundary edge is directed with the region on its right; at a corner where the region
    touches itself diagonally the walk turns right (stays with the pixel it follows), and any
    loop closed early is spliced in (Hierholzer), so every edge is used once.
    """
    p = np.pad(region, 1)
    r, c = np.nonzero(p[1:-1, 1:-1])
    r, c = r + 1, c + 1
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(start: tuple[int, int], end: tuple[int, int]) -> None:
        edges.setdefault(start, []).append(end)

    # Corner (y, x) = (row, column) of pixel corners in the unpadded grid.
    for y, x in zip(r.tolist(), c.tolist(), strict=True):
        ry, rx = y - 1, x - 1
        if not p[y - 1, x]:
            add((ry, rx), (ry, rx + 1))  # top, left to right
        if not p[y, x + 1]:
            add((ry, rx + 1), (ry + 1, rx + 1))  # right, downwards
        if not p[y + 1, x]:
            add((ry + 1, rx + 1), (ry + 1, rx))  # bottom, right to left
        if not p[y, x - 1]:
            add((ry + 1, rx), (ry, rx))  # left, upwards

    def next_vertex(prev: tuple[int, int], here: tuple[int, int]) -> tuple[int, int]:
        options = edges[here]
        if len(options) > 1:
            dy, dx = here[0] - prev[0], here[1] - prev[1]
            right = (here[0] + dx, here[1] - dy)  # a right turn on screen (rows grow downwards)
            if right in options:
                options.remove(right)
                return right
        return options.pop()

    start = min(edges)
    first = edges[start].pop()
    stack, loop = [start, first], []
    while stack:
        here = stack[-1]
        if edges.get(here):
            stack.append(next_vertex(stack[-2] if len(stack) > 1 else here, here))
        else:
            loop.append(stack.pop())
    loop.reverse()
    return _drop_collinear(np.asarray(loop, dtype=float))


def _drop_collinear(loop: np.ndarray) -> np.ndarray:
    """Remove the vertices in the middle of straight runs (the loop stays closed)."""
    pts = loop[:-1]
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - \
        (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    keep = pts[cross != 0]
    return np.vstack([keep, keep[:1]])


def to_scoord(points_rc: np.ndarray) -> np.ndarray:
    """(row, column) pixel positions -> DICOM SCOORD (column, row) pairs (PS3.3 C.18.6.1.1)."""
    pts = np.asarray(points_rc, dtype=float)
    return np.stack([pts[:, 1] + 0.5, pts[:, 0] + 0.5], axis=1)
