"""Every accepted transfer syntax: a real compressed file is received, stored as sent, decodable.

Compressed files are made from the real GE head CT slice with DCMTK (dcmcjpeg, dcmcjpls,
dcmcrle, dcmconv); JPEG 2000 files are the real CT slices that pydicom ships. The JPEG 2000
cases run on SQLite and on PostgreSQL (``db_node``: the transfer syntax is a stored column); the
DCMTK cases differ only in the codec, so they run on SQLite.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicomnode.runtime.service import Node
from dicomnode.send.scu import send_files
from tests.conftest import GE_DIR, requires

DCMTK = {
    # name: (tool and options, expected transfer syntax, bits, lossless)
    "jpeg_baseline": (["dcmcjpeg", "+eb"], uid.JPEGBaseline8Bit, 8, False),
    "jpeg_lossless_p14": (["dcmcjpeg", "+el"], uid.JPEGLossless, 16, True),
    "jpeg_lossless_sv1": (["dcmcjpeg", "+e1"], uid.JPEGLosslessSV1, 16, True),
    "jpegls_lossless": (["dcmcjpls", "+el"], uid.JPEGLSLossless, 16, True),
    "rle": (["dcmcrle"], uid.RLELossless, 16, True),
    "deflated": (["dcmconv", "+td"], uid.DeflatedExplicitVRLittleEndian, 16, True),
    "implicit": (["dcmconv", "+ti"], uid.ImplicitVRLittleEndian, 16, True),
}


def _source(tmp_path: Path, bits: int) -> Path:
    """The GE slice with fresh UIDs, reduced to 8 or 12 bits where the codec needs it."""
    ds = pydicom.dcmread(GE_DIR / "01.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if bits < 16:
        hu = ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept)
        if bits == 8:  # brain window 0..80 HU -> 0..255
            pixels = np.clip((hu - 0) * 255 / 80, 0, 255).astype(np.uint8)
            ds.RescaleSlope, ds.RescaleIntercept = 80 / 255, 0
        else:
            pixels = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.BitsAllocated = 8 if bits == 8 else 16
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
        ds.PixelData = pixels.tobytes()
    path = tmp_path / f"src{bits}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _received(node: Node, sop_uid: str) -> Path:
    found = list(node.settings.storage.path.rglob(f"{sop_uid}.dcm"))
    assert len(found) == 1, f"{sop_uid} not stored"
    return found[0]


@requires("dcmcjpeg")
@pytest.mark.parametrize("name", sorted(DCMTK))
def test_dcmtk_encoded_syntax_is_received_and_decodable(name: str, node: Node,
                                                        tmp_path: Path) -> None:
    tool, syntax, bits, lossless = DCMTK[name]
    src = _source(tmp_path, bits)
    out = tmp_path / f"{name}.dcm"
    subprocess.run([*tool, str(src), str(out)], check=True, capture_output=True, timeout=60)
    sent = pydicom.dcmread(out)
    assert sent.file_meta.TransferSyntaxUID == syntax
    report = send_files([out], "DICOMNODE", "127.0.0.1", node.port)
    assert (report.sent, report.failed) == (1, 0)
    stored = pydicom.dcmread(_received(node, sent.SOPInstanceUID))
    assert stored.file_meta.TransferSyntaxUID == syntax  # stored exactly as sent
    pixels = stored.pixel_array
    original = pydicom.dcmread(src).pixel_array
    assert pixels.shape == original.shape == (512, 512)
    if lossless:
        np.testing.assert_array_equal(pixels, original)
    else:  # lossy: the same picture, allowing for codec loss and DCMTK's 8-bit rescaling
        assert np.corrcoef(pixels.ravel(), original.ravel())[0, 1] > 0.95


@pytest.mark.parametrize(("name", "syntax"), [("J2K_pixelrep_mismatch.dcm", uid.JPEG2000Lossless),
                                              ("693_J2KI.dcm", uid.JPEG2000)])
def test_jpeg2000_ct_from_pydicom_is_received_and_decodable(name: str, syntax: str,
                                                            db_node: Node) -> None:
    node = db_node
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} not shipped with this pydicom")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    report = send_files([Path(path)], "DICOMNODE", "127.0.0.1", node.port)
    assert (report.sent, report.failed) == (1, 0)
    stored = pydicom.dcmread(_received(node, ds.SOPInstanceUID))
    assert stored.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(stored.pixel_array, ds.pixel_array)
    assert stored.pixel_array.shape == (ds.Rows, ds.Columns)
