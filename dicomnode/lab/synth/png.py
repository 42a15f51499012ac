"""Previews of synthetic slices in a CT window, written as PNG files by Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def window(hu: np.ndarray, width_hu: float = 80.0, level_hu: float = 40.0) -> np.ndarray:
    """Map HU to 8-bit grey through a display window (default soft tissue W80/L40)."""
    lo = level_hu - width_hu / 2
    return (np.clip((hu - lo) / width_hu, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, grey: np.ndarray) -> None:
    """Write a 2-D uint8 array as an 8-bit greyscale PNG."""
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError("write_png needs a 2-D uint8 array")
    Image.fromarray(np.ascontiguousarray(grey)).save(Path(path), format="PNG")
