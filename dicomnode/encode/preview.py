"""Burned-in pictures of a result: outlined slices, a summary key image, and PNG previews.

Inputs: a :class:`~dicomnode.domain.CTVolume` (HU), its :class:`~dicomnode.domain.LabelMap`,
the :class:`~dicomnode.domain.Measurements` and optional predictions. Outputs: RGB arrays
(used by :mod:`dicomnode.encode.overlay` for the Secondary Capture series) and PNG files for the
offline runner and the docs. Side effects: :func:`write_previews` writes files.

Slices are shown in a brain window (W80 L40). Each label is outlined by the ring of pixels just
outside its mask (4-connected, 1 px below 384 columns, else 2 px), so the haematoma's own pixels
stay visible: ICH red, IVH cyan, extra-axial yellow, oedema a faint green. Text is DejaVu,
anti-aliased and outlined (:mod:`.text`); Pillow draws it and writes the PNG files.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage

from dicomnode.domain import EXTRA_AXIAL, ICH, IVH, OEDEMA, CTVolume, LabelMap, Measurements, Prediction, Risk

from .text import draw_text, font, line_height

__all__ = [
    "BLOOD_LABELS",
    "BRAIN_WINDOW_HU",
    "NOT_FOR_DIAGNOSIS",
    "STYLE",
    "outline",
    "render_slice",
    "render_summary",
    "slice_text_px",
    "summary_lines",
    "window",
    "write_png",
    "write_previews",
]

BRAIN_WINDOW_HU = (80.0, 40.0)  # (width, level)
BLOOD_LABELS = (ICH, IVH, EXTRA_AXIAL)
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
SYNTHETIC_NOTE = "Model fit on synthetic data only"

# label -> (name, colour, opacity); drawn in this order, so ICH ends on top.
STYLE: dict[int, tuple[str, tuple[int, int, int], float]] = {
    OEDEMA: ("Oedema", (40, 200, 80), 0.5),
    EXTRA_AXIAL: ("Extra-axial", (255, 220, 0), 1.0),
    IVH: ("IVH", (0, 220, 255), 1.0),
    ICH: ("ICH", (255, 40, 40), 1.0),
}
WHITE, AMBER, GREY = (255, 255, 255), (255, 170, 0), (170, 170, 170)
SUMMARY_SIZE = (512, 1024)  # rows, columns: key slice on the left, text on the right
SUMMARY_TITLE_PX, SUMMARY_TEXT_PX = 28, 16  # shown about 1:1 in a one-up viewport
_CROSS = ndimage.generate_binary_structure(2, 1)


def window(hu: np.ndarray, width_hu: float = BRAIN_WINDOW_HU[0],
           level_hu: float = BRAIN_WINDOW_HU[1]) -> np.ndarray:
    """HU -> 8-bit grey through a linear window (values rounded half up)."""
    lo = level_hu - width_hu / 2
    return (np.clip((np.asarray(hu, dtype=np.float32) - lo) / width_hu, 0, 1) * 255 + 0.5).astype(np.uint8)


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The ring of ``thickness`` pixels just outside a 2-D mask (4-connected dilation)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    return ndimage.binary_dilation(mask, structure=_CROSS, iterations=thickness) & ~mask


def outline_thickness(columns: int) -> int:
    return 1 if columns < 384 else 2


def burn_outlines(grey: np.ndarray, labels2d: np.ndarray, *, thickness: int) -> np.ndarray:
    """RGB copy of a grey slice with each label's outline burned in (see ``STYLE``)."""
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for value, (_, colour, opacity) in STYLE.items():
        ring = outline(labels2d == value, 1 if opacity < 1 else thickness)
        if not ring.any():
            continue
        if opacity >= 1:
            rgb[ring] = colour
        else:
            mixed = (1 - opacity) * rgb[ring].astype(np.float32) + opacity * np.asarray(colour, np.float32)
            rgb[ring] = (mixed + 0.5).astype(np.uint8)
    return rgb


def slice_text_px(columns: int) -> int:
    """Text size on a slice of ``columns``: 1/28 of the width (18 px at 512), at least 10 px."""
    return max(10, round(columns / 28))


def render_slice(hu: np.ndarray, labels2d: np.ndarray, *, annotate: bool = True,
                 synthetic: bool = False, warnings: Sequence[str] = ()) -> np.ndarray:
    """One slice in the brain window with outlines, and (from 192 columns) a corner annotation.

    The annotation is "NOT FOR DIAGNOSTIC USE" (and the synthetic-model note) at the top left
    and a legend of the labels present at the bottom left; nothing else changes. ``warnings``
    (QA warnings, docs/qa.md) follow the annotation, in amber.
    """
    if hu.shape != labels2d.shape or hu.ndim != 2:
        raise ValueError(f"hu {hu.shape} and labels {labels2d.shape} must be the same 2-D shape")
    rows, cols = hu.shape
    rgb = burn_outlines(window(hu), labels2d, thickness=outline_thickness(cols))
    if not (annotate and cols >= 192):
        return rgb
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    size = slice_text_px(cols)
    margin, step = max(2, size // 4), line_height(size)
    lines = [NOT_FOR_DIAGNOSIS] + ([SYNTHETIC_NOTE] if synthetic else [])
    width = max(8, int((cols - 2 * margin) // max(1.0, font("bold", size).getlength("M"))))
    lines += [part for text in warnings for part in textwrap.wrap(text, width)]
    for i, text in enumerate(lines):
        draw_text(draw, (margin, margin + i * step), text, AMBER, face="bold", size_px=size)
    present = [v for v in STYLE if v != OEDEMA and (labels2d == v).any()]
    _legend(draw, present[::-1], (margin, rows - margin - step), size)
    return np.array(img)


def _legend(draw: ImageDraw.ImageDraw, values: Sequence[int], xy: tuple[int, int], size: int) -> None:
    """Coloured squares and names of ``values`` on one text line whose top left is ``xy``."""
    x, y = xy
    _, top_px, _, bottom_px = font("sans", size).getbbox("H")  # the square spans the capital height
    top, bottom = int(top_px), int(bottom_px)
    box = bottom - top
    for value in values:
        name, colour, _ = STYLE[value]
        draw.rectangle((x, y + top, x + box - 1, y + bottom - 1), fill=colour, outline=(0, 0, 0))
        x += box + size // 3
        x += draw_text(draw, (x, y), name, WHITE, size_px=size) + size


# ---------------------------------------------------------------------------------------------
# Summary key image


def _percent(x: float) -> str:
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def _risk_line(label: str, risk: Risk) -> str:
    line = f"{label}: {_percent(float(risk.probability))} ({risk.model}"
    line += f" {risk.model_version})" if risk.model_version else ")"
    return line + (" [synthetic]" if risk.synthetic_training else "")


def prediction_lines(prediction: Prediction | None) -> list[str]:
    """One line per prediction: expansion risk, epilepsy risk, then the CAVE score."""
    if prediction is None:
        return []
    lines: list[str] = []
    if prediction.expansion is not None:
        lines.append(_risk_line("Expansion risk", prediction.expansion))
    if prediction.epilepsy is not None:
        lines.append(_risk_line("Epilepsy risk", prediction.epilepsy))
    if prediction.cave is not None:
        cave = prediction.cave
        lines.append(f"CAVE score: {cave.score} ({cave.model} {cave.model_version})")
    return lines


def summary_lines(labels: LabelMap, measurements: Measurements,
                  prediction: Prediction | None = None, *,
                  warnings: Sequence[str] = ()) -> list[tuple[str, tuple[int, int, int]]]:
    """The text of the summary key image, as (line, colour) pairs (``warnings``: QA's)."""
    m = measurements
    out: list[tuple[str, tuple[int, int, int]]] = [(NOT_FOR_DIAGNOSIS, AMBER)]
    if labels.synthetic_training:
        out.append((SYNTHETIC_NOTE, AMBER))
    out += [(text, AMBER) for text in warnings]
    out.append(("", WHITE))
    out += [(f"ICH volume   {m.ich_volume_ml:7.1f} mL", WHITE),
            (f"IVH volume   {m.ivh_volume_ml:7.1f} mL", WHITE),
            (f"ABC/2        {m.abc2_volume_ml:7.1f} mL", WHITE)]
    if m.extra_axial_volume_ml > 0:
        out.append((f"Extra-axial  {m.extra_axial_volume_ml:7.1f} mL", WHITE))
    if m.oedema_volume_ml > 0:
        out.append((f"Oedema       {m.oedema_volume_ml:7.1f} mL", WHITE))
    out += [(f"Site         {m.site.replace('_', ' ')}", WHITE),
            (f"Cortical involvement: {'yes' if m.cortical_involvement else 'no'}", WHITE)]
    preds = prediction_lines(prediction)
    if preds:
        out.append(("", WHITE))
        out += [(line, WHITE) for line in preds]
    out.append(("", WHITE))
    model = f"Model: {labels.model} {labels.model_version}".rstrip()
    if labels.backend and labels.backend != labels.model:
        model += f" ({labels.backend})"
    out.append((model, GREY))
    return out


def key_slice_index(volume: CTVolume, labels: LabelMap, measurements: Measurements) -> int:
    """z index (into ``volume.image``) of the key slice: largest ICH area, else most blood, else middle."""
    n = volume.image.GetSize()[2]
    if measurements.largest_area_slice is not None and 0 <= measurements.largest_area_slice < n:
        return int(measurements.largest_area_slice)
    lab = sitk.GetArrayViewFromImage(labels.image)
    area = np.isin(lab, BLOOD_LABELS).sum(axis=(1, 2))
    return int(np.argmax(area)) if area.any() else n // 2


def _fit(hu: np.ndarray, lab: np.ndarray, spacing_mm: tuple[float, float], box: int) -> tuple[
        np.ndarray, np.ndarray]:
    """Resample a slice (bilinear HU, nearest labels) to fit a ``box`` square, square pixels."""
    rows, cols = hu.shape
    sy, sx = spacing_mm
    f = box / max(rows * sy, cols * sx)
    out_r, out_c = max(1, round(rows * sy * f)), max(1, round(cols * sx * f))
    if (out_r, out_c) == (rows, cols):
        return hu, lab
    rr = (np.arange(out_r) + 0.5) * rows / out_r - 0.5
    cc = (np.arange(out_c) + 0.5) * cols / out_c - 0.5
    grid = np.meshgrid(rr, cc, indexing="ij")
    hu_out = ndimage.map_coordinates(hu.astype(np.float32), grid, order=1, mode="nearest")
    ri = np.clip(np.floor(rr + 0.5).astype(int), 0, rows - 1)
    ci = np.clip(np.floor(cc + 0.5).astype(int), 0, cols - 1)
    return hu_out, lab[np.ix_(ri, ci)]


def render_summary(volume: CTVolume, labels: LabelMap, measurements: Measurements,
                   prediction: Prediction | None = None, *,
                   footer: Sequence[str] = (), warnings: Sequence[str] = ()) -> np.ndarray:
    """The summary key image (512 x 1024 RGB): key slice with outlines left, numbers right."""
    rows, cols = SUMMARY_SIZE
    rgb = np.zeros((rows, cols, 3), dtype=np.uint8)
    z = key_slice_index(volume, labels, measurements)
    hu = sitk.GetArrayViewFromImage(volume.image)[z]
    lab = sitk.GetArrayViewFromImage(labels.image)[z]
    sx, sy = volume.image.GetSpacing()[:2]
    hu_fit, lab_fit = _fit(np.asarray(hu), np.asarray(lab), (sy, sx), rows)
    pic = burn_outlines(window(hu_fit), lab_fit, thickness=2)
    r0, c0 = (rows - pic.shape[0]) // 2, (rows - pic.shape[1]) // 2
    rgb[r0:r0 + pic.shape[0], c0:c0 + pic.shape[1]] = pic

    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    x0, y = rows + 16, 12
    draw_text(draw, (x0, y), "Haemorrhage summary", WHITE, face="bold", size_px=SUMMARY_TITLE_PX)
    y += line_height(SUMMARY_TITLE_PX) + 6
    step = line_height(SUMMARY_TEXT_PX)
    # Monospaced, so that the numbers of summary_lines stay in columns.
    width_chars = int((cols - x0 - 8) // font("mono", SUMMARY_TEXT_PX).getlength("M"))
    lines = summary_lines(labels, measurements, prediction, warnings=warnings)
    lines.append((f"Key slice {z + 1} of {volume.image.GetSize()[2]}", GREY))
    lines += [(text, GREY) for text in footer]
    for text, colour in lines:
        for part in textwrap.wrap(text, width_chars) or [""]:
            if y + step > rows - 2 * step:  # keep the legend's line free
                break
            face = "mono-bold" if colour == AMBER else "mono"  # the warnings stand out
            draw_text(draw, (x0, y), part, colour, face=face, size_px=SUMMARY_TEXT_PX)
            y += step
    _legend(draw, [v for v in (ICH, IVH, EXTRA_AXIAL, OEDEMA)
                   if v in (ICH, IVH) or (sitk.GetArrayViewFromImage(labels.image) == v).any()],
            (x0, rows - 8 - step), SUMMARY_TEXT_PX)
    return np.array(img)


# ---------------------------------------------------------------------------------------------
# PNG


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) RGB or (H, W) grey uint8 array as a PNG file (Pillow); returns ``path``."""
    img = np.ascontiguousarray(rgb)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"write_png needs (H, W) or (H, W, 3) uint8, got {img.dtype} {img.shape}")
    path = Path(path)
    Image.fromarray(img).save(path, format="PNG")
    return path


def write_previews(out_dir: Path, volume: CTVolume, labels: LabelMap, measurements: Measurements, *,
                   prediction: Prediction | None = None, prefix: str = "overlay",
                   warnings: Sequence[str] = ()) -> list[Path]:
    """Write ``<prefix>-key-slice.png`` (the key slice with outlines) and ``<prefix>-summary.png``.

    Both are on the grid of ``volume.image`` (no source files needed). Returns the paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    z = key_slice_index(volume, labels, measurements)
    hu = np.asarray(sitk.GetArrayViewFromImage(volume.image)[z])
    lab = np.asarray(sitk.GetArrayViewFromImage(labels.image)[z])
    key = render_slice(hu, lab, synthetic=labels.synthetic_training, warnings=warnings)
    summary = render_summary(volume, labels, measurements, prediction, warnings=warnings)
    return [write_png(out_dir / f"{prefix}-key-slice.png", key),
            write_png(out_dir / f"{prefix}-summary.png", summary)]
