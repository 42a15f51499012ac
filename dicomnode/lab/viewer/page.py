"""What the viewer tests and the benchmark ask OHIF's page, through the DevTools protocol.

OHIF 3.13 exposes ``window.cornerstone`` (Cornerstone3D core) and ``window.cornerstoneTools``;
the study browser's thumbnails carry ``data-cy="study-browser-thumbnail..."``. A series is
opened as a user would: a double click on its thumbnail (a SEG or SR then loads onto the CT).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .browser import Browser, ConsoleEntry

VIEWPORTS = "(window.cornerstone ? cornerstone.getEnabledElements() : [])"
LOADED = (f"{VIEWPORTS}.some(e => e.viewport.getImageIds && e.viewport.getImageIds().length > 0"
           " && e.viewport.getCurrentImageId && !!e.viewport.getCurrentImageId())")


_IDLE = ("[cornerstone.imageLoadPoolManager, cornerstone.imageRetrievalPoolManager].every(m => m && "
         "Object.values(m.numRequests).every(n => n === 0) && Object.values(m.getRequestPool())"
         ".every(byPriority => Object.values(byPriority).every(q => q.length === 0)))")


def open_study(browser: Browser, url: str, *, timeout_s: float = 120.0, idle: bool = True) -> float:
    """Open ``url`` and wait until a viewport shows an image; seconds it took.

    With ``idle`` it then waits until no image request is queued or running: a SEG or series
    opened while images load makes OHIF 3.13 replace the viewport under those loads, which then
    fail with "Cannot read properties of null (reading 'getViewUp')" whatever the objects are.
    """
    start = time.monotonic()
    browser.goto(url)
    browser.wait_for(LOADED, timeout_s=timeout_s, what="the first image")
    took = time.monotonic() - start
    if idle:
        wait_idle(browser, timeout_s=timeout_s)
    return took


def wait_idle(browser: Browser, *, timeout_s: float = 120.0, quiet_s: float = 1.0) -> None:
    """Wait until Cornerstone's image request pools have been empty for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    while True:
        now = time.monotonic()
        if browser.evaluate(_IDLE):
            quiet_since = quiet_since or now
            if now - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        if now > deadline:
            raise TimeoutError("OHIF's image requests did not finish")
        time.sleep(0.2)


def thumbnails(browser: Browser) -> list[str]:
    """The study browser's series, as their text (modality, description, number)."""
    return list(browser.evaluate(
        "[...document.querySelectorAll('[data-cy^=\"study-browser-thumbnail\"]')]"
        ".map(e => e.innerText.replace(/\\s+/g, ' ').trim())") or [])


def open_series(browser: Browser, description: str) -> None:
    """Double-click the thumbnail whose text holds ``description`` (as a user opens a series)."""
    found = browser.evaluate(
        "(() => { const el = [...document.querySelectorAll('[data-cy^=\"study-browser-thumbnail\"]')]"
        f".find(e => e.innerText.includes({json.dumps(description)}));"
        " if (!el) return false; el.dispatchEvent(new MouseEvent('dblclick', {bubbles: true}));"
        " return true; })()")
    if not found:
        raise LookupError(f"no series {description!r} in the study browser: {thumbnails(browser)}")


def segmentation_loaded(browser: Browser, *, timeout_s: float = 120.0) -> float:
    """Wait until a viewport has a segmentation representation; seconds it took."""
    start = time.monotonic()
    browser.wait_for(
        f"{VIEWPORTS}.some(e => (cornerstoneTools.segmentation.state"
        ".getSegmentationRepresentations(e.viewport.id) || []).length > 0)",
        timeout_s=timeout_s, what="the segmentation")
    return time.monotonic() - start


def viewport_series(browser: Browser) -> list[str]:
    """For each viewport, the image id it shows (holds the series and SOP Instance UIDs)."""
    return list(browser.evaluate(f"{VIEWPORTS}.map(e => e.viewport.getCurrentImageId() || '')") or [])


def show_instance(browser: Browser, sop_instance_uid: str, *, settle_s: float = 1.5,
                  timeout_s: float = 60.0) -> None:
    """Scroll the viewport that holds ``sop_instance_uid`` to it, and let it render.

    After a slice change OHIF draws the new slice's segmentation over the old image for a
    moment: ``settle_s`` waits that out.
    """
    uid = json.dumps(f"/instances/{sop_instance_uid}/")
    index = browser.evaluate(
        f"(async () => {{ const e = {VIEWPORTS}.find(e => e.viewport.getImageIds()"
        f".some(i => i.includes({uid}))); if (!e) return -1;"
        f" const k = e.viewport.getImageIds().findIndex(i => i.includes({uid}));"
        " await e.viewport.setImageIdIndex(k); return k; })()")
    if index is None or index < 0:
        raise LookupError(f"no viewport holds instance {sop_instance_uid}")
    browser.wait_for(
        f"{VIEWPORTS}.some(e => (e.viewport.getCurrentImageId() || '').includes({uid}))",
        timeout_s=timeout_s, what=f"instance {sop_instance_uid} on screen")
    time.sleep(settle_s)


@dataclass(frozen=True)
class ScreenMap:
    """Pixel (column, row) of a source image -> page position (x, y), an affine map."""

    origin: np.ndarray  # page position of pixel (0, 0)'s centre
    per_column: np.ndarray
    per_row: np.ndarray

    def __call__(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = self.origin[:, None] + self.per_column[:, None] * cols + self.per_row[:, None] * rows
        return xy[0], xy[1]


def screen_map(browser: Browser, position: Sequence[float], orientation: Sequence[float],
               spacing: Sequence[float]) -> ScreenMap:
    """Where a plane's pixels appear on the page, from the viewer's own world-to-canvas map.

    ``position``, ``orientation`` and ``spacing`` are the image's Image Position and
    Orientation (Patient) and Pixel Spacing (row, column), as in its header.
    """
    p0 = np.asarray(position, dtype=float)
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    points = [p0, p0 + row_dir * float(spacing[1]), p0 + col_dir * float(spacing[0])]
    out = browser.evaluate(
        f"(() => {{ const e = {VIEWPORTS}[0]; const r = e.viewport.canvas.getBoundingClientRect();"
        f" return {json.dumps([p.tolist() for p in points])}.map(p => {{"
        " const c = e.viewport.worldToCanvas(p); return [c[0] + r.left, c[1] + r.top]; }); })()")
    c0, c1, c2 = (np.asarray(p, dtype=float) for p in out)
    return ScreenMap(origin=c0, per_column=c1 - c0, per_row=c2 - c0)


def pixels(png: bytes) -> np.ndarray:
    """RGB array (rows, columns, 3) of a screenshot."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"))


def sample(screen: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Colours at page positions (nearest screen pixel); (n, 3) int."""
    h, w = screen.shape[:2]
    xi = np.clip(np.floor(xs).astype(int), 0, w - 1)
    yi = np.clip(np.floor(ys).astype(int), 0, h - 1)
    return screen[yi, xi].astype(int)


def svg_text(browser: Browser) -> list[str]:
    """Text drawn by the annotation layer (measurement labels) in the viewports."""
    return list(browser.evaluate("[...document.querySelectorAll('svg text')].map(t => t.textContent)") or [])


def svg_shapes(browser: Browser) -> int:
    """Lines, polylines and paths drawn by the annotation layer."""
    return int(browser.evaluate(
        "document.querySelectorAll('svg polyline, svg path, svg line').length") or 0)


def errors(browser: Browser) -> list[ConsoleEntry]:
    """Console errors and uncaught exceptions so far, and the errors OHIF's error boundaries
    caught: OHIF 3.13 logs those at debug level ("Route viewer Error Boundary TypeError: ...")
    and shows only a "Something went wrong" notice, e.g. for an SR it cannot draw."""
    return [c for c in browser.console if c.level in ("error", "exception") or "Error Boundary" in c.text]


def foreign_requests(browser: Browser, origin: str) -> list[str]:
    """Requests to anything but the rig's origin (data: and blob: URLs are local)."""
    return [u for u in browser.requests
            if not u.startswith((origin + "/", "data:", "blob:")) and u != origin and u != "about:blank"]
