"""Render a phantom: scanner geometry, anatomy, haematoma, artefacts and noise.

Inputs: anatomy and lesion parameters, scan geometry. Outputs: a :class:`Phantom` (HU volume,
exact label map, geometry). No I/O.

How partial volume is made: the anatomy is painted on a working lattice with sub-slices across
each slice's thickness (at most 1.25 mm apart) and an in-plane step of about 1 mm (2x
supersampled for matrices up to 256, half resolution and linearly upsampled for 512), then
averaged into slices. The haematoma, IVH and oedema are painted at the output resolution with
their own supersampling, and the label map is taken from those same fractions (a voxel is
labelled when at least half of it is the structure), so image and label agree exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .anatomy import AnatomyParams, Painter, Tissue, floor_z
from .lattice import F32, Lattice, occupancy, rotation
from .lesion import LesionSpec, MassEffect

log = logging.getLogger(__name__)

LABEL_ICH, LABEL_IVH, LABEL_OEDEMA = 1, 2, 3
FOV_MM = 250.0
COVERAGE_MM = 160.0  # skull base (foramen magnum) to vertex
COVERAGE_CENTRE_Z_MM = 4.0  # head frame


@dataclass(frozen=True)
class ScanGeometry:
    """Where the slices are, in the patient (DICOM LPS) frame.

    Gantry tilt follows real scanners: the image planes tilt about the patient's left-right
    axis while the table steps along z, so a tilted stack is sheared (like the GE example data).
    """

    matrix: int
    thickness_mm: float
    n_slices: int
    tilt_deg: float = 0.0
    fov_mm: float = FOV_MM
    z_centre_mm: float = COVERAGE_CENTRE_Z_MM

    def __post_init__(self) -> None:
        if not 16 <= self.matrix <= 1024:
            raise ValueError(f"matrix must be 16..1024, got {self.matrix}")
        if not 0.3 <= self.thickness_mm <= 10.0:
            raise ValueError(f"thickness_mm must be 0.3..10, got {self.thickness_mm}")
        if not 1 <= self.n_slices <= 1000:
            raise ValueError(f"n_slices must be 1..1000, got {self.n_slices}")
        if abs(self.tilt_deg) > 30.0:
            raise ValueError(f"tilt_deg must be within +-30, got {self.tilt_deg}")

    @property
    def pixel_spacing_mm(self) -> float:
        return self.fov_mm / self.matrix

    @property
    def row(self) -> np.ndarray:  # direction of increasing column index
        return np.array([1.0, 0.0, 0.0])

    @property
    def col(self) -> np.ndarray:  # direction of increasing row index
        t = np.radians(self.tilt_deg)
        return np.array([0.0, np.cos(t), -np.sin(t)])

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)

    @property
    def table_step(self) -> np.ndarray:
        """Displacement between consecutive slice positions (along z; sheared when tilted)."""
        return np.array([0.0, 0.0, self.thickness_mm / np.cos(np.radians(self.tilt_deg))])

    def slice_centres(self) -> np.ndarray:
        k = np.arange(self.n_slices) - (self.n_slices - 1) / 2
        return np.array([0.0, 0.0, self.z_centre_mm])[None, :] + k[:, None] * self.table_step

    def positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice (centre of the first transmitted pixel)."""
        half = (self.matrix - 1) / 2 * self.pixel_spacing_mm
        return self.slice_centres() - half * self.row - half * self.col

    def affine_lps(self) -> np.ndarray:
        """4x4 index (column i, row j, slice k) -> LPS mm."""
        a = np.eye(4)
        a[:3, 0] = self.row * self.pixel_spacing_mm
        a[:3, 1] = self.col * self.pixel_spacing_mm
        a[:3, 2] = self.table_step
        a[:3, 3] = self.positions()[0]
        return a


@dataclass(frozen=True)
class Pose:
    """Head position in the scanner: head frame -> patient frame is ``offset + rot @ h``."""

    offset_mm: np.ndarray
    rot: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Pose:
        return cls(
            rng.normal(0, [2.0, 3.0, 2.0]),
            rotation(rng.normal(0, 2.0), rng.normal(0, 4.0), rng.normal(0, 1.5)),
        )


@dataclass(frozen=True)
class Phantom:
    """A rendered study: HU volume and label map as (slice, row, column) arrays."""

    hu: np.ndarray  # float32
    labels: np.ndarray  # uint8: 0 background, 1 ICH, 2 IVH, 3 oedema
    geometry: ScanGeometry
    tissue: np.ndarray | None  # int8 Tissue of pure voxels, -1 where mixed (tests only)
    ich_fraction_ml: float  # sum of ICH partial-volume fractions (continuous volume)
    cortical_ml: float  # haematoma volume that lies in cortex or sulci


def _plane_lattice(
    geom: ScanGeometry,
    pose: Pose,
    *,
    n_sub: int,
    spacing_mm: float,
    first_offset_mm: float,
    shape_ji: tuple[int, int],
    slices: range,
    j0: float = 0.0,
    i0: float = 0.0,
) -> Lattice:
    """Lattice of sub-slices of ``slices``; in-plane sample (0, 0) at pixel coords (j0, i0)."""
    centres = geom.slice_centres()[list(slices)]
    half = (geom.matrix - 1) / 2 * geom.pixel_spacing_mm
    sub = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * geom.thickness_mm
    origins = (centres[:, None, :] + sub[None, :, None] * geom.normal).reshape(-1, 3)
    origins = (
        origins
        - half * geom.row
        - half * geom.col
        + (i0 * geom.pixel_spacing_mm + first_offset_mm) * geom.row
        + (j0 * geom.pixel_spacing_mm + first_offset_mm) * geom.col
    )
    rt = pose.rot.T  # patient frame -> head frame
    return Lattice(
        origins=(origins - pose.offset_mm) @ rt.T,
        row=rt @ geom.row,
        col=rt @ geom.col,
        normal=rt @ geom.normal,
        spacing_mm=spacing_mm,
        shape=(len(origins), shape_ji[0], shape_ji[1]),
    )


def _upsample2(a: np.ndarray, axis: int) -> np.ndarray:
    """Linear 2x upsampling where output sample i sits at input coordinate (i - 0.5) / 2."""
    a = np.moveaxis(a, axis, -1)
    prev = np.concatenate([a[..., :1], a[..., :-1]], axis=-1)
    nxt = np.concatenate([a[..., 1:], a[..., -1:]], axis=-1)
    out = np.empty(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    out[..., 0::2] = F32(0.75) * a + F32(0.25) * prev
    out[..., 1::2] = F32(0.75) * a + F32(0.25) * nxt
    return np.moveaxis(out, -1, axis)


def render_anatomy(
    anat: AnatomyParams,
    geom: ScanGeometry,
    pose: Pose,
    *,
    warp: MassEffect | None,
    beam_hardening_hu: float,
    want_tissue: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """HU of the anatomy at output resolution, (slice, row, column), and optionally tissue."""
    m, px = geom.matrix, geom.pixel_spacing_mm
    n_sub = max(1, int(np.ceil(geom.thickness_mm / 1.25 - 1e-6)))
    up = px < 0.75  # 512-class matrices: paint at half resolution, upsample
    ss = 2 if px > 2.5 else 1  # very coarse matrices: 2x2 supersampling
    if up and m % 2:
        raise ValueError(f"matrix must be even when pixels are under 0.75 mm, got {m}")
    n_w = m // 2 if up else ss * m
    step = px * 2 if up else px / ss
    offset = px / 2 if up else (0.5 / ss - 0.5) * px  # working sample 0 relative to pixel 0
    lat = _plane_lattice(
        geom,
        pose,
        n_sub=n_sub,
        spacing_mm=step,
        first_offset_mm=offset,
        shape_ji=(n_w, n_w),
        slices=range(geom.n_slices),
    )
    painter = Painter(anat, lat, ramp_mm=step, warp=warp)
    hu, tissue = painter.paint(beam_hardening_hu=beam_hardening_hu)
    if hu is None:  # a Painter made with want_hu=True always paints HU
        raise RuntimeError("the painter returned no HU values")
    hu = hu.reshape(geom.n_slices, n_sub, n_w, n_w).mean(axis=1)
    tissue = tissue.reshape(geom.n_slices, n_sub, n_w, n_w)
    if up:
        hu = _upsample2(_upsample2(hu, 1), 2)
        pure = None
        if want_tissue:
            t = np.where((tissue == tissue[:, :1]).all(axis=1), tissue[:, 0], -1)
            pure = np.repeat(np.repeat(t, 2, axis=1), 2, axis=2)
        return hu, pure
    hu = hu.reshape(geom.n_slices, m, ss, m, ss).mean(axis=(2, 4))
    pure = None
    if want_tissue:
        blocks = tissue.reshape(geom.n_slices, n_sub, m, ss, m, ss)
        first = blocks[:, :1, :, :1, :, :1]
        same = (blocks == first).all(axis=(1, 3, 5))
        pure = np.where(same, first[:, 0, :, 0, :, 0], -1).astype(np.int8)
    return hu, pure


def _lesion_box(geom: ScanGeometry, pose: Pose, centre_mm: np.ndarray, radius_mm: float):
    """Output index box (k, j, i) holding a head-frame sphere."""
    lat = _plane_lattice(
        geom,
        pose,
        n_sub=1,
        spacing_mm=geom.pixel_spacing_mm,
        first_offset_mm=0.0,
        shape_ji=(geom.matrix, geom.matrix),
        slices=range(geom.n_slices),
    )
    return lat.region(centre_mm, radius_mm + geom.thickness_mm)


def paint_lesion(
    hu: np.ndarray,
    anat: AnatomyParams,
    spec: LesionSpec,
    geom: ScanGeometry,
    pose: Pose,
    *,
    warp: MassEffect | None,
) -> tuple[np.ndarray, float, float]:
    """Composite haematoma, oedema and IVH into ``hu`` in place; return labels and volumes."""
    labels = np.zeros(hu.shape, dtype=np.uint8)
    px = geom.pixel_spacing_mm
    oedema_mm = spec.oedema_frac * spec.r_eq_mm + 1.5
    box = _lesion_region(anat, spec, geom, pose, oedema_mm)
    if box is None:
        return labels, 0.0, 0.0
    grid = _LesionGrid.for_box(geom, pose, box)
    _, tissue = Painter(anat, grid.lattice, ramp_mm=grid.step_mm, warp=warp, want_hu=False).paint(
        intracranial_only=True
    )
    parts = _lesion_parts(anat, spec, grid, tissue, oedema_mm)
    f_ich, s_ich, f_oed, f_ivh = (grid.down(a) for a in (parts.ich, parts.ich_hu, parts.oedema, parts.ivh))
    h = hu[box]
    rest = 1 - f_ich - f_oed - f_ivh
    hu[box] = h * rest + s_ich + f_oed * F32(spec.oedema_hu) + f_ivh * F32(spec.ivh_hu)
    lab = np.zeros(h.shape, dtype=np.uint8)
    lab[f_oed >= 0.5] = LABEL_OEDEMA
    lab[f_ivh >= 0.5] = LABEL_IVH
    lab[f_ich >= 0.5] = LABEL_ICH
    labels[box] = lab
    voxel_ml = px * px * geom.thickness_mm / 1000.0
    sample_ml = voxel_ml / (grid.ss * grid.ss * grid.n_sub)
    return labels, float(f_ich.sum() * voxel_ml), float(parts.cortical_samples * sample_ml)


def _lesion_region(
    anat: AnatomyParams, spec: LesionSpec, geom: ScanGeometry, pose: Pose, oedema_mm: float
) -> tuple[slice, slice, slice] | None:
    """Output index box (k, j, i) around the clot, its oedema and (with IVH) the ventricles."""
    boxes = [_lesion_box(geom, pose, spec.centre_mm, spec.extent_mm + oedema_mm + 3)]
    if spec.ivh:
        vent = np.array([0.0, 30.0, 8.0]) * np.asarray(anat.scale)
        boxes.append(_lesion_box(geom, pose, vent, 40.0))
    found = [b for b in boxes if b is not None]
    if not found:
        return None
    k, j, i = (slice(min(b[a].start for b in found), max(b[a].stop for b in found)) for a in range(3))
    return k, j, i


@dataclass(frozen=True)
class _LesionGrid:
    """The supersampled lattice of a lesion box: ``ss`` x ``ss`` in-plane, ``n_sub`` sub-slices."""

    lattice: Lattice
    shape_kji: tuple[int, int, int]  # output voxels of the box
    ss: int
    n_sub: int
    step_mm: float

    @classmethod
    def for_box(cls, geom: ScanGeometry, pose: Pose, box: tuple[slice, slice, slice]) -> _LesionGrid:
        px = geom.pixel_spacing_mm
        nk, nj, ni = (s.stop - s.start for s in box)
        ss = 1 if px < 1.5 else 2
        n_sub = max(2, int(np.ceil(geom.thickness_mm / 1.25 - 1e-6)))
        step = px / ss
        lat = _plane_lattice(
            geom,
            pose,
            n_sub=n_sub,
            spacing_mm=step,
            first_offset_mm=(0.5 / ss - 0.5) * px,
            shape_ji=(nj * ss, ni * ss),
            slices=range(box[0].start, box[0].stop),
            j0=box[1].start,
            i0=box[2].start,
        )
        return cls(lattice=lat, shape_kji=(nk, nj, ni), ss=ss, n_sub=n_sub, step_mm=step)

    def down(self, a: np.ndarray) -> np.ndarray:
        """Average the samples of each output voxel."""
        nk, nj, ni = self.shape_kji
        ss = self.ss
        return a.reshape(nk, self.n_sub, nj, ss, ni, ss).mean(axis=(1, 3, 5))


@dataclass(frozen=True)
class _LesionParts:
    """Fractions of each sample that are clot, oedema and IVH, and the clot's HU contribution."""

    ich: np.ndarray
    ich_hu: np.ndarray
    oedema: np.ndarray
    ivh: np.ndarray
    cortical_samples: int  # clot samples in supratentorial cortex


def _lesion_parts(
    anat: AnatomyParams, spec: LesionSpec, grid: _LesionGrid, tissue: np.ndarray, oedema_mm: float
) -> _LesionParts:
    """Clot, oedema and IVH fractions on the lesion lattice, confined to the tissues they can fill."""
    step = grid.step_mm
    x, y, z = grid.lattice.xyz()
    ux, uy, uz = spec.to_unit(x, y, z)
    f_mm = spec.unit_sdf(ux, uy, uz) * F32(spec.scale_mm)
    allowed, brain = _blood_masks(tissue, f_mm)
    ich = occupancy(f_mm, step) * allowed
    ich_hu = ich * spec.density(ux, uy, uz)
    rim = F32(oedema_mm) * (1 + F32(0.35) * spec.rough(ux * 3, uy * 3, uz * 3))
    oed = (occupancy(f_mm - rim, step) - occupancy(f_mm, step)) * brain * (1 - ich)
    ivh = np.zeros_like(ich)
    if spec.ivh:
        yc = y / F32(anat.scale[1])
        depth = np.where(np.sign(x) == spec.side, *(F32(d) for d in spec.ivh_depth_mm))
        ivh = ((tissue == Tissue.VENTRICLE) & (yc > F32(52.0) - depth)).astype(F32) * (1 - ich)
    # cortical involvement in the CAVE sense: supratentorial cortex only
    supra = z / F32(anat.scale[2]) > floor_z(x / F32(anat.scale[0]), y / F32(anat.scale[1]))
    cortical = int(((ich > 0.5) & (tissue == Tissue.CORTEX) & supra).sum())
    return _LesionParts(ich=ich, ich_hu=ich_hu, oedema=oed, ivh=ivh, cortical_samples=cortical)


def _blood_masks(tissue: np.ndarray, f_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where the clot may be, brain parenchyma where oedema may be) on the lesion lattice."""
    allowed = np.isin(
        tissue,
        [
            Tissue.CORTEX,
            Tissue.WHITE_MATTER,
            Tissue.DEEP_GREY,
            Tissue.CEREBELLUM,
            Tissue.BRAINSTEM,
            Tissue.CSF,
            Tissue.CHOROID,
        ],
    )
    brain = np.isin(
        tissue, [Tissue.CORTEX, Tissue.WHITE_MATTER, Tissue.DEEP_GREY, Tissue.CEREBELLUM, Tissue.BRAINSTEM]
    )
    # Sulcal CSF next to the clot takes blood; CSF outside the brain surface does not.
    allowed &= (tissue != Tissue.CSF) | (f_mm < F32(-1.0))
    return allowed, brain


def add_streaks(
    hu: np.ndarray, anat: AnatomyParams, geom: ScanGeometry, pose: Pose, rng: np.random.Generator
) -> None:
    """Skull-base streaks: a dark band between the petrous bones plus faint radial streaks."""
    s = np.asarray(anat.scale)
    pets = [pose.offset_mm + pose.rot @ (np.array([side * 30.0, 16.0, -50.0]) * s) for side in (-1, 1)]
    px = geom.pixel_spacing_mm
    pos = geom.positions()
    ii = np.arange(geom.matrix, dtype=F32) * F32(px)
    amp = F32(rng.uniform(15.0, 35.0))
    n_rays, phase = int(rng.integers(9, 15)), rng.uniform(0, np.pi, 2)
    for k in range(geom.n_slices):
        zc = (pos[k] + (geom.matrix - 1) / 2 * px * (geom.row + geom.col))[2]
        weight = float(np.exp(-(((zc - pets[0][2]) / 9.0) ** 2)))
        if weight < 0.05:
            continue
        xs = pos[k][0] + ii[None, :]
        ys = pos[k][1] + ii[:, None] * F32(geom.col[1])
        a, b = pets[0][:2], pets[1][:2]
        d = b - a
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / (d @ d), -0.2, 1.2)
        dist = np.hypot(xs - (a[0] + t * d[0]), ys - (a[1] + t * d[1]))
        band = -amp * np.exp(-((dist / 3.0) ** 2))
        rays = 0.0
        for n, c in enumerate(pets):
            r = np.hypot(xs - c[0], ys - c[1])
            th = np.arctan2(ys - c[1], xs - c[0])
            rays = rays + np.cos(n_rays * th + phase[n]) ** 8 * np.exp(-r / 60.0) * (r > 12)
        hu[k] += F32(weight) * (band + amp * F32(0.6) * (rays - F32(0.15))).astype(F32)


def add_noise(hu: np.ndarray, geom: ScanGeometry, sd_hu: float, rng: np.random.Generator):
    """Quantum noise with a CT-like texture (correlated over ~0.6 mm), scaled to ``sd_hu``."""
    if sd_hu <= 0:
        return
    noise = rng.standard_normal(hu.shape, dtype=F32)
    sigma_px = 0.6 / geom.pixel_spacing_mm
    if sigma_px > 0.3:
        from scipy.ndimage import gaussian_filter1d

        for ax in (1, 2):
            noise = gaussian_filter1d(noise, sigma_px, axis=ax, mode="wrap")
        noise /= noise.std()
    hu += noise * F32(sd_hu)
