"""Intraparenchymal haematoma: site, irregular shape, density markers, oedema, IVH, mass effect.

The haematoma is an implicit shape in its own *unit frame* (a smooth union of ellipsoidal lobes,
a low-frequency surface perturbation and satellite foci), scaled by one length so that its volume
hits the requested value: scaling a fixed shape by ``s`` scales its volume by exactly ``s**3``,
which is also how the follow-up scan grows the same clot.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .anatomy import AnatomyParams, in_parenchyma
from .lattice import F32, Waves, ellipsoid_sdf, rotation, smooth_min

SITES = ("basal_ganglia", "thalamus", "lobar", "lobar_subcortical", "cerebellar", "brainstem")
SITE_ALIASES = {
    "deep": "basal_ganglia",
    "lobar_cortical": "lobar",
    "putamen": "basal_ganglia",
    "pons": "brainstem",
    "cerebellum": "cerebellar",
}
# Largest volume each site can hold while staying anatomically plausible (mL).
SITE_MAX_ML = {
    "basal_ganglia": 120.0,
    "thalamus": 45.0,
    "lobar": 120.0,
    "lobar_subcortical": 30.0,
    "cerebellar": 40.0,
    "brainstem": 15.0,
}
# Directions (canonical frame, left side) from the brain centre towards each lobe's surface.
LOBES = {
    "frontal": (0.45, -0.8, 0.35),
    "parietal": (0.55, 0.25, 0.8),
    "temporal": (0.97, -0.15, -0.1),
    "occipital": (0.35, 0.9, 0.2),
}


def canonical_site(site: str) -> str:
    """Resolve aliases; raise ValueError naming the bad site."""
    name = SITE_ALIASES.get(site, site)
    if name not in SITES:
        raise ValueError(f"unknown haemorrhage site {site!r}; choose from {', '.join(SITES)}")
    return name


@dataclass(frozen=True)
class Markers:
    """Design values of the NCCT expansion markers (see docs/synthetic-data.md)."""

    heterogeneity: float  # 0..1: amplitude of internal density texture
    irregularity: float  # 0..1: lobulation, surface roughness and satellites
    blend_sign: bool
    black_hole_sign: bool
    swirl_sign: bool


@dataclass(frozen=True)
class LesionSpec:
    """Everything needed to draw one haematoma (baseline or grown follow-up)."""

    site: str
    side: int  # +1 patient left, -1 right
    lobe: str | None
    centre_mm: np.ndarray  # physical head frame
    rot: np.ndarray
    lobes: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]
    satellites: tuple[tuple[tuple[float, float, float], float], ...]
    rough: Waves
    rough_amp: float
    texture: Waves
    markers: Markers
    hu_mean: float
    blend_normal: np.ndarray
    black_hole: tuple[tuple[float, float, float], float] | None
    swirls: tuple[tuple[tuple[float, float, float], float], ...]
    oedema_hu: float
    oedema_frac: float  # oedema rim thickness as a fraction of the equivalent radius
    unit_volume_mm3: float  # volume of the unit shape (before scaling)
    scale_mm: float = 1.0
    ivh: bool = False
    ivh_depth_mm: tuple[float, float] = (0.0, 0.0)  # (ipsilateral, contralateral) layer depth
    ivh_hu: float = 65.0

    @property
    def r_eq_mm(self) -> float:
        """Radius of the sphere of the same (unclipped) volume."""
        return float((3 * self.unit_volume_mm3 / (4 * np.pi)) ** (1 / 3) * self.scale_mm)

    @property
    def extent_mm(self) -> float:
        """Radius of a sphere centred on the clot that holds it and its satellites."""
        return float(self.scale_mm * 2.0)

    def unit_sdf(self, px, py, pz) -> np.ndarray:
        """Signed distance in unit-frame lengths (multiply by ``scale_mm`` for mm)."""
        (c0, semi0), *rest = self.lobes
        body = ellipsoid_sdf(px, py, pz, c0, semi0)
        for c, semi in rest:
            body = smooth_min(body, ellipsoid_sdf(px, py, pz, c, semi), 0.35)
        body = body + F32(self.rough_amp) * self.rough(px, py, pz)
        for c, r in self.satellites:
            body = np.minimum(body, ellipsoid_sdf(px, py, pz, c, (r, r, r)))
        return body

    def to_unit(self, x, y, z):
        """Physical head-frame coordinates to the unit frame."""
        dx, dy, dz = (x - F32(self.centre_mm[0]), y - F32(self.centre_mm[1]), z - F32(self.centre_mm[2]))
        r, s = self.rot, F32(1.0 / self.scale_mm)
        return (
            (F32(r[0, 0]) * dx + F32(r[1, 0]) * dy + F32(r[2, 0]) * dz) * s,
            (F32(r[0, 1]) * dx + F32(r[1, 1]) * dy + F32(r[2, 1]) * dz) * s,
            (F32(r[0, 2]) * dx + F32(r[1, 2]) * dy + F32(r[2, 2]) * dz) * s,
        )

    def density(self, px, py, pz) -> np.ndarray:
        """Haematoma HU at unit-frame points: texture plus the sign markers."""
        m = self.markers
        hu = F32(self.hu_mean) + F32(2.0 + 9.0 * m.heterogeneity) * self.texture(px, py, pz)
        if m.blend_sign:  # a less dense component with a sharp border (Li et al. blend sign)
            n = self.blend_normal
            side = px * F32(n[0]) + py * F32(n[1]) + pz * F32(n[2]) > F32(0.15)
            hu = np.where(side, hu - F32(24.0), hu)
        if self.black_hole is not None:  # encapsulated hypodensity, >= 28 HU darker
            c, r = self.black_hole
            inside = ellipsoid_sdf(px, py, pz, c, (r, r * 0.8, r)) < 0
            hu = np.where(inside, F32(self.hu_mean - 32.0), hu)
        for c, r in self.swirls:  # rounded iso/hypodense foci
            inside = ellipsoid_sdf(px, py, pz, c, (r, r, r)) < 0
            hu = np.where(inside, F32(self.hu_mean - 20.0), hu)
        return hu

    def scaled_to(self, volume_ml: float) -> LesionSpec:
        """The same clot scaled to an (unclipped) volume."""
        s = (volume_ml * 1000.0 / self.unit_volume_mm3) ** (1 / 3)
        return replace(self, scale_mm=float(s))


UNIT_STEP = 0.06


def unit_inside_points(spec: LesionSpec, step: float = UNIT_STEP) -> np.ndarray:
    """Unit-frame lattice points inside the shape, (N, 3); N * step**3 is its unit volume."""
    ax = np.arange(-2.0, 2.0 + 1e-9, step, dtype=F32)
    px, py, pz = np.meshgrid(ax, ax, ax, indexing="ij")
    inside = spec.unit_sdf(px, py, pz) < 0
    return np.stack([px[inside], py[inside], pz[inside]], axis=1)


def sample_lesion(
    rng: np.random.Generator, anat: AnatomyParams, *, site: str, volume_ml: float, markers: Markers, ivh: bool
) -> LesionSpec:
    """Draw the shape, position and density of one haematoma of the requested volume."""
    site = canonical_site(site)
    side = int(rng.choice([-1, 1]))
    irr = markers.irregularity
    n_lobes = 1 + int(round(irr * 3 + rng.uniform(-0.4, 0.4)))
    lobes = [((0.0, 0.0, 0.0), tuple(rng.uniform(0.75, 1.15, 3) * np.array([1.0, 1.25, 0.9])))]
    for _ in range(n_lobes - 1):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        lobes.append((tuple(d * rng.uniform(0.45, 0.75)), tuple(rng.uniform(0.35, 0.6, 3))))
    sats = []
    for _ in range(rng.poisson(2.5 * irr)):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        sats.append((tuple(d * rng.uniform(1.25, 1.6)), float(rng.uniform(0.1, 0.2))))
    swirls = []
    if markers.swirl_sign:
        for _ in range(int(rng.integers(2, 4))):
            d = rng.normal(size=3)
            swirls.append(
                (tuple(d / np.linalg.norm(d) * rng.uniform(0.1, 0.4)), float(rng.uniform(0.14, 0.22)))
            )
    bh = None
    if markers.black_hole_sign:
        d = rng.normal(size=3)
        bh = (tuple(d / np.linalg.norm(d) * rng.uniform(0.0, 0.2)), float(rng.uniform(0.25, 0.35)))
    bn = rng.normal(size=3)
    spec = LesionSpec(
        site=site,
        side=side,
        lobe=None,
        centre_mm=np.zeros(3),
        rot=rotation(*rng.uniform(-180, 180, 3)),
        lobes=tuple(lobes),
        satellites=tuple(sats),
        rough=Waves.random(rng, 8, 2.2),
        rough_amp=0.04 + 0.16 * irr,
        texture=Waves.random(rng, 8, 0.7),
        markers=markers,
        hu_mean=float(rng.uniform(62.0, 78.0)),
        blend_normal=bn / np.linalg.norm(bn),
        black_hole=bh,
        swirls=tuple(swirls),
        oedema_hu=float(rng.uniform(16.0, 23.0)),
        oedema_frac=float(rng.uniform(0.12, 0.3)),
        unit_volume_mm3=1.0,
        ivh=ivh,
        ivh_depth_mm=(float(rng.uniform(10, 25)), float(rng.uniform(0, 10))),
        ivh_hu=float(rng.uniform(58, 72)),
    )
    pts = unit_inside_points(spec)
    spec = replace(spec, unit_volume_mm3=float(len(pts) * UNIT_STEP**3))
    # a temporal clot sits close to two cortical surfaces (lateral and inferior): cortical only
    lobes_ok = list(LOBES) if site == "lobar" else ["frontal", "parietal", "occipital"]
    lobe = str(rng.choice(lobes_ok)) if site.startswith("lobar") else None
    jitter = rng.normal(0, 1.0, 3)
    target_ml = min(volume_ml, SITE_MAX_ML[site])
    unclipped_ml = target_ml
    # The clot is clipped to brain parenchyma (a lobar clot breaches the cortex, a deep one
    # may touch a ventricle): re-scale until the clipped volume hits the target.
    for _ in range(3):
        spec = spec.scaled_to(unclipped_ml)
        centre = _site_centre(anat, site, side, lobe, spec, jitter) * np.asarray(anat.scale)
        spec = replace(spec, lobe=lobe, centre_mm=centre)
        h = centre[None, :] + (pts * spec.scale_mm) @ spec.rot.T
        kept = float(np.mean(in_parenchyma(anat, *(h[:, a].astype(F32) for a in range(3)))))
        unclipped_ml = target_ml / max(kept, 0.3)
    return spec


def _site_centre(
    anat: AnatomyParams, site: str, side: int, lobe: str | None, spec: LesionSpec, jitter: np.ndarray
) -> np.ndarray:
    """Centre (canonical mm) for a site; lobar clots are placed by depth below the cortex."""
    j = jitter * 1.5
    fixed = {
        "basal_ganglia": (23, -2, -1),
        "thalamus": (12, 10, 2),
        "cerebellar": (22, 52, -56),
        "brainstem": (3, 19, -42),
    }
    if site in fixed:
        c = np.array(fixed[site], dtype=np.float64) + j
        c[0] *= side
        return c
    if lobe is None:
        raise ValueError(f"site {site!r} needs a lobe")
    u = np.array(LOBES[lobe], dtype=np.float64) + 0.08 * jitter
    u[0] *= side
    u /= np.linalg.norm(u)
    semi, centre = np.array([68.0, 85.0, 59.0]), np.array([0.0, 0.0, 5.0])
    t = 1.0 / np.linalg.norm(u / semi)  # distance from centre to the cavity surface along u
    surface_depth = anat.csf_gap_mm
    if site == "lobar":  # the clot breaches the cortex (clipped at the brain surface)
        depth = surface_depth + 0.55 * spec.r_eq_mm + 1.0
    else:  # keep the whole clot below the deepest sulci
        depth = (
            surface_depth
            + anat.sulcal_depth_mm
            + anat.gm_thickness_mm
            + 6.0
            + 1.25 * spec.r_eq_mm * _max_radius_ratio(spec)
        )
    depth = min(float(depth), float(t) - 12.0)
    return centre + u * (t - depth)


def _max_radius_ratio(spec: LesionSpec) -> float:
    """How far the unit shape (without satellites) reaches, relative to its equivalent radius."""
    reach = max(np.linalg.norm(c) + max(s) for c, s in spec.lobes)
    r_unit = (3 * spec.unit_volume_mm3 / (4 * np.pi)) ** (1 / 3)
    return float(reach / r_unit)


@dataclass(frozen=True)
class MassEffect:
    """Radial displacement of brain tissue away from a large clot (volume-conserving push).

    Tissue at radius ``r`` is sampled from radius ``cbrt(r**3 - f * R**3 * taper(r))``; the
    taper vanishes at ``3 R`` so that distant brain, and the skull, stay in place.
    """

    centre_mm: np.ndarray
    radius_mm: float
    fraction: float

    @classmethod
    def for_lesion(cls, spec: LesionSpec) -> MassEffect | None:
        volume_ml = spec.unit_volume_mm3 * spec.scale_mm**3 / 1000.0
        if volume_ml < 15.0:
            return None
        return cls(spec.centre_mm, spec.r_eq_mm, float(min(0.6, 0.6 * (volume_ml - 15.0) / 45.0)))

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c, big_r, f = self.centre_mm, F32(self.radius_mm), F32(self.fraction)
        dx, dy, dz = x - F32(c[0]), y - F32(c[1]), z - F32(c[2])
        r = np.sqrt(dx * dx + dy * dy + dz * dz) + F32(1e-3)
        taper = np.clip(1 - ((r - big_r) / (2 * big_r)) ** 2, 0, 1) * (r < 3 * big_r)
        taper = np.where(r < big_r, F32(1.0), taper)
        r_src = np.cbrt(np.maximum(r**3 - f * big_r**3 * taper, 0))
        k = (r_src / r).astype(F32)
        return F32(c[0]) + dx * k, F32(c[1]) + dy * k, F32(c[2]) + dz * k
