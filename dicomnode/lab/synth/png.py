"""A tiny PNG writer (zlib only) for previews of synthetic slices in a CT window."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def window(hu: np.ndarray, width_hu: float = 80.0, level_hu: float = 40.0) -> np.ndarray:
    """Map HU to 8-bit grey through a display window (default soft tissue W80/L40)."""
    lo = level_hu - width_hu / 2
    return (np.clip((hu - lo) / width_hu, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, grey: np.ndarray) -> None:
    """Write a 2-D uint8 array as an 8-bit greyscale PNG."""
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError("write_png needs a 2-D uint8 array")
    h, w = grey.shape
    raw = b"".join(b"\x00" + grey[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(png)
