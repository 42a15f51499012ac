"""Greyscale previews of synthetic slices: windowed, written as PNG that reads back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicomnode.lab.synth.png import window, write_png


def test_window_and_png_round_trip(tmp_path: Path) -> None:
    hu = np.array([[-100.0, 0.0, 40.0], [80.0, 1000.0, 20.0]])
    grey = window(hu)
    assert grey.tolist() == [[0, 0, 128], [255, 255, 64]]
    write_png(tmp_path / "s.png", grey)
    with Image.open(tmp_path / "s.png") as img:
        assert (img.format, img.mode, img.size) == ("PNG", "L", (3, 2))
        assert (np.asarray(img) == grey).all()
    with pytest.raises(ValueError, match="2-D uint8"):
        write_png(tmp_path / "x.png", np.zeros((2, 3, 3), np.uint8))
