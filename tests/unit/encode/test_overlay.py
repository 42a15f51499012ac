"""Overlay Secondary Capture series and PNG previews, on small synthetic studies.

The studies (``plain_case``, ``tilted_case``) come from this folder's conftest.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from dicomnode.domain import ICH, IVH, OEDEMA, CaveScore, LabelMap, Measurements, Prediction, Risk
from dicomnode.encode import uids
from dicomnode.encode.overlay import build_overlays
from dicomnode.encode.preview import (
    AMBER,
    STYLE,
    SUMMARY_TEXT_PX,
    key_slice_index,
    prediction_lines,
    render_slice,
    render_summary,
    window,
    write_png,
    write_previews,
)
from dicomnode.encode.text import draw_text
from dicomnode.geometry.source_grid import to_source_grid

if TYPE_CHECKING:  # the fixtures' type; pytest itself loads conftest
    from tests.unit.encode.cases import Case

PREDICTION = Prediction(
    expansion=Risk(probability=0.31, model="he-svm", model_version="1.0", synthetic_training=True),
    epilepsy=Risk(probability=0.12, model="pse-rf", model_version="", synthetic_training=False),
    cave=CaveScore(score=2, partial=True, risk=(0.098, 0.348)),
)


def _build(case: Case, **kw: object) -> list[Dataset]:
    kw.setdefault("version", 1)
    kw.setdefault("prediction", PREDICTION)
    return build_overlays(case.datasets, case.volume, case.labels, case.measurements, **kw)  # type: ignore[arg-type]


def _source_hu(case: Case) -> dict[str, np.ndarray]:
    """HU of every source plane, read from the files (independent of the loader)."""
    out = {}
    for path in sorted(Path(case.study.dicom_dir).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return out


@pytest.fixture(scope="module")
def overlays(plain_case: Case) -> list[Dataset]:
    return _build(plain_case)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])


def _ring(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels outside ``mask`` within ``thickness`` 4-connected steps (numpy only)."""
    grown = mask.copy()
    for _ in range(thickness):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    return grown & ~mask


def _crop(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _blood_slices(case: Case) -> list[str]:
    return [s.sop_instance_uid for s, lab in zip(case.volume.slices, case.truth, strict=True)
            if np.isin(lab, (ICH, IVH)).any()]


def test_series_structure(plain_case: Case, overlays: list[Dataset]) -> None:
    case = plain_case
    blood = _blood_slices(case)
    assert len(blood) >= 3
    assert len(overlays) == len(blood) + 1
    summary, slices = overlays[0], overlays[1:]
    assert summary.InstanceNumber == 1
    assert [ds.InstanceNumber for ds in slices] == list(range(1, len(slices) + 1))
    assert "ImagePositionPatient" not in summary and summary.Columns > summary.Rows
    src0 = case.datasets[0]
    # Regression (OHIF 3.13 dropped the series): the summary, without plane geometry, is in a
    # series of its own, Modality OT; the slices' series holds only images with plane geometry.
    assert {ds.SeriesInstanceUID for ds in slices} == {uids.series_uid(src0.SeriesInstanceUID, 1, "overlay")}
    assert summary.SeriesInstanceUID == uids.series_uid(src0.SeriesInstanceUID, 1, "overlay-summary")
    assert (summary.SeriesNumber, summary.Modality) == (9904, "OT")
    assert "summary" in summary.SeriesDescription and "NOT FOR DIAGNOSTIC USE" in summary.SeriesDescription
    assert all("ImagePositionPatient" in ds and ds.Modality == src0.Modality for ds in slices)
    assert len({ds.SOPInstanceUID for ds in overlays}) == len(overlays)
    for ds in overlays:
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated) == (3, "RGB", 8)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
        assert ds.StudyInstanceUID == src0.StudyInstanceUID
        assert (ds.PatientID, ds.PatientName, ds.AccessionNumber) == (
            src0.PatientID, src0.PatientName, src0.AccessionNumber)
        assert ds.SpecificCharacterSet == src0.SpecificCharacterSet
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert (ds.BurnedInAnnotation, ds.ConversionType) == ("YES", "WSD")
        assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
        assert "NOT FOR DIAGNOSTIC USE" in ds.ImageComments and "synthetic" in ds.ImageComments
        assert ds.DerivationDescription
        assert len(ds.SourceImageSequence) == 1
    # one overlay per slice with blood, in slice order, on that slice's geometry
    assert {ds.SeriesNumber for ds in slices} == {9903}
    assert [ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in slices] == blood
    by_uid = {str(d.SOPInstanceUID): d for d in case.datasets}
    numbers = [int(by_uid[u].InstanceNumber) for u in blood]
    assert numbers == sorted(numbers)  # the source's own scroll order
    for ds in slices:
        src = by_uid[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert np.allclose([float(v) for v in ds[kw].value], [float(v) for v in src[kw].value])
        assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
        assert list(ds.PatientOrientation) == ["L", "P"]


def test_outlines_on_brain_window(plain_case: Case, overlays: list[Dataset]) -> None:
    hu = _source_hu(plain_case)
    labels = {s.sop_instance_uid: lab
              for s, lab in zip(plain_case.volume.slices, plain_case.truth, strict=True)}
    for ds in overlays[1:]:
        uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        grey = np.clip(hu[uid] / 80.0, 0, 1) * 255  # W80 L40: 0 HU black, 80 HU white
        rgb = ds.pixel_array.astype(int)
        lab = labels[uid]
        coloured = ~_grey(rgb)
        rings = {v: _ring(lab == v) for v in (ICH, IVH, OEDEMA)}
        # colour only on label boundaries; the windowed CT everywhere else
        assert not (coloured & ~(rings[ICH] | rings[IVH] | rings[OEDEMA])).any()
        assert (np.abs(rgb[..., 0] - grey)[~coloured] <= 1).all()
        # ICH (drawn last) outlined in red all round; IVH in cyan where not under the ICH ring
        assert rings[ICH].any() or rings[IVH].any()
        assert (rgb[rings[ICH]] == STYLE[ICH][1]).all()
        assert (rgb[rings[IVH] & ~rings[ICH]] == STYLE[IVH][1]).all()
        # the masks themselves keep their CT grey
        inside = np.isin(lab, (ICH, IVH)) & ~rings[ICH] & ~rings[IVH] & ~rings[OEDEMA]
        assert (np.abs(rgb[..., 1] - grey)[inside] <= 1).all()


def _amber(rgb: np.ndarray) -> np.ndarray:
    """Pixels of amber text over black: the amber hue at any anti-aliasing coverage."""
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    return (r > 60) & (b < 8) & (np.abs(g * AMBER[0] - r * AMBER[1]) <= 0.1 * r * AMBER[0])


def _line_mask(text: str) -> np.ndarray:
    """The amber pixels of ``text`` drawn as the summary draws its warnings, cropped."""
    img = Image.new("RGB", (1024, 64))
    draw_text(ImageDraw.Draw(img), (4, 4), text, AMBER, face="mono-bold", size_px=SUMMARY_TEXT_PX)
    return _crop(_amber(np.asarray(img)))


def test_summary_text(plain_case: Case, overlays: list[Dataset]) -> None:
    summary = overlays[0].pixel_array
    rows = summary.shape[0]
    text = summary[:, rows:]  # right of the key slice
    assert (text.max(axis=2) > 0).sum() > 3000
    # the two amber lines read NOT FOR DIAGNOSTIC USE and the synthetic-model note, in that order
    amber = _amber(text)
    lit = np.flatnonzero(amber.any(axis=1))
    bands = np.split(lit, np.flatnonzero(np.diff(lit) > 1) + 1)
    assert len(bands) == 2
    for band, words in zip(bands, ["NOT FOR DIAGNOSTIC USE", "Model fit on synthetic data only"],
                           strict=True):
        assert (_crop(amber[band[0]:band[-1] + 1]) == _line_mask(words)).all(), words
    # predictions add text, the key slice stays; the summary references one source slice
    plain = _build(plain_case, prediction=None)[0].pixel_array
    assert (plain[:, rows:] != text).any() and (plain[:, :rows] == summary[:, :rows]).all()
    assert len(overlays[0].SourceImageSequence) == 1
    assert "CAVE" in overlays[0].ImageComments and "ICH volume" in overlays[0].ImageComments


def test_summary_draws_non_ascii_text(plain_case: Case) -> None:
    c = plain_case

    def summary(model: str) -> np.ndarray:
        labels = dataclasses.replace(c.labels, model=model)
        return render_summary(c.volume, labels, c.measurements)[:, SUMMARY_TEXT_PX * 32:]

    # each non-ASCII letter is drawn as itself: not as "?" (the old bitmap font) nor plain ASCII
    ours = summary("Hämatom-µNet 5°")
    for folded in ("H?matom-?Net 5?", "Hamatom-uNet 5o"):
        assert (ours != summary(folded)).any(), folded
    # characters the font lacks, control characters and lone surrogates draw, not crash
    odd = summary("模型\x00\r\n\ud800\U0001f600")
    assert (odd != summary("")).any()


def test_text_glyphs_are_the_fonts_own() -> None:
    def drawn(text: str) -> np.ndarray:
        img = Image.new("RGB", (64, 32))
        draw_text(ImageDraw.Draw(img), (2, 2), text, (255, 255, 255), size_px=18)
        return np.asarray(img)

    missing = drawn("\U0010ffff")  # not in any font: DejaVu's empty box
    assert missing.any()
    for ch, ascii_ in zip("°äéßμÖ", "oaesuO", strict=True):
        glyph = drawn(ch)
        assert glyph.any(), ch
        for other in (drawn("?"), drawn(ascii_), missing):
            assert (glyph != other).any(), ch


def test_uids_deterministic(plain_case: Case, overlays: list[Dataset]) -> None:
    again = _build(plain_case)
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in overlays]
    assert again[0].SeriesInstanceUID == overlays[0].SeriesInstanceUID
    v2 = _build(plain_case, version=2)
    assert not {ds.SOPInstanceUID for ds in v2} & {ds.SOPInstanceUID for ds in overlays}
    assert v2[0].SeriesInstanceUID != overlays[0].SeriesInstanceUID


def test_no_blood_gives_only_the_summary(plain_case: Case) -> None:
    empty = sitk.Image(plain_case.labels.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(plain_case.labels.image)
    labels = LabelMap(image=empty, backend="threshold", model="threshold", model_version="1")
    m = Measurements(0.0, 0.0, 0.0, None, False, "none")
    out = build_overlays(plain_case.datasets, plain_case.volume, labels, m, version=1)
    assert len(out) == 1 and "SourceImageSequence" not in out[0]
    assert "synthetic" not in out[0].SeriesDescription


def test_rejects_bad_input(plain_case: Case) -> None:
    c = plain_case
    with pytest.raises(ValueError, match="source datasets"):
        build_overlays([], c.volume, c.labels, c.measurements, version=1)
    other = Dataset()
    other.update(c.datasets[0])
    other.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="study"):
        build_overlays([other], c.volume, c.labels, c.measurements, version=1)
    with pytest.raises(ValueError, match="version"):
        build_overlays(c.datasets, c.volume, c.labels, c.measurements, version=0)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(overlays: list[Dataset], tmp_path: Path) -> None:
    for i, ds in enumerate(overlays):
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        assert "Error" not in report, report
        # the only warnings: Frame of Reference and Image Plane attributes, Standard Extended
        for line in report.splitlines():
            if line.startswith("Warning"):
                assert "not present in standard DICOM IOD" in line, line


@pytest.mark.parametrize("with_pixels", [True, False])
def test_tilted_series_on_source_planes(tilted_case: Case, with_pixels: bool) -> None:
    case = tilted_case
    assert case.volume.resampled
    hu = _source_hu(case)
    sources = ([pydicom.dcmread(p) for p in sorted(Path(case.study.dicom_dir).glob("*.dcm"))]
               if with_pixels else case.datasets)  # headers only: planes resampled from the volume
    out = build_overlays(sources, case.volume, case.labels, case.measurements, version=1)
    back = to_source_grid(case.labels.image, case.volume)
    n_blood = int(np.isin(back, (ICH, IVH)).any(axis=(1, 2)).sum())
    assert len(out) == n_blood + 1 and n_blood >= 3
    for ds in out[1:]:
        uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        rgb = ds.pixel_array.astype(int)
        coloured = ~_grey(rgb)
        assert coloured.any()
        expected = window(hu[uid]).astype(int)
        diff = np.abs(rgb[..., 0] - expected)[~coloured]
        if with_pixels:
            assert (diff <= 1).all()
        else:  # interpolated twice: brain pixels close (1 HU = 3.2 grey levels), edges less so
            brain = ~coloured & (expected > 0) & (expected < 255)
            assert np.median(np.abs(rgb[..., 0] - expected)[brain]) < 12
        src = next(d for d in case.datasets if d.SOPInstanceUID == uid)
        assert np.allclose([float(v) for v in ds.ImageOrientationPatient],
                           [float(v) for v in src.ImageOrientationPatient])


@pytest.mark.parametrize("size", [256, 512])
def test_slice_annotation_only_in_corners(size: int) -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(35, 10, (size, size)).astype(np.float32)
    lab = np.zeros((size, size), np.uint8)
    f = size // 256
    lab[100 * f:140 * f, 90 * f:150 * f] = ICH
    lab[150 * f:160 * f, 120 * f:130 * f] = IVH
    plain = render_slice(hu, lab, annotate=False)
    rgb = render_slice(hu, lab, synthetic=True)
    changed = (rgb != plain).any(axis=2)
    top, bottom = 30 * f, 20 * f  # the warning's and the legend's bands
    # warning top left (both lines), legend bottom left (a square of each label's colour)
    assert changed[:top, :100 * f].any() and changed[top // 2:top, :100 * f].any()
    legend = rgb[-bottom:, :size // 2]
    for value in (ICH, IVH):
        assert (legend == STYLE[value][1]).all(axis=2).sum() >= (4 * f) ** 2, value
    assert not changed[top:-bottom].any()
    assert (plain[..., 0][lab == ICH] == window(hu)[lab == ICH]).all()
    # the text is amber and white (anti-aliased, with a dark edge), not just any mark
    assert (rgb[:top][changed[:top]] == AMBER).all(axis=1).sum() > 50 * f * f
    assert (rgb[-bottom:][changed[-bottom:]] == (255, 255, 255)).all(axis=1).sum() > 10 * f * f


def test_prediction_lines() -> None:
    lines = prediction_lines(PREDICTION)
    assert lines[0] == "Expansion risk: 31% (he-svm 1.0) [synthetic]"
    assert lines[1] == "Epilepsy risk: 12% (pse-rf)"
    assert lines[2] == "CAVE score: 2 (CAVE (Haapaniemi 2014) published)"
    assert len(lines) == 3
    assert prediction_lines(Prediction(epilepsy=PREDICTION.epilepsy)) == [lines[1]]
    assert prediction_lines(None) == []


def test_previews_are_valid_pngs(plain_case: Case, tmp_path: Path) -> None:
    c = plain_case
    paths = write_previews(tmp_path / "png", c.volume, c.labels, c.measurements, prediction=PREDICTION)
    assert [p.name for p in paths] == ["overlay-key-slice.png", "overlay-summary.png"]
    z = key_slice_index(c.volume, c.labels, c.measurements)
    key = render_slice(sitk.GetArrayFromImage(c.volume.image)[z], sitk.GetArrayFromImage(c.labels.image)[z],
                       synthetic=c.labels.synthetic_training)
    summary = render_summary(c.volume, c.labels, c.measurements, PREDICTION)
    for path, expected in zip(paths, [key, summary], strict=True):
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", expected.shape[1::-1])
            assert (np.asarray(img) == expected).all()
    assert summary.shape == (512, 1024, 3) and key.shape == (64, 64, 3)


def test_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for rgb in (rng.integers(0, 256, (5, 7, 3)), rng.integers(0, 256, (5, 7))):
        path = write_png(tmp_path / "x.png", rgb.astype(np.uint8))
        with Image.open(path) as img:
            assert img.format == "PNG" and (np.asarray(img) == rgb).all()
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "y.png", np.zeros((5, 7, 4), np.uint8))
