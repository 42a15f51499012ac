"""The follow-up comparison key image: baseline and follow-up side by side, with the change.

Inputs: the follow-up's source CT instances (headers), its :class:`~dicomnode.domain.CTVolume`
and :class:`~dicomnode.domain.LabelMap`, and the baseline's
:class:`~dicomnode.domain.ComparedPrior` (the comparison, the baseline resampled onto the
follow-up's key slice by the compare stage, the expansion risk predicted on the baseline).
Outputs: one RGB Secondary Capture dataset (PS3.3 A.8.1) in a series of its own, Modality OT
like the summary key image (a rendered page without plane geometry), in the follow-up's study.
Side effects: none.

Layout (768 x 1024): the baseline on the follow-up's key slice on the left, the follow-up on
the right, each 512 x 512 in a brain window with its own outlines (ICH red, IVH cyan, as on the
other overlays); the baseline's ICH outline is repeated in magenta on the follow-up, so that
growth shows as the red ring outside the magenta one. Below: volumes at both time points,
change (mL and %), interval, the expansion finding and its definition, the expansion risk
predicted at baseline, the registration's trust and, where a model was fit on synthetic data,
that notice.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

import dicomnode
from dicomnode.domain import ICH, IVH, ComparedPrior, Comparison, CTVolume, LabelMap

from .overlay import _base, _reference
from .preview import (
    AMBER,
    BRAIN_WINDOW_HU,
    GREY,
    NOT_FOR_DIAGNOSIS,
    STYLE,
    SYNTHETIC_NOTE,
    WHITE,
    _fit,
    _legend,
    burn_outlines,
    outline,
    window,
)
from .text import draw_text, font, line_height
from .uids import instance_uid, series_uid

__all__ = ["COMPARISON_SIZE", "PRIOR_ICH_COLOUR", "build_comparison_image", "comparison_lines",
           "render_comparison"]

COMPARISON_SIZE = (768, 1024)  # rows, columns: two 512 x 512 panels above the text
PANEL_PX = 512
PRIOR_ICH_COLOUR = (255, 0, 255)  # the baseline's ICH outline drawn on the follow-up
CAPTION_PX, TEXT_PX = 18, 16
TEXT_TOP = PANEL_PX + 8
COLUMN_X = (12, PANEL_PX + 12)  # left edges of the two text columns


def _when(iso: str) -> str:
    return iso.replace("T", " ")[:16] if iso else "time unknown"


def comparison_lines(compared: ComparedPrior, labels: LabelMap, *, warnings: Sequence[str] = ()
                     ) -> tuple[list[tuple[str, tuple[int, int, int]]],
                                list[tuple[str, tuple[int, int, int]]]]:
    """The text of the comparison image as two columns of (line, colour): the numbers, then
    the findings, the risk at baseline, the registration and the notices."""
    c = compared.comparison
    pct = f"{c.ich_change_pct:+.1f} %" if c.ich_change_pct is not None else "n/a (no ICH before)"
    interval = f"{c.interval_h:.1f} h" if c.interval_h is not None else "unknown"
    left: list[tuple[str, tuple[int, int, int]]] = [
        (f"{'':10}{'baseline':>9}{'follow-up':>10}{'change':>10}", GREY),
        *[(f"{name:10}{before:9.1f}{after:10.1f}{change:+10.1f}", WHITE)
          for name, before, after, change in (
              ("ICH mL", c.prior_ich_volume_ml, c.ich_volume_ml, c.ich_change_ml),
              ("IVH mL", c.prior_ivh_volume_ml, c.ivh_volume_ml, c.ivh_change_ml),
              ("Oedema mL", c.prior_oedema_volume_ml, c.oedema_volume_ml, c.oedema_change_ml))],
        (f"ICH change {pct}", WHITE),
        (f"Interval   {interval}", WHITE),
        (f"New IVH    {'yes' if c.new_ivh else 'no'}", WHITE),
    ]
    right: list[tuple[str, tuple[int, int, int]]] = [
        (f"Haematoma expansion: {'YES' if c.expansion else 'no'}", AMBER if c.expansion else WHITE),
        (f"({c.definition})", GREY),
        (_risk_line(compared), WHITE),
        _registration_line(c),
    ]
    notices = [NOT_FOR_DIAGNOSIS] + ([SYNTHETIC_NOTE] if _synthetic(compared, labels) else [])
    right += [(text, AMBER) for text in [*notices, *warnings]]
    model = f"Model: {labels.model} {labels.model_version}".rstrip()
    right.append((model, GREY))
    return left, right


def _synthetic(compared: ComparedPrior, labels: LabelMap) -> bool:
    risk = compared.he_risk
    return labels.synthetic_training or bool(risk is not None and risk.synthetic_training)


def _risk_line(compared: ComparedPrior) -> str:
    risk, c = compared.he_risk, compared.comparison
    if risk is not None:
        text = f"HE risk at baseline: {float(risk.probability):.0%} ({risk.model}"
        text += f" {risk.model_version})" if risk.model_version else ")"
        return text + (" [synthetic]" if risk.synthetic_training else "")
    if c.prior_he_probability is not None:
        return f"HE risk at baseline: {c.prior_he_probability:.0%}"
    return "HE risk at baseline: not predicted"


def _registration_line(c: Comparison) -> tuple[str, tuple[int, int, int]]:
    r = c.registration
    if r.trusted:
        return f"Registration trusted (brain correlation {r.correlation:.2f})", WHITE
    return f"REGISTRATION NOT TRUSTED: {r.message or 'failed'}", AMBER


def _panel(hu: np.ndarray, lab: np.ndarray, spacing_mm: tuple[float, float],
           prior_ich: np.ndarray | None = None) -> np.ndarray:
    """One 512 x 512 panel: the slice fitted, windowed, outlined (and the prior's ICH ring)."""
    hu_fit, lab_fit = _fit(hu, lab, spacing_mm, PANEL_PX)
    rgb = burn_outlines(window(hu_fit), lab_fit, thickness=2)
    if prior_ich is not None:
        _, prior_fit = _fit(hu, prior_ich.astype(np.uint8), spacing_mm, PANEL_PX)
        ring = outline(prior_fit.astype(bool), 1)
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        rgb[ring & grey] = PRIOR_ICH_COLOUR  # under the follow-up's own outlines
    out = np.zeros((PANEL_PX, PANEL_PX, 3), np.uint8)
    r0, c0 = (PANEL_PX - rgb.shape[0]) // 2, (PANEL_PX - rgb.shape[1]) // 2
    out[r0:r0 + rgb.shape[0], c0:c0 + rgb.shape[1]] = rgb
    return out


def render_comparison(volume: CTVolume, labels: LabelMap, compared: ComparedPrior, *,
                      warnings: Sequence[str] = (), footer: Sequence[str] = ()) -> np.ndarray:
    """The comparison key image (768 x 1024 RGB); needs ``compared.plane``.

    Raises
    ------
    ValueError
        ``compared`` has no prior plane.
    """
    plane = compared.plane
    if plane is None:
        raise ValueError("the comparison image needs the prior on the follow-up's key slice")
    c = compared.comparison
    z = plane.z
    hu = np.asarray(sitk.GetArrayViewFromImage(volume.image)[z])
    lab = np.asarray(sitk.GetArrayViewFromImage(labels.image)[z])
    sx, sy = volume.image.GetSpacing()[:2]
    prior_ich = plane.labels == ICH if plane.registered and plane.labels.shape == lab.shape else None
    rgb = np.zeros((*COMPARISON_SIZE, 3), np.uint8)
    rgb[:PANEL_PX, :PANEL_PX] = _panel(plane.hu, plane.labels, plane.spacing_mm)
    rgb[:PANEL_PX, PANEL_PX:] = _panel(hu, lab, (sy, sx), prior_ich)
    rgb[:PANEL_PX, PANEL_PX - 1:PANEL_PX + 1] = GREY  # the divider

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    _captions(draw, c, plane.registered, f"slice {z + 1} of {volume.image.GetSize()[2]}")
    left, right = comparison_lines(compared, labels, warnings=warnings)
    _columns(draw, (left, right + [(text, GREY) for text in footer]))
    _legends(draw)
    return np.array(img)


def _captions(draw: ImageDraw.ImageDraw, c: Comparison, registered: bool, where: str) -> None:
    """Each panel's title (scan and time) and subtitle (registration, slice)."""
    follow_time = ""
    if c.prior_study_datetime and c.interval_h is not None:
        follow_time = (dt.datetime.fromisoformat(c.prior_study_datetime)
                       + dt.timedelta(hours=c.interval_h)).isoformat()
    captions = ((f"Baseline {_when(c.prior_study_datetime)}",
                 "registered to the follow-up" if registered else "NOT REGISTERED: own key slice"),
                (f"Follow-up {_when(follow_time)}", where))
    for x, (title, sub) in zip(COLUMN_X, captions, strict=True):
        draw_text(draw, (x - 4, 6), title, WHITE, face="bold", size_px=CAPTION_PX)
        colour = AMBER if sub.startswith("NOT") else GREY
        draw_text(draw, (x - 4, 6 + line_height(CAPTION_PX)), sub, colour, size_px=CAPTION_PX - 4)


def _columns(draw: ImageDraw.ImageDraw,
             columns: Sequence[Sequence[tuple[str, tuple[int, int, int]]]]) -> None:
    """The text lines below the panels, monospaced, wrapped within each column."""
    step = line_height(TEXT_PX)
    bottom = COMPARISON_SIZE[0] - step - 10  # the legend's line stays free
    chars = int((PANEL_PX - 24) // font("mono", TEXT_PX).getlength("M"))
    for x, lines in zip(COLUMN_X, columns, strict=True):
        y = TEXT_TOP
        for text, colour in lines:
            for part in textwrap.wrap(text, chars, drop_whitespace=False) or [""]:
                if y + step > bottom:
                    break
                face = "mono-bold" if colour == AMBER else "mono"
                draw_text(draw, (x, y), part, colour, face=face, size_px=TEXT_PX)
                y += step


def _legends(draw: ImageDraw.ImageDraw) -> None:
    """ICH, IVH and the baseline's ICH ring, on the bottom line."""
    y = COMPARISON_SIZE[0] - line_height(TEXT_PX) - 6
    _legend(draw, [ICH, IVH], (COLUMN_X[0], y), TEXT_PX)
    _, top, _, bottom = (int(v) for v in font("sans", TEXT_PX).getbbox("H"))
    x = COLUMN_X[0] + 190  # after the ICH and IVH entries
    draw.rectangle((x, y + top, x + bottom - top - 1, y + bottom - 1), fill=PRIOR_ICH_COLOUR,
                   outline=(0, 0, 0))
    draw_text(draw, (x + bottom - top + TEXT_PX // 3, y), "baseline ICH on follow-up", WHITE,
              size_px=TEXT_PX)


def build_comparison_image(source_datasets: Sequence[Dataset], volume: CTVolume, labels: LabelMap,
                           compared: ComparedPrior, *, version: int, series_number: int = 9905,
                           created: dt.datetime | None = None,
                           warnings: Sequence[str] = ()) -> Dataset:
    """The comparison key image as a Secondary Capture dataset in a series of its own.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        The follow-up's source instances (patient, study; the key slice is referenced).
    volume, labels
        The follow-up, analysed.
    compared : ComparedPrior
        The comparison with the baseline and the baseline on the follow-up's key slice.
    version : int
        Result version; with the source series UID it fixes the UIDs.

    Raises
    ------
    ValueError
        No source datasets, a version below 1, or no prior plane.
    """
    if not source_datasets:
        raise ValueError("build_comparison_image needs the source datasets")
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    rgb = render_comparison(volume, labels, compared, warnings=warnings,
                            footer=[f"Result version {version}"])
    src_series = volume.series_instance_uid
    ds = _base(source_datasets[0], rgb, created or dt.datetime.now())
    ds.SOPInstanceUID = instance_uid(src_series, version, "comparison", 0)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid(src_series, version, "comparison")
    ds.SeriesNumber = series_number
    synthetic = " synthetic model" if _synthetic(compared, labels) else ""
    ds.SeriesDescription = f"ICH follow-up v{version}{synthetic} - {NOT_FOR_DIAGNOSIS}"[:64]
    ds.Modality = "OT"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    model = f"{labels.model} {labels.model_version}".strip() or "unknown"
    ds.SecondaryCaptureDeviceSoftwareVersions = [str(dicomnode.__version__), model]
    w, lvl = BRAIN_WINDOW_HU
    c = compared.comparison
    ds.DerivationDescription = (
        f"Follow-up comparison key image: baseline series {c.prior_series_instance_uid} resampled "
        f"by rigid registration onto the follow-up's key slice, beside it, brain window W{w:g} "
        f"L{lvl:g}, outlines ({', '.join(f'{STYLE[v][0]}' for v in (ICH, IVH))}, baseline ICH "
        "magenta) and the change as text")[:1024]
    left, right = comparison_lines(compared, labels, warnings=warnings)
    text = "; ".join(" ".join(t.split()) for t, _ in left[1:] + right if t)
    ds.ImageComments = f"{NOT_FOR_DIAGNOSIS}. Baseline {c.prior_series_instance_uid}. {text}"[:10240]
    key = _source_index(volume, compared.plane.z if compared.plane else 0)
    _reference(ds, volume, [key])
    return ds


def _source_index(volume: CTVolume, z: int) -> int:
    """The source plane nearest to slice ``z`` of ``volume.image`` (the same one unresampled)."""
    image = volume.image
    if not volume.resampled and image.GetSize()[2] == len(volume.slices):
        return int(z)
    nx, ny, _ = image.GetSize()
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint((nx / 2, ny / 2, float(z))))
    ori = np.asarray(volume.orientation, np.float64)
    normal = np.cross(ori[:3], ori[3:])
    offsets = [abs(float(np.dot(np.asarray(s.position_mm) - centre, normal))) for s in volume.slices]
    return int(np.argmin(offsets))
