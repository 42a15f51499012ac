"""Analytic head anatomy in Hounsfield units (the non-lesion part of the phantom).

Each structure is an approximate signed distance function in a *canonical* head frame (the
physical head frame divided by the per-patient head scale), painted back to front: a later
structure replaces an earlier one by its occupancy (partial volume), so nested structures mix at
their boundaries as they do in a real voxel. Intracranial structures may be sampled through a
mass-effect warp; skull and scalp never move.

Tissue classes and HU values are documented in docs/synthetic-data.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np

from .lattice import (
    F32,
    Lattice,
    Waves,
    capsule_sdf,
    ellipsoid_sdf,
    occupancy,
    rotation,
    smooth_min,
)


class Warp(Protocol):
    """A displacement of tissue around a centre (``lesion.MassEffect``): maps sample points."""

    @property
    def centre_mm(self) -> np.ndarray: ...

    @property
    def radius_mm(self) -> float: ...

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class Tissue(IntEnum):
    """Tissue class of a sample (the structure painted last with occupancy > 0.5)."""

    AIR = 0
    SOFT = 1  # scalp, muscle, face
    FAT = 2
    CORTICAL_BONE = 3
    DIPLOE = 4
    CSF = 5  # subarachnoid space, sulci, fissures, cisterns
    CORTEX = 6  # cortical grey matter
    WHITE_MATTER = 7
    DEEP_GREY = 8  # caudate, lentiform nucleus, thalamus
    VENTRICLE = 9
    DURA = 10  # falx, tentorium
    CALCIFICATION = 11  # pineal, choroid plexus, falx, basal ganglia
    CEREBELLUM = 12
    BRAINSTEM = 13
    SINUS_AIR = 14
    GLOBE = 15
    CHOROID = 16
    VENOUS_SINUS = 17  # dural venous sinuses: flowing blood, a haemorrhage mimic on every scan


PARENCHYMA = (Tissue.CORTEX, Tissue.WHITE_MATTER, Tissue.DEEP_GREY, Tissue.CEREBELLUM, Tissue.BRAINSTEM)


@dataclass(frozen=True)
class Calcification:
    """A physiological calcification (a false-positive trap for haemorrhage detectors)."""

    name: str
    centre: tuple[float, float, float]  # canonical head frame, mm
    radius_mm: float
    hu: float


@dataclass(frozen=True)
class AnatomyParams:
    """Per-patient anatomy: drawn once from the seed, shared by baseline and follow-up."""

    scale: tuple[float, float, float]  # head size and asymmetry, per axis
    atrophy: float  # 0 (young) to about 1 (old): widens sulci, gaps and ventricles
    ventricle_scale: float
    csf_gap_mm: float
    sulcal_depth_mm: float
    sulcal_width: float  # in units of the unit-variance folding field
    gm_thickness_mm: float
    skull_thickness_mm: float
    scalp_thickness_mm: float
    midline_bend_mm: float
    hu: dict[str, float]
    calcifications: tuple[Calcification, ...]
    gyri: Waves
    skull_waves: Waves
    venous_hu: float = 52.0

    @classmethod
    def sample(cls, rng: np.random.Generator, *, age_y: float, sex: str) -> AnatomyParams:
        """Draw an anatomy; older patients get more atrophy (wider CSF spaces)."""
        s = rng.normal(1.0, 0.035) * (1.03 if sex == "M" else 0.98)
        scale = (s * rng.uniform(0.96, 1.03), s * rng.uniform(0.97, 1.03), s * rng.uniform(0.97, 1.03))
        atrophy = float(np.clip((age_y - 45.0) / 45.0 * rng.uniform(0.6, 1.3), 0.0, 1.2))
        hu = {
            "cortex": rng.uniform(37.0, 42.0),
            "white_matter": rng.uniform(24.0, 28.5),
            "deep_grey": rng.uniform(35.5, 40.0),
            "csf": rng.uniform(3.0, 10.0),
            "cortical_bone": rng.uniform(1550.0, 1750.0),
            "diploe": rng.uniform(750.0, 950.0),
            "soft": rng.uniform(30.0, 45.0),
            "fat": rng.uniform(-100.0, -70.0),
            "dura": rng.uniform(42.0, 50.0),
            "cerebellum": rng.uniform(36.0, 41.0),
            "brainstem": rng.uniform(30.0, 35.0),
        }
        calcs: list[Calcification] = []
        if rng.random() < 0.65:
            calcs.append(
                Calcification("pineal", (0.0, 22.0, -3.0), rng.uniform(2.5, 3.5), rng.uniform(250, 450))
            )
        if rng.random() < 0.7:  # choroid plexus glomus, usually bilateral
            r, h = rng.uniform(2.5, 3.5), rng.uniform(180, 350)
            for side in (-1, 1):
                calcs.append(
                    Calcification(
                        f"choroid_plexus_{'R' if side < 0 else 'L'}", (side * 19.0, 27.0, 10.0), r, h
                    )
                )
        if rng.random() < 0.15:
            calcs.append(Calcification("falx", (0.0, rng.uniform(-30, 30), 45.0), 2.5, rng.uniform(300, 600)))
        if rng.random() < 0.08:
            for side in (-1, 1):
                calcs.append(
                    Calcification(
                        f"globus_pallidus_{'R' if side < 0 else 'L'}",
                        (side * 18.0, -2.0, -2.0),
                        2.5,
                        rng.uniform(140, 220),
                    )
                )
        gyri = Waves.random(rng, 12, 26.0)
        skull_waves = Waves.random(rng, 6, 70.0)
        # Drawn last so that every earlier draw (and so every older phantom) stays the same.
        # Venous blood is 40-60 HU (haematocrit-dependent); up to ~65 in dehydration.
        venous_hu = float(rng.uniform(44.0, 64.0))
        return cls(
            scale=tuple(float(v) for v in scale),  # type: ignore[arg-type]
            atrophy=atrophy,
            ventricle_scale=float((1.0 + 0.7 * atrophy) * rng.uniform(0.85, 1.2)),
            csf_gap_mm=float(1.0 + 2.5 * atrophy),
            sulcal_depth_mm=float(9.0 + 4.0 * atrophy),
            sulcal_width=float(0.12 + 0.12 * atrophy),
            gm_thickness_mm=float(rng.uniform(2.4, 3.0)),
            skull_thickness_mm=float(rng.uniform(5.5, 7.5)),
            scalp_thickness_mm=float(rng.uniform(4.0, 6.0)),
            midline_bend_mm=float(rng.uniform(-2.0, 2.0)),
            hu={k: float(v) for k, v in hu.items()},
            calcifications=tuple(calcs),
            gyri=gyri,
            skull_waves=skull_waves,
            venous_hu=venous_hu,
        )


def lateral_ventricle_parts(vs: float, side: int):
    """Ellipsoids (centre, semi-axes; canonical mm) of one lateral ventricle (side -1 = right)."""
    s = side
    return [
        ((s * (1.5 + 5 * vs), -8, 16), (5 * vs, 30, 7 * vs)),
        ((s * (8 + 4 * vs), 12, 14), (6 * vs, 14, 7 * vs)),
        ((s * (16 + 3 * vs), 26, 10), (7 * vs, 11, 9 * vs)),
        ((s * 20, 40, 6), (4 * vs, 12, 5 * vs)),
        ((s * 30, 0, -16), (3 * vs, 14, 3 * vs)),
    ]


def floor_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the cranial-fossa floor / tentorium: higher anteriorly and at the midline."""
    return F32(-28.0) - F32(0.14) * y - F32(0.003) * x * x


def cavity_sdf(x, y, z) -> np.ndarray:
    """Inner table of the skull (canonical mm): smooth union of cerebrum, cerebellum, brainstem."""
    fz = floor_z(x, y)
    cerebrum = np.maximum(ellipsoid_sdf(x, y, z, (0, 0, 5), (68, 85, 59)), fz - z)
    cerebellum = np.maximum(ellipsoid_sdf(x, y, z, (0, 50, -54), (51, 31, 22)), z - (fz - 2.5))
    stem = np.minimum(
        capsule_sdf(x, y, z, (0, 14, -14), (0, 26, -80), 12.5),
        ellipsoid_sdf(x, y, z, (0, 19, -40), (18, 15, 15)),
    )
    return smooth_min(smooth_min(cerebrum, cerebellum, 8.0), stem, 8.0)


def in_parenchyma(p: AnatomyParams, x, y, z) -> np.ndarray:
    """Whether physical head-frame points lie in brain (not outside it, not in a ventricle).

    Used to size a haematoma before rendering; rendering itself clips by the painted tissue.
    """
    cx, cy, cz = x / F32(p.scale[0]), y / F32(p.scale[1]), z / F32(p.scale[2])
    inside = cavity_sdf(cx, cy, cz) + F32(p.csf_gap_mm) < 0
    for s in (-1, 1):
        for c, r in lateral_ventricle_parts(p.ventricle_scale, s):
            inside &= ellipsoid_sdf(cx, cy, cz, c, r) > 0
    return inside


def _interp2(sub: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear interpolation of samples taken at even indices back to ``n`` samples."""
    sub = np.moveaxis(sub, axis, -1)
    out = np.empty(sub.shape[:-1] + (n,), dtype=sub.dtype)
    out[..., 0::2] = sub
    m = n // 2  # odd indices 1, 3, ..., up to n - 1
    right = sub[..., 1 : m + 1]
    if right.shape[-1] < m:  # last odd sample lies past the last even one: extrapolate
        right = np.concatenate([right, 2 * sub[..., -1:] - sub[..., -2:-1]], axis=-1)
    out[..., 1::2] = F32(0.5) * (sub[..., :m] + right)
    return np.moveaxis(out, -1, axis)


class Painter:
    """Paints the anatomy onto a lattice: ``hu`` (float32) and ``tissue`` (int8)."""

    def __init__(
        self,
        p: AnatomyParams,
        lat: Lattice,
        *,
        ramp_mm: float,
        warp: Warp | None = None,
        want_hu: bool = True,
    ) -> None:
        self.p, self.lat, self.ramp = p, lat, ramp_mm
        self.want_hu = want_hu
        self.S = np.asarray(p.scale, dtype=float)
        x, y, z = lat.xyz()
        self.u = (x / F32(self.S[0]), y / F32(self.S[1]), z / F32(self.S[2]))
        self.w, self.warp_box = self.u, None
        wbox = lat.region(warp.centre_mm, 3 * warp.radius_mm) if warp is not None else None
        if warp is not None and wbox is not None:  # tissue moves only within 3 radii of the clot
            self.warp_box = wbox
            moved = warp(x[wbox], y[wbox], z[wbox])
            self.w = tuple(a.copy() for a in self.u)
            for a in range(3):
                self.w[a][wbox] = moved[a] / F32(self.S[a])
        self.hu = np.full(lat.shape, -1000.0, dtype=F32) if want_hu else None
        self.tissue = np.zeros(lat.shape, dtype=np.int8)

    def smooth(self, fn, warped: bool) -> np.ndarray:
        """Evaluate a smooth field at every other in-plane sample and interpolate linearly.

        Distance fields of large structures and the folding field vary slowly, so this costs a
        quarter of a full evaluation while edges stay sharp (the ramp is applied afterwards).
        """
        src = self.w if warped else self.u
        _, nj, ni = self.lat.shape
        if nj < 48 or ni < 48:
            return fn(*src)
        sub = fn(*(a[:, ::2, ::2] for a in src))
        return _interp2(_interp2(sub, 1, nj), 2, ni)

    # -- primitives -------------------------------------------------------------------------
    def box(self, centre, radius_mm):
        """Lattice box around a canonical box (half-sides ``radius_mm``), with margins for the
        ramp and for mass-effect displacement."""
        c = np.asarray(centre, dtype=float) * self.S
        margin = 2.0 * self.ramp + (12.0 if self.warp_box is not None else 1.0)
        return self.lat.region(c, np.asarray(radius_mm, dtype=float) * self.S + margin)

    def coords(self, box, warped: bool):
        src = self.w if warped else self.u
        return src if box is None else tuple(a[box] for a in src)

    def put(self, box, sdf: np.ndarray, tissue: Tissue, value: float | np.ndarray) -> None:
        """Replace what is below by ``value`` in proportion to occupancy (partial volume)."""
        b = box if box is not None else (slice(None),) * 3
        occ = occupancy(sdf, self.ramp)
        if self.hu is not None:
            h = self.hu[b]
            target = value if isinstance(value, np.ndarray) else F32(value)
            h += (target - h) * occ
        t = self.tissue[b]
        t[occ > 0.5] = int(tissue)

    def ellipsoid(self, tissue, value, centre, semi, *, rot=None, warped=True) -> None:
        box = self.box(centre, max(semi) if rot is not None else semi)
        if box is None:
            return
        x, y, z = self.coords(box, warped)
        self.put(box, ellipsoid_sdf(x, y, z, centre, semi, rot), tissue, value)

    # -- anatomy ----------------------------------------------------------------------------
    def paint(
        self, *, beam_hardening_hu: float = 0.0, intracranial_only: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Paint every structure; returns ``(hu, tissue)`` on the lattice.

        ``intracranial_only`` skips scalp, skull and face (outside stays AIR): enough to know
        which tissue a haematoma sample replaces.
        """
        hu = self.p.hu
        cav_u = self.smooth(cavity_sdf, warped=False)
        cav_w = cav_u
        if self.warp_box is not None:
            cav_w = cav_u.copy()
            cav_w[self.warp_box] = cavity_sdf(*(a[self.warp_box] for a in self.w))
        if not intracranial_only:
            self._extracranial(cav_u)
        # intracranial CSF, then brain parenchyma with gyral folding
        self.put(None, cav_u, Tissue.CSF, hu["csf"])
        self._cortex(cav_w, cav_u)
        self._deep_structures()
        self._csf_spaces(cav_w)
        self._venous_sinuses(cav_u)
        self._calcifications()
        if not intracranial_only:
            self._petrous()
        if self.want_hu and beam_hardening_hu:
            # residual beam hardening: a faint hyperdense band along the inner table
            inside = occupancy(cav_u, self.ramp)
            self.hu += F32(beam_hardening_hu) * np.exp(np.minimum(cav_u, 0) / F32(4.0)) * inside
        return self.hu, self.tissue

    def _extracranial(self, cav_u) -> None:
        p, hu = self.p, self.p.hu
        ux, uy, uz = self.u
        t_skull = F32(p.skull_thickness_mm) * (
            F32(1.0) + F32(0.12) * self.smooth(p.skull_waves, warped=False)
        )
        t_skull = t_skull + F32(2.5) * (uz < F32(-20.0))  # thicker occiput and skull base
        temporalis = F32(6.0) * np.clip(1 - ((uz + 5) / 30) ** 2, 0, 1) * np.minimum(np.abs(ux) / 70, 1) ** 4
        outer = t_skull + F32(p.scalp_thickness_mm) + temporalis
        # scalp and the lower face / skull-base block
        self.put(None, cav_u - outer, Tissue.SOFT, hu["soft"])
        self.ellipsoid(Tissue.SOFT, hu["soft"], (0, -12, -58), (66, 92, 36), warped=False)
        self.put(None, np.maximum(cav_u - t_skull - 2.4, t_skull + 1.0 - cav_u), Tissue.FAT, hu["fat"])
        # skull: cortical tables with diploe between; thick mixed bone at the skull base
        self.put(None, np.maximum(-cav_u, cav_u - t_skull), Tissue.CORTICAL_BONE, hu["cortical_bone"])
        bb = self.box((0, -12, -58), (60, 84, 30))
        if bb is not None:
            base = np.maximum(ellipsoid_sdf(*self.coords(bb, False), (0, -12, -58), (60, 84, 30)),  # type: ignore[call-arg]
                              -cav_u[bb])
            self.put(
                bb,
                np.maximum(base, cav_u[bb] - t_skull[bb] - 4.0),
                Tissue.CORTICAL_BONE,
                hu["cortical_bone"] * 0.8,
            )
        self.put(
            None, np.maximum(F32(1.6) - cav_u, cav_u - (t_skull - F32(1.6))), Tissue.DIPLOE, hu["diploe"]
        )
        self._face()

    def _cortex(self, cav_w, cav_u) -> None:
        p, hu = self.p, self.p.hu
        brain = cav_w + F32(p.csf_gap_mm)
        n = self.smooth(p.gyri, warped=True)
        fold = F32(p.sulcal_depth_mm) * np.exp(-((n / F32(p.sulcal_width)) ** 2))
        depth = -brain - fold  # depth below the folded cortical surface
        # intersect with the unwarped cavity: mass effect must not push brain into the skull
        self.put(None, np.maximum(-depth, cav_u), Tissue.CORTEX, hu["cortex"])
        self.put(
            None, np.maximum(F32(p.gm_thickness_mm) - depth, cav_u), Tissue.WHITE_MATTER, hu["white_matter"]
        )

    def _deep_structures(self) -> None:
        p, hu, vs = self.p, self.p.hu, self.p.ventricle_scale
        for s in (-1, 1):
            self.ellipsoid(Tissue.DEEP_GREY, hu["deep_grey"], (s * (8 + 5 * vs), -14, 10), (5, 9, 8))
            self.ellipsoid(Tissue.DEEP_GREY, hu["deep_grey"], (s * 23, -2, -2), (6, 15, 10))
            self.ellipsoid(Tissue.DEEP_GREY, hu["deep_grey"], (s * 11, 10, 0), (9, 14, 9))
        # cerebellum (mostly grey, white core) and brainstem
        c = (0, 50, -54)
        box = self.box(c, (51, 31, 22))
        if box is not None:
            x, y, z = self.coords(box, True)
            sdf = np.maximum(ellipsoid_sdf(x, y, z, c, (51, 31, 22)), z - (floor_z(x, y) - 2.5))
            self.put(box, sdf + F32(p.csf_gap_mm + 2.5), Tissue.CEREBELLUM, hu["cerebellum"])
        self.ellipsoid(Tissue.WHITE_MATTER, hu["white_matter"] + 2, (0, 46, -54), (17, 12, 9))
        box = self.box((0, 20, -47), (18, 15, 34))
        if box is not None:
            x, y, z = self.coords(box, True)
            stem = np.minimum(
                capsule_sdf(x, y, z, (0, 14, -14), (0, 26, -80), 12.5),
                ellipsoid_sdf(x, y, z, (0, 19, -40), (18, 15, 15)),
            )
            self.put(box, stem + F32(p.csf_gap_mm), Tissue.BRAINSTEM, hu["brainstem"])
            # perimesencephalic and prepontine cisterns hug the brainstem
            ring = np.maximum.reduce(
                [stem - F32(2.5 + 2 * p.atrophy), -stem - F32(0.5), np.abs(z + F32(22)) - F32(10)]
            )
            self.put(box, ring, Tissue.CSF, hu["csf"])

    def _csf_spaces(self, cav_w) -> None:
        p, hu, vs, a = self.p, self.p.hu, self.p.ventricle_scale, self.p.atrophy
        wx, wy, wz = self.w
        # interhemispheric fissure and falx, down to the corpus callosum in the middle
        xm = F32(p.midline_bend_mm) * (1 - (wy / F32(90)) ** 2)
        floor = F32(24.0) - F32(54.0) / (1 + np.exp(-(np.abs(wy) - F32(40)) / F32(4)))
        dx = np.abs(wx - xm)
        self.put(None, np.maximum.reduce([dx - F32(1.2 + 2 * a), floor - wz, cav_w]), Tissue.CSF, hu["csf"])
        self.put(None, np.maximum.reduce([dx - F32(0.5), floor + 2 - wz, cav_w]), Tissue.DURA, hu["dura"])
        # tentorium: a dural sheet between cerebrum and cerebellum
        box = self.box((0, 45, -40), (65, 45, 25))
        if box is not None:
            x, y, z = self.coords(box, True)
            sheet = np.maximum.reduce(
                [np.abs(z - (floor_z(x, y) - F32(1.2))) - F32(0.6), F32(-2.0) - y, cav_w[box]]
            )
            self.put(box, sheet, Tissue.DURA, hu["dura"])
        for s in (-1, 1):  # Sylvian fissures
            self.ellipsoid(
                Tissue.CSF,
                hu["csf"],
                (s * 47, -8, -6),
                (16, 24, 2.5 + 2 * a),
                rot=rotation(pitch_deg=-15, yaw_deg=s * 10),
            )
        self.ellipsoid(Tissue.CSF, hu["csf"], (0, -8, -28), (12, 8, 5))  # suprasellar
        self.ellipsoid(Tissue.CSF, hu["csf"], (0, 30, -12), (8, 6, 6))  # quadrigeminal
        # ventricles: lateral (frontal horn+body, atrium, occipital and temporal horns), 3rd, 4th
        for s in (-1, 1):
            parts = lateral_ventricle_parts(vs, s)
            box = self.box((s * 17, 10, 0), (17, 45, 25))
            if box is not None:
                x, y, z = self.coords(box, True)
                sdf = np.minimum.reduce([ellipsoid_sdf(x, y, z, c, r) for c, r in parts])
                self.put(box, sdf, Tissue.VENTRICLE, hu["csf"] - 2)
            self.ellipsoid(Tissue.CHOROID, 32.0, (s * 19, 27, 10), (4, 5, 3))
        self.ellipsoid(Tissue.VENTRICLE, hu["csf"] - 2, (0, 6, -6), (1.5 * vs + 0.5, 13, 9))
        self.ellipsoid(Tissue.VENTRICLE, hu["csf"] - 2, (0, 32, -50), (6, 4, 6))

    def _venous_sinuses(self, cav_u) -> None:
        """Superior sagittal, transverse and straight sinuses: tubes of venous blood that lie
        against the inner table (and along the falx-tentorium junction), fixed to the skull."""
        p = self.p
        x, y, z = self.u
        depth = -cav_u  # mm inside the inner table
        fz = floor_z(x, y)
        xm = x - F32(p.midline_bend_mm)
        r = F32(3.5)  # radius; the tube touches the inner table
        sss = np.sqrt(xm * xm + (depth - r) ** 2) - r
        sss = np.maximum.reduce([sss, fz + F32(4.0) - z, F32(-60.0) - y])
        r_t = F32(3.0)
        transverse = np.sqrt((z - (fz - F32(1.2))) ** 2 + (depth - r_t) ** 2) - r_t
        transverse = np.maximum(transverse, F32(40.0) - y)
        self.put(None, np.minimum(sss, transverse), Tissue.VENOUS_SINUS, p.venous_hu)
        box = self.box((0, 46, -18), (4, 18, 20))
        if box is not None:
            bx, by, bz = self.coords(box, False)
            straight = capsule_sdf(bx, by, bz, (0, 32, -2), (0, 60, -33), 2.5)
            self.put(box, straight, Tissue.VENOUS_SINUS, p.venous_hu)

    def _calcifications(self) -> None:
        for c in self.p.calcifications:
            r = c.radius_mm
            semi = (0.8, 6.0, 3.0) if c.name == "falx" else (r, r, r)
            self.ellipsoid(Tissue.CALCIFICATION, c.hu, c.centre, semi)

    def _face(self) -> None:
        hu = self.p.hu
        self.ellipsoid(Tissue.SINUS_AIR, -950, (0, -22, -54), (13, 11, 9), warped=False)
        self.ellipsoid(Tissue.SINUS_AIR, -950, (0, -84, -8), (12, 5, 9), warped=False)
        for s in (-1, 1):
            self.ellipsoid(Tissue.FAT, hu["fat"], (s * 30, -66, -40), (16, 22, 15), warped=False)
            self.ellipsoid(Tissue.GLOBE, 12.0, (s * 32, -79, -40), (12, 12, 12), warped=False)
            self.ellipsoid(Tissue.SINUS_AIR, -950, (s * 10, -52, -46), (5, 14, 8), warped=False)

    def _petrous(self) -> None:
        hu = self.p.hu
        for s in (-1, 1):
            rot = rotation(yaw_deg=s * 40)
            self.ellipsoid(
                Tissue.CORTICAL_BONE,
                hu["cortical_bone"] + 150,
                (s * 30, 16, -50),
                (24, 8, 8),
                rot=rot,
                warped=False,
            )
            self.ellipsoid(Tissue.SINUS_AIR, -700, (s * 48, 26, -56), (9, 11, 9), warped=False)
