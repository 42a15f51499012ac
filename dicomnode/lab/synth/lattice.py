"""Sampling lattices and analytic shape primitives for the phantom renderer.

Every structure of the phantom is an approximate signed distance function (SDF, mm, negative
inside) evaluated on a regular lattice of points. A lattice is a stack of parallel planes; each
plane is a regular grid. The planes of one output slice are sub-slices across its thickness, so
averaging them gives the slab partial volume of a real slice.

Coordinates are in the *head frame* (mm): x to the patient's left, y posterior, z superior
(DICOM LPS axes), origin near the centre of the cerebrum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

F32 = np.float32


@dataclass
class Lattice:
    """A stack of parallel, regularly sampled planes in the head frame.

    Sample ``(p, j, i)`` lies at ``origins[p] + i * spacing_mm * row + j * spacing_mm * col``.

    Parameters
    ----------
    origins : (P, 3) array
        Head-frame position of sample ``(p, 0, 0)`` of each plane.
    row, col, normal : (3,) arrays
        Unit vectors along increasing column index, increasing row index, and across planes.
    spacing_mm : float
        In-plane sample spacing.
    shape : (P, J, I)
        Number of planes, rows and columns.
    """

    origins: np.ndarray
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    spacing_mm: float
    shape: tuple[int, int, int]
    _xyz: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def region(self, centre: np.ndarray, radius_mm) -> tuple[slice, slice, slice] | None:
        """Index box holding an axis-aligned box of half-sides ``radius_mm`` (scalar or 3)."""
        rel = np.asarray(centre, dtype=float)[None, :] - self.origins
        half = np.broadcast_to(np.asarray(radius_mm, dtype=float), (3,))
        dist = rel @ self.normal
        planes = np.nonzero(np.abs(dist) <= np.abs(self.normal) @ half)[0]
        if planes.size == 0:
            return None
        ic = rel[planes] @ self.row / self.spacing_mm
        jc = rel[planes] @ self.col / self.spacing_mm
        ri = np.abs(self.row) @ half / self.spacing_mm
        rj = np.abs(self.col) @ half / self.spacing_mm
        i0, i1 = int(np.floor(ic.min() - ri)), int(np.ceil(ic.max() + ri)) + 1
        j0, j1 = int(np.floor(jc.min() - rj)), int(np.ceil(jc.max() + rj)) + 1
        _, nj, ni = self.shape
        i0, i1, j0, j1 = max(i0, 0), min(i1, ni), max(j0, 0), min(j1, nj)
        if i0 >= i1 or j0 >= j1:
            return None
        return (slice(int(planes[0]), int(planes[-1]) + 1), slice(j0, j1), slice(i0, i1))

    def xyz(self, box: tuple[slice, slice, slice] | None = None):
        """Head-frame coordinates (three float32 arrays) of the samples in ``box``."""
        if self._xyz is None:
            p, j, i = self.shape
            jj = (np.arange(j, dtype=F32) * F32(self.spacing_mm))[None, :, None]
            ii = (np.arange(i, dtype=F32) * F32(self.spacing_mm))[None, None, :]
            out = []
            for a in range(3):
                o = self.origins[:, a].astype(F32)[:, None, None]
                out.append(o + ii * F32(self.row[a]) + jj * F32(self.col[a]))
            self._xyz = (out[0], out[1], out[2])
        if box is None:
            return self._xyz
        return tuple(c[box] for c in self._xyz)


def occupancy(sdf: np.ndarray, width_mm: float) -> np.ndarray:
    """Fraction of a sample's footprint inside a surface: a linear ramp one footprint wide.

    This is the analytic partial volume of a plane boundary crossing a box of side
    ``width_mm``; it is what lets a 1 mm working grid show sub-voxel edges.
    """
    return np.clip(F32(0.5) - sdf / F32(width_mm), F32(0.0), F32(1.0))


def ellipsoid_sdf(x, y, z, centre, semi, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid: (rho - 1) / |grad rho|."""
    px, py, pz = x - F32(centre[0]), y - F32(centre[1]), z - F32(centre[2])
    if rot is not None:  # rot maps head-frame offsets into the ellipsoid's own axes
        px, py, pz = (
            F32(rot[0, 0]) * px + F32(rot[0, 1]) * py + F32(rot[0, 2]) * pz,
            F32(rot[1, 0]) * px + F32(rot[1, 1]) * py + F32(rot[1, 2]) * pz,
            F32(rot[2, 0]) * px + F32(rot[2, 1]) * py + F32(rot[2, 2]) * pz,
        )
    a, b, c = (F32(s) for s in semi)
    qx, qy, qz = px / a, py / b, pz / c
    rho = np.sqrt(qx * qx + qy * qy + qz * qz)
    g = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2)
    return (rho - F32(1.0)) * rho / (g + F32(1e-6))


def capsule_sdf(x, y, z, p0, p1, radius_mm: float) -> np.ndarray:
    """Exact signed distance (mm) to a capsule (segment p0-p1 swept by a sphere)."""
    p0 = np.asarray(p0, dtype=float)
    d = np.asarray(p1, dtype=float) - p0
    dd = float(d @ d)
    px, py, pz = x - F32(p0[0]), y - F32(p0[1]), z - F32(p0[2])
    t = np.clip((px * F32(d[0]) + py * F32(d[1]) + pz * F32(d[2])) / F32(dd), 0.0, 1.0)
    qx, qy, qz = px - t * F32(d[0]), py - t * F32(d[1]), pz - t * F32(d[2])
    return np.sqrt(qx * qx + qy * qy + qz * qz) - F32(radius_mm)


def smooth_min(a: np.ndarray, b: np.ndarray, k_mm: float) -> np.ndarray:
    """Polynomial smooth minimum: a union without creases (k_mm = blend radius)."""
    h = np.maximum(F32(k_mm) - np.abs(a - b), F32(0.0)) / F32(k_mm)
    return np.minimum(a, b) - h * h * F32(k_mm * 0.25)


@dataclass(frozen=True)
class Waves:
    """A band-limited random field: a sum of random plane waves (continuous everywhere).

    Used for gyral folding, skull-thickness variation and haematoma texture. Defined in
    continuous coordinates, so it is identical whatever the matrix or slice thickness.
    """

    k: np.ndarray  # (K, 3) wave vectors, rad/mm
    phase: np.ndarray  # (K,)

    @classmethod
    def random(cls, rng: np.random.Generator, n: int, wavelength_mm: float) -> Waves:
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        lam = wavelength_mm * rng.uniform(0.75, 1.3, size=n)
        return cls(k=v * (2 * np.pi / lam)[:, None], phase=rng.uniform(0, 2 * np.pi, n))

    def __call__(self, x, y, z) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y, z).shape, dtype=F32)
        for (kx, ky, kz), ph in zip(self.k, self.phase, strict=True):
            out += np.cos(x * F32(kx) + y * F32(ky) + z * F32(kz) + F32(ph))
        return out * F32(np.sqrt(2.0 / len(self.phase)))  # unit variance


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix: yaw about z, then pitch about x, then roll about y."""
    a, b, c = np.radians([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return ry @ rx @ rz
