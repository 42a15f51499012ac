"""Atlas-free brain geometry from HU alone: brain mask, depth below its surface, reference levels.

Inputs: a HU array (z, y, x) and the SimpleITK geometry of ``CTVolume.image``.
Outputs: :class:`BrainGeometry` (mask, depth in mm, midline, tentorium level, patient axes).
Side effects: none.

Shared by the measure stage (cortical involvement, site) and the threshold segmentation
backend; it depends on numpy, scipy and SimpleITK only. Rules and constants are documented in
docs/measurements.md ("Brain mask").
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

WORK_PIXEL_MM = 1.0  # the mask and the depth map are computed on pixels of about 1 mm
BONE_HU = 300.0
AIR_HU = -200.0  # skull (cortical bone and diploe are far above; tables mix with soft tissue)
SOFT_HU = (-15.0, 100.0)  # intracranial soft tissue: CSF, parenchyma, fresh blood
SKULL_CLOSE_MM = 4.0  # slice-wise closing of the bone ring (sutures, small foramina)
MIN_CAVITY_MM2 = 500.0  # a slice whose enclosed region is smaller does not restrict the mask
BRIDGE_CUT_MM = 2.0  # in-plane erosion before the largest component (cuts thin bridges)
LEVEL_AREA_FRACTION = 0.10  # slices with < 10 % of the largest brain area do not set z extent
TENTORIUM_FRACTION = 1.0 / 3.0  # tentorium level: lower third of the brain's superior extent


@dataclass(frozen=True)
class BrainGeometry:
    """The brain mask and the reference frame the site and cortex rules use.

    Coordinates ``*_mm`` are LPS patient coordinates (x left, y posterior, z superior).
    """

    mask: np.ndarray  # bool (z, y, x): intracranial soft tissue (parenchyma and CSF)
    depth_mm: np.ndarray  # float32 (z, y, x): distance to the nearest non-brain voxel, 0 outside
    spacing_zyx_mm: tuple[float, float, float]
    affine: np.ndarray  # 4x4: (k, j, i, 1) index -> LPS mm
    inferior_mm: float  # S coordinate of the lowest substantial brain slice
    superior_mm: float  # S coordinate of the highest substantial brain slice
    tentorium_mm: float  # S coordinate below which tissue counts as infratentorial
    midline_mm: float  # L coordinate of the supratentorial brain centroid
    ap_centre_mm: float  # P coordinate of the middle of the supratentorial AP extent
    half_width_mm: float  # supratentorial brain half extent along L
    half_length_mm: float  # supratentorial brain half extent along P

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    def to_lps(self, kji: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (k, j, i), float allowed, to (N, 3) LPS mm."""
        kji = np.atleast_2d(np.asarray(kji, dtype=float))
        return kji @ self.affine[:3, :3].T + self.affine[:3, 3]

    def supratentorial(self) -> np.ndarray:
        """Bool (z, y, x): voxels above the tentorium level (whole voxel grid, not masked)."""
        return s_coordinate_grid(self.affine, self.mask.shape) > self.tentorium_mm


def index_affine(image: sitk.Image) -> np.ndarray:
    """4x4 matrix taking numpy indices (k, j, i) of ``GetArrayFromImage`` to LPS mm."""
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    sp = np.asarray(image.GetSpacing(), dtype=float)
    m = d * sp[None, :]  # columns: physical step per (i, j, k)
    a = np.eye(4)
    a[:3, :3] = m[:, ::-1]  # reorder the columns to (k, j, i)
    a[:3, 3] = image.GetOrigin()
    return a


def s_coordinate_grid(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The S (superior) LPS coordinate of every voxel, broadcast to ``shape``."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape)
    row = affine[2]
    return (
        np.float32(row[0]) * k[:, None, None]
        + np.float32(row[1]) * j[None, :, None]
        + np.float32(row[2]) * i[None, None, :]
        + np.float32(row[3])
    )


def _disk(radius_px: tuple[int, int]) -> np.ndarray:
    ry, rx = (max(1, r) for r in radius_px)
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return (y / ry) ** 2 + (x / rx) ** 2 <= 1.0


def _slice_cavities(hu: np.ndarray, sy: float, sx: float) -> list[np.ndarray | None]:
    """Per slice, the region enclosed by bone and enclosed air; None where the ring is open."""
    close = _disk((int(round(SKULL_CLOSE_MM / sy)), int(round(SKULL_CLOSE_MM / sx))))
    pad = close.shape[0] // 2 + 1, close.shape[1] // 2 + 1
    min_px = MIN_CAVITY_MM2 / (sy * sx)
    out: list[np.ndarray | None] = []
    for sl in hu:
        bone = sl >= BONE_HU
        if bone.sum() < 20:
            out.append(None)
            continue
        air = sl < AIR_HU
        lab, _ = ndi.label(air)
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        barrier = np.pad(bone | (air & ~np.isin(lab, border)), (pad, pad))
        closed = ndi.binary_closing(barrier, structure=close)[pad[0] : -pad[0], pad[1] : -pad[1]]
        cavity = ndi.binary_fill_holes(closed) & ~closed
        out.append(cavity if cavity.sum() >= min_px else None)
    return out


def _factor(sy: float, sx: float) -> int:
    """In-plane block size that brings pixels to about ``WORK_PIXEL_MM`` (1 for coarse grids)."""
    return max(1, int(WORK_PIXEL_MM / max(sy, sx) + 1e-6))


def _upsample(a: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat each working pixel f x f times and fit ``shape`` exactly (odd sizes included)."""
    up = np.repeat(np.repeat(a, f, axis=1), f, axis=2)[:, : shape[1], : shape[2]]
    short = (0, shape[1] - up.shape[1]), (0, shape[2] - up.shape[2])
    if short[0][1] or short[1][1]:
        up = np.pad(up, ((0, 0), *short), mode="edge")
    return up


def brain_mask(hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
    """Intracranial soft tissue: bool (z, y, x), computed on pixels of about 1 mm.

    Sub-millimetre grids are averaged over f x f pixel blocks first and the mask is copied
    back to every pixel of a block (a 512 matrix is worked at 256).
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3-D (z, y, x), got shape {hu.shape}")
    sz, sy, sx = spacing_zyx_mm
    f = _factor(sy, sx)
    if f == 1:
        return _brain_mask(hu, spacing_zyx_mm)
    nz, ny, nx = hu.shape
    py, px = -ny % f, -nx % f
    h = np.pad(hu, ((0, 0), (0, py), (0, px)), mode="edge").astype(np.float32, copy=False)
    h = h.reshape(nz, (ny + py) // f, f, (nx + px) // f, f).mean(axis=(2, 4))
    return _upsample(_brain_mask(h, (sz, sy * f, sx * f)), f, hu.shape)


# image id -> (weak reference to the image, its brain mask); an entry goes with its image
_MASKS: dict[int, tuple[weakref.ref[sitk.Image], np.ndarray]] = {}


def image_brain_mask(image: sitk.Image) -> np.ndarray:
    """``brain_mask`` of a HU image, computed once while the image lives.

    The segmentation backends and the measure stage both need the mask of the same series
    (about 3 s for a 1 mm, 512-matrix head CT on 2 cores); the result is read-only.
    """
    key = id(image)
    hit = _MASKS.get(key)
    if hit is not None and hit[0]() is image:
        return hit[1]
    hu = np.asarray(sitk.GetArrayViewFromImage(image), np.float32)
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    mask = brain_mask(hu, spacing)  # type: ignore[arg-type]
    mask.flags.writeable = False
    _MASKS[key] = (weakref.ref(image, lambda _ref: _MASKS.pop(key, None)), mask)
    return mask


def depth_mm(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
    """Float32 distance (mm, voxel centre to centre) from each mask voxel to the nearest
    non-mask voxel; 0 outside. Computed on about 1 mm pixels like the mask."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float32)
    sz, sy, sx = spacing_zyx_mm
    f = _factor(sy, sx)
    sub = mask[:, f // 2 :: f, f // 2 :: f] if f > 1 else mask
    d = ndi.distance_transform_edt(sub, sampling=(sz, sy * f, sx * f)).astype(np.float32)
    return (_upsample(d, f, mask.shape) if f > 1 else d) * mask


def _brain_mask(hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> np.ndarray:
    """Intracranial soft tissue on the working grid (see ``brain_mask``).

    1. soft tissue: -15..100 HU (CSF, parenchyma, fresh blood); bone and air separate the
       intracranial soft tissue from the scalp and the face; in every slice where the bone
       ring (bone >= 300 HU plus air cells not connected to the image border, closed with a
       4 mm disk) encloses at least 5 cm^2, only the enclosed soft tissue counts (drops the
       face and neck at the skull base); a slice with an open ring borrows the enclosed
       region of the nearest closed slice towards the widest one (the brain narrows towards
       the skull base and the vertex);
    2. a 2 mm in-plane erosion cuts thin bridges (foramina, gaps in thin bone); the largest
       3-D connected component is kept and dilated back by the same disk, within step 1;
    3. holes are filled slice by slice (calcifications, noise).
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3-D (z, y, x), got shape {hu.shape}")
    _, sy, sx = spacing_zyx_mm
    # soft tissue; bone (>= 300 HU) and air separate the brain from the scalp and face
    cand = (hu >= SOFT_HU[0]) & (hu <= SOFT_HU[1])
    cavities = _slice_cavities(hu, sy, sx)
    closed = [k for k, c in enumerate(cavities) if c is not None]
    if closed:
        widest = max(closed, key=lambda k: int(cavities[k].sum()))  # type: ignore[union-attr]
        for k in range(len(cavities)):
            # an open ring borrows the cavity of the nearest closed slice towards the widest one
            towards = [c for c in closed if (c - k) * (widest - k) >= 0]
            src = min(towards, key=lambda c: abs(c - k))
            cand[k] &= cavities[src]
    if not cand.any():
        return cand
    cut = _disk((int(round(BRIDGE_CUT_MM / sy)), int(round(BRIDGE_CUT_MM / sx))))[None]
    core = ndi.binary_erosion(cand, structure=cut)
    lab, n = ndi.label(core)
    if n == 0:
        lab, n = ndi.label(cand)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    seed = lab == int(np.argmax(sizes))
    grown = ndi.binary_dilation(seed, structure=cut) & cand
    out = np.zeros_like(grown)
    for k in range(grown.shape[0]):
        if grown[k].any():
            out[k] = ndi.binary_fill_holes(grown[k])
    return out


def brain_geometry(hu: np.ndarray, image: sitk.Image, mask: np.ndarray | None = None) -> BrainGeometry:
    """Brain mask, its depth map and the reference levels of ``hu`` on the grid of ``image``."""
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    if mask is None:
        mask = brain_mask(hu, spacing)  # type: ignore[arg-type]
    affine = index_affine(image)
    depth = depth_mm(mask, spacing)  # type: ignore[arg-type]
    return _reference(mask, depth, spacing, affine)  # type: ignore[arg-type]


def _reference(
    mask: np.ndarray, depth: np.ndarray, spacing: tuple[float, float, float], affine: np.ndarray
) -> BrainGeometry:
    nan = float("nan")
    if not mask.any():
        return BrainGeometry(mask, depth, spacing, affine, nan, nan, nan, nan, nan, nan, nan)
    # S extent from substantial slices (drops the spinal canal and the last mm of the vertex)
    area = mask.sum(axis=(1, 2))
    rows = np.flatnonzero(area >= LEVEL_AREA_FRACTION * area.max())
    kk, jj, ii = np.nonzero(mask[:, ::2, ::2])
    pts = np.stack([kk, jj * 2, ii * 2], axis=1).astype(float)
    lps = pts @ affine[:3, :3].T + affine[:3, 3]
    sub = np.isin(kk, rows)
    s = lps[sub, 2]
    inferior, superior = float(s.min()), float(s.max())
    tentorium = inferior + TENTORIUM_FRACTION * (superior - inferior)
    supra = lps[sub & (lps[:, 2] > tentorium)]
    if len(supra) == 0:
        supra = lps[sub]
    lo, hi = np.percentile(supra[:, :2], [1, 99], axis=0)
    return BrainGeometry(
        mask=mask,
        depth_mm=depth,
        spacing_zyx_mm=spacing,
        affine=affine,
        inferior_mm=inferior,
        superior_mm=superior,
        tentorium_mm=float(tentorium),
        midline_mm=float(np.mean(supra[:, 0])),
        ap_centre_mm=float((lo[1] + hi[1]) / 2),
        half_width_mm=float((hi[0] - lo[0]) / 2),
        half_length_mm=float((hi[1] - lo[1]) / 2),
    )
