"""Burned-in text: the DejaVu fonts drawn with Pillow, anti-aliased, with a dark outline.

The fonts are the DejaVu TrueType files that ship inside the matplotlib wheel (DejaVu licence,
free to redistribute), so no system font is needed. Serving must not import matplotlib, so
:func:`font_path` finds the installed package with :func:`importlib.util.find_spec`, which
locates a top-level package without running it, and Pillow opens the file from there.

Any Unicode text can be drawn. A character that the font lacks shows as DejaVu's empty box, and
a control character (which could break the text layout) shows as U+FFFD, the replacement mark.
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from pathlib import Path

from PIL import ImageDraw, ImageFont

__all__ = ["FONT_FILES", "draw_text", "font", "font_path", "line_height", "printable"]

#: The faces used, by role: labels, warnings and headings, aligned columns of numbers.
FONT_FILES = {"sans": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "mono": "DejaVuSansMono.ttf",
              "mono-bold": "DejaVuSansMono-Bold.ttf"}
OUTLINE = (0, 0, 0)


@functools.cache
def font_path(face: str) -> Path:
    """Path of a DejaVu TTF (``face`` a key of ``FONT_FILES``) inside the installed matplotlib.

    Raises
    ------
    FileNotFoundError
        matplotlib (a dependency) is not installed or lacks its font files.
    """
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the DejaVu fonts come with matplotlib, which is not installed")
    path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / FONT_FILES[face]
    if not path.is_file():
        raise FileNotFoundError(f"font file {path} is missing from the matplotlib installation")
    return path


@functools.cache
def font(face: str, size_px: int) -> ImageFont.FreeTypeFont:
    """The DejaVu ``face`` at an em size of ``size_px`` pixels (loaded once per size)."""
    return ImageFont.truetype(str(font_path(face)), size_px)


def line_height(size_px: int) -> int:
    """Baseline-to-baseline distance for text of ``size_px`` (1.25 em, DejaVu's own line gap)."""
    return round(size_px * 1.25)


def printable(text: str) -> str:
    """``text`` with control characters (C0, C1, lone surrogates) replaced by U+FFFD."""
    return "".join("\ufffd" if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in text)


def _outline_px(size_px: int) -> int:
    """Width of the dark outline around glyphs of ``size_px`` (1 px up to 20 px, then wider)."""
    return max(1, round(size_px / 14))


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, colour: tuple[int, int, int], *,
              face: str = "sans", size_px: int, outline: bool = True) -> int:
    """Draw one line with its top-left corner at ``xy`` (x, y in pixels); returns its advance width.

    With ``outline`` the glyphs get a dark edge, so that text stays readable over bright bone as
    well as dark air.
    """
    f = font(face, size_px)
    text = printable(text)
    stroke = _outline_px(size_px) if outline else 0
    draw.text(xy, text, fill=colour, font=f, stroke_width=stroke, stroke_fill=OUTLINE)
    return round(f.getlength(text))
