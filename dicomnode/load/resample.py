"""Tilted or unevenly spaced stacks onto a regular grid, and label maps back onto the source planes.

Inputs: source planes in HU (sorted along the normal) and a :class:`~.geometry.Grid`; or a label
image and a :class:`~dicomnode.domain.CTVolume`. Outputs: the resampled volume (written in
place) or labels on the source planes. No I/O.

Method (see docs/loading.md): all source planes are parallel (one orientation), so an output
voxel at ``(u, v, w)`` (row, column, normal axes) lies between the two source planes that
bracket ``w``. Each of the two is sampled at ``(u, v)`` (bilinear; the in-plane offset of a
plane is the same for all its pixels, so this is a sub-pixel shift of the whole plane), and the
two values are blended linearly by ``w`` between the planes' exact distances along the normal.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .output_grid import Grid


def _shift_rows(src: np.ndarray, shift: float, n_out: int, fill: float) -> np.ndarray:
    """Resample along axis 0: output row ``i`` is source row coordinate ``i + shift`` (linear).

    Coordinates within half a pixel outside the source take the edge row (the pixel's own
    extent); further ones get ``fill``. Slices, not fancy indexing: this runs once per plane.
    """
    n_src = src.shape[0]
    out = np.full((n_out, *src.shape[1:]), fill, dtype=np.float32)
    k0 = int(np.floor(shift))
    f = shift - k0
    if f > 1 - 1e-6:
        k0, f = k0 + 1, 0.0
    exact = f < 1e-6
    # interior: both neighbours k0 + i and k0 + i + 1 in the source (just one when exact)
    lo = max(0, -k0)
    hi = min(n_out, n_src - k0 - (0 if exact else 1))
    if hi > lo:
        a = src[lo + k0 : hi + k0]
        if exact:
            out[lo:hi] = a
        else:
            b = src[lo + k0 + 1 : hi + k0 + 1]
            np.multiply(a, np.float32(1 - f), out=out[lo:hi])
            out[lo:hi] += np.float32(f) * b
    # the half-pixel bands beyond the first and last source rows: one output row each at most
    for i in (lo - 1, hi):
        if 0 <= i < n_out:
            x = i + shift
            if -0.5 - 1e-6 <= x <= 0:
                out[i] = src[0]
            elif n_src - 1 <= x <= n_src - 0.5 + 1e-6:
                out[i] = src[n_src - 1]
    return out


def shift_plane(src: np.ndarray, dr: float, dc: float, shape: tuple[int, int], fill: float) -> np.ndarray:
    """Sample ``src`` at (row + dr, column + dc) for every pixel of an output plane of ``shape``."""
    ny, nx = shape
    if abs(dr) < 1e-6 and abs(dc) < 1e-6 and shape == src.shape:
        return src
    tmp = _shift_rows(src, dr, ny, fill)
    return np.ascontiguousarray(_shift_rows(tmp.T, dc, nx, fill).T)


def resample_stack(planes: Iterator[np.ndarray], grid: Grid, out: np.ndarray, *, fill_hu: float) -> None:
    """Fill ``out`` (z, y, x) on ``grid`` from the source planes in HU, in place.

    ``planes`` yields the (rows, columns) source planes in stack order; they are consumed in
    that order and at most two (shifted onto the output plane) are kept.
    """
    nx, ny, nz = grid.size
    col_mm, row_mm = grid.spacing[0], grid.spacing[1]
    u0, v0 = grid.origin @ grid.direction[:, 0], grid.origin @ grid.direction[:, 1]
    w_src = grid.source_uvw[:, 2]
    shifts = [((v0 - v) / row_mm, (u0 - u) / col_mm) for u, v in grid.source_uvw[:, :2]]
    cache: dict[int, np.ndarray] = {}
    source = iter(planes)
    loaded = -1

    def plane(k: int) -> np.ndarray:
        nonlocal loaded
        while loaded < k:
            loaded += 1
            cache[loaded] = shift_plane(next(source), *shifts[loaded], (ny, nx), fill_hu)
            cache.pop(loaded - 2, None)
        return cache[k]

    w_out = grid.z_mm
    lower = np.clip(np.searchsorted(w_src, w_out, side="right") - 1, 0, len(w_src) - 2)
    for m in range(nz):
        a = int(lower[m])
        t = float(np.clip((w_out[m] - w_src[a]) / (w_src[a + 1] - w_src[a]), 0.0, 1.0))
        if t < 1e-6:
            out[m] = plane(a)
        elif t > 1 - 1e-6:
            out[m] = plane(a + 1)
        else:
            np.multiply(plane(a), np.float32(1 - t), out=out[m])
            out[m] += np.float32(t) * plane(a + 1)
