"""The radiologist's view: results opened in OHIF (prebuilt 3.13.2) over Orthanc's DICOMweb, in
Debian's headless Chromium. Synthetic studies go storescu -> node -> (STOW-RS) Orthanc.

Each test collects the browser console (an error or uncaught exception fails it) and every
request (only the rig's loopback origin may be contacted), and keeps its screenshots in
build/viewer/ (DICOMNODE_VIEWER_SHOTS overrides). See docs/viewer.md. The node runs on its
default database (SQLite): what is checked here is the objects in the viewer, and the node's
database paths on PostgreSQL are covered by tests/e2e/test_orthanc_e2e.py and the STOW-RS
outbox by tests/integration/test_delivery.py.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from dicomnode.encode import codes
from dicomnode.lab.orthanc import dicomweb_plugin
from dicomnode.lab.synth import StudyTruth, make_study
from dicomnode.lab.viewer import ohif, page
from dicomnode.lab.viewer.browser import Browser, chromium_binary
from dicomnode.lab.viewer.rig import Results, ViewerRig
from tests.conftest import REPO

pytestmark = [
    pytest.mark.viewer,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc not installed"),
    pytest.mark.skipif(dicomweb_plugin() is None, reason="orthanc-dicomweb not installed"),
    pytest.mark.skipif(chromium_binary() is None, reason="chromium not installed"),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed"),
    pytest.mark.skipif(not ohif.available() and shutil.which("npm") is None,
                       reason="OHIF not fetched and npm not installed (make ohif)"),
]
SHOTS = Path(os.environ.get("DICOMNODE_VIEWER_SHOTS", REPO / "build" / "viewer"))
ICH = 1
STUDIES = {
    "5mm": {"seed": 11, "hemorrhage_ml": 25.0, "site": "lobar", "matrix": 128, "thickness_mm": 5.0},
    "1mm": {"seed": 13, "hemorrhage_ml": 20.0, "site": "deep", "matrix": 128, "thickness_mm": 1.0},
    "tilted": {"seed": 12, "hemorrhage_ml": 20.0, "site": "lobar", "matrix": 128, "thickness_mm": 5.0,
               "ivh": True, "tilt_deg": 15.0},
}


@dataclass(frozen=True)
class Delivered:
    truth: StudyTruth
    results: Results
    result_dir: Path  # the node's files for this result (seg.dcm, sr.dcm, ...)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerRig]:
    ohif.fetch()  # once per clone (make ohif); a no-op when .ohif/ holds it
    with ViewerRig(tmp_path_factory.mktemp("viewer-rig")) as r:
        yield r


@pytest.fixture(scope="module")
def delivered(rig: ViewerRig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Delivered]:
    out = {}
    for name, spec in STUDIES.items():
        truth = make_study(tmp_path_factory.mktemp(f"study-{name}"), **spec)  # type: ignore[arg-type]
        acked = rig.send(truth.dicom_dir)
        results = rig.wait_results(truth.series_instance_uid, acked)
        (result_dir,) = (rig.storage / "_results" / truth.series_instance_uid).glob("v*")
        out[name] = Delivered(truth, results, result_dir)
    return out


@pytest.fixture(scope="module")
def normal(rig: ViewerRig, tmp_path_factory: pytest.TempPathFactory) -> Delivered:
    """A scan without haemorrhage, through the node (its own fixture: the others need not run)."""
    truth = make_study(tmp_path_factory.mktemp("study-normal"), seed=21, hemorrhage_ml=None, matrix=128,
                       thickness_mm=5.0)
    results = rig.wait_results(truth.series_instance_uid, rig.send(truth.dicom_dir))
    (result_dir,) = (rig.storage / "_results" / truth.series_instance_uid).glob("v*")
    return Delivered(truth, results, result_dir)


@pytest.fixture
def browser(rig: ViewerRig) -> Iterator[Browser]:
    with Browser(width=1280, height=800) as b:
        yield b
        assert page.foreign_requests(b, rig.url) == []  # loopback only, the rig's origin only
        assert not b.failed, b.failed


def _clean_console(b: Browser) -> None:
    errors = page.errors(b)
    assert errors == [], "\n".join(f"{e.level}: {e.text[:400]}" for e in errors)


def _shot(b: Browser, name: str) -> bytes:
    return b.screenshot(SHOTS / f"{name}.png")


def test_study_opens_and_every_output_series_is_listed(rig: ViewerRig, delivered: dict[str, Delivered],
                                                       browser: Browser) -> None:
    d = delivered["5mm"]
    page.open_study(browser, rig.viewer_url(d.results.study_instance_uid))
    listed = " | ".join(page.thumbnails(browser))
    for text in ("CT SYNTHETIC Head", "SEG ICH SEG", "SR ICH SR", "CT ICH overlay v1", "OT ICH summary v1"):
        assert text in listed, listed
    _, header = _key_slice(d.truth)  # the viewer opens on the first slice, above the head
    page.show_instance(browser, str(header.SOPInstanceUID))
    screen = page.pixels(_shot(browser, "study"))
    assert screen[100:700, 300:1200].std() > 20  # the CT is drawn (not a black viewport)
    _clean_console(browser)


def _key_slice(truth: StudyTruth) -> tuple[np.ndarray, pydicom.Dataset]:
    """The truth labels on the slice with the most ICH, and that slice's header."""
    img = nib.load(truth.label_path)
    labels = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.uint8)  # (slice, row, column)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.get_sform()  # index -> LPS
    k = int(np.argmax((labels == ICH).sum(axis=(1, 2))))
    origin = (affine @ [0, 0, k, 1])[:3]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(truth.dicom_dir.glob("*.dcm"))]
    header = min(headers, key=lambda h: float(np.linalg.norm(
        np.asarray(h.ImagePositionPatient, float) - origin)))
    assert np.linalg.norm(np.asarray(header.ImagePositionPatient, float) - origin) < 0.01
    return labels[k], header


@pytest.mark.parametrize("name", list(STUDIES))
def test_seg_lies_on_the_haematoma(rig: ViewerRig, delivered: dict[str, Delivered], browser: Browser,
                                   name: str) -> None:
    d = delivered[name]
    page.open_study(browser, rig.viewer_url(d.results.study_instance_uid))
    page.open_series(browser, "ICH SEG")
    page.segmentation_loaded(browser)
    truth, header = _key_slice(d.truth)
    page.show_instance(browser, str(header.SOPInstanceUID))
    screen = page.pixels(_shot(browser, f"seg-{name}"))
    to_screen = page.screen_map(browser, header.ImagePositionPatient, header.ImageOrientationPatient,
                                header.PixelSpacing)
    rect = browser.evaluate("(() => { const r = cornerstone.getEnabledElements()[0].viewport.canvas"
                            ".getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })()")

    def colours(mask: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(mask)
        xs, ys = to_screen(cols.astype(float), rows.astype(float))
        keep = (xs > rect[0] + 5) & (xs < rect[2] - 5) & (ys > rect[1] + 5) & (ys < rect[3] - 5)
        assert keep.mean() > 0.9  # the slice is on screen (its top and bottom rows touch the edge)
        return page.sample(screen, xs[keep], ys[keep])

    # Inside the true haematoma (2 pixels in from its edge): the ICH colour (crimson) on the CT.
    inside = colours(ndimage.binary_erosion(truth == ICH, iterations=2))
    red = (inside[:, 0] - inside[:, 1] > 40) & (inside[:, 0] - inside[:, 2] > 20)
    assert inside.shape[0] > 20 and red.mean() > 0.8, red.mean()
    # Well outside every finding (more than 6 pixels, about 11 mm, away): no segment colour at all.
    far = ~ndimage.binary_dilation(truth > 0, iterations=6)
    outside = colours(far)
    chroma = outside.max(axis=1) - outside.min(axis=1)
    assert (chroma > 40).mean() < 0.002, (chroma > 40).mean()
    # The SEG's own frame for this image, where the viewer drew it: the same check, exactly.
    seg = hd.seg.segread(d.result_dir / "seg.dcm")
    mask = seg.get_pixels_by_source_instance([str(header.SOPInstanceUID)], segment_numbers=[1],
                                             combine_segments=True)[0] > 0
    own = colours(ndimage.binary_erosion(mask, iterations=1))
    assert ((own[:, 0] - own[:, 1]) > 40).mean() > 0.95
    _clean_console(browser)


def _sr_number(sr: pydicom.Dataset, code: object) -> float:
    def walk(items: object) -> Iterator[pydicom.Dataset]:
        for item in items or []:  # type: ignore[attr-defined]
            yield item
            yield from walk(item.get("ContentSequence"))

    key = codes.as_tuple(code)
    return next(float(i.MeasuredValueSequence[0].NumericValue) for i in walk(sr.ContentSequence)
                if i.ValueType == "NUM" and codes.as_tuple(i.ConceptNameCodeSequence[0]) == key)


def test_sr_opens_and_its_measurements_are_drawn(rig: ViewerRig, delivered: dict[str, Delivered],
                                                 browser: Browser) -> None:
    d = delivered["5mm"]
    sr = pydicom.dcmread(d.result_dir / "sr.dcm")
    page.open_study(browser, rig.viewer_url(d.results.study_instance_uid))
    page.open_series(browser, "ICH SR")
    a_mm, b_mm = _sr_number(sr, codes.ABC2_A), _sr_number(sr, codes.ABC2_B)
    volume = _sr_number(sr, codes.VOLUME)
    expected = [f"ABC/2 largest diameter A: {a_mm:.2f} mm", f"ABC/2 perpendicular diameter B: {b_mm:.2f} mm",
                f"Volume: {volume:.2f} ml"]
    browser.wait_for(
        f"(() => {{ const t = [...document.querySelectorAll('svg text')].map(t => t.textContent).join('|');"
        f" return {expected!r}.every(s => t.includes(s)); }})()", timeout_s=120,
        what="the SR's lines and numbers")
    text = page.svg_text(browser)
    assert any("Area" in t and "mm2" in t for t in text), text
    assert page.svg_shapes(browser) >= 3  # the outline and the A and B lines
    _shot(browser, "sr")
    _clean_console(browser)


@pytest.mark.parametrize(("description", "series", "shot"), [
    ("ICH overlay", "overlay_series_uid", "overlay"), ("ICH summary", "summary_series_uid", "summary")])
def test_overlay_and_summary_show_as_images(rig: ViewerRig, delivered: dict[str, Delivered],
                                            browser: Browser, description: str, series: str,
                                            shot: str) -> None:
    d = delivered["5mm"]
    page.open_study(browser, rig.viewer_url(d.results.study_instance_uid))
    page.open_series(browser, description)
    uid = getattr(d.results, series)
    browser.wait_for(f"{page.VIEWPORTS}.some(e => (e.viewport.getCurrentImageId() || '').includes("
                     f"'/series/{uid}/'))", timeout_s=60, what=f"{description} in the viewport")
    page.wait_idle(browser)
    time.sleep(1.0)
    screen = page.pixels(_shot(browser, shot))
    view = screen[60:780, 300:1230].astype(int)
    burned_red = (view[..., 0] > 200) & (view[..., 1] < 80) & (view[..., 2] < 80)  # the outline
    assert burned_red.sum() > 30, burned_red.sum()
    _clean_console(browser)


def _read_on(sr: pydicom.Dataset) -> tuple[str, list[str]]:
    """The image a report without findings names as read, and its Comment items."""
    group = next(g for g in _sr_groups(sr)
                 if any(i.ValueType == "TEXT" and codes.as_tuple(i.ConceptNameCodeSequence[0])
                        == codes.as_tuple(codes.COMMENT) for i in g.ContentSequence))
    scoord = next(c for n in group.ContentSequence if n.ValueType == "NUM"
                  for c in n.get("ContentSequence", []) if c.ValueType == "SCOORD")
    comments = [str(i.TextValue) for i in group.ContentSequence if i.ValueType == "TEXT"
                and codes.as_tuple(i.ConceptNameCodeSequence[0]) == codes.as_tuple(codes.COMMENT)]
    return str(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID), comments


def _sr_groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (measurements,) = [i for i in sr.ContentSequence
                       if codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("126010", "DCM")]
    return list(measurements.ContentSequence)


def test_normal_scan_report_opens_on_the_slice_read(rig: ViewerRig, normal: Delivered,
                                                    browser: Browser) -> None:
    """The SR of a scan without haemorrhage: once a black viewport and OHIF's "Something went
    wrong" (TypeError on ReferencedSOPSequence); now the middle slice with "No ICH detected"."""
    sr = pydicom.dcmread(normal.result_dir / "sr.dcm")
    uid, comments = _read_on(sr)
    assert comments == ["No ICH detected"]
    # A wider page than the other tests: OHIF puts the label right of the outlined whole image.
    browser.call("Emulation.setDeviceMetricsOverride", width=1600, height=800, deviceScaleFactor=1,
                 mobile=False)
    page.open_study(browser, rig.viewer_url(normal.results.study_instance_uid))
    page.open_series(browser, "ICH SR")
    browser.wait_for("[...document.querySelectorAll('svg text')].some(t => t.textContent"
                     ".includes('No ICH detected'))", timeout_s=120, what="the SR's label")
    browser.wait_for(f"{page.VIEWPORTS}.some(e => (e.viewport.getCurrentImageId() || '')"
                     f".includes('/instances/{uid}/'))", timeout_s=60, what="the slice the SR names")
    page.wait_idle(browser)
    time.sleep(1.0)
    screen = page.pixels(_shot(browser, "sr-normal"))
    left, top, right, bottom = (int(v) for v in browser.evaluate(
        f"(() => {{ const r = {page.VIEWPORTS}[0].viewport.canvas.getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom]; })()"))
    assert screen[top:bottom, left:right].std() > 20  # the CT is drawn, not a black viewport
    _clean_console(browser)
