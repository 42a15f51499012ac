"""The plain-header reader gives what pydicom gives, or declines (receive/header.py).

Every data set here goes through both readers: where the plain one reads it, the checks and
``read_header`` must reach the same outcome, value for value, as on pydicom's decode.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode

from dicomnode.errors import InstanceRejected
from dicomnode.receive.checks import check_encoding, check_image, check_uid, read_header
from dicomnode.receive.header import Header, read_plain_header
from tests.conftest import GE_DIR
from tests.ct_series import make_series

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def encode(ds: Dataset, syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


def outcome(ds: Dataset | Header, syntax: str) -> dict[str, Any]:
    """Everything the store takes from a data set, or the refusal it meets."""
    found: dict[str, Any] = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "PatientID", "AccessionNumber"):
        found[keyword] = str(ds.get(keyword, ""))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        try:
            found[keyword] = check_uid(ds.get(keyword), keyword)
        except InstanceRejected as exc:
            found[keyword] = f"refused: {exc.reason}"
    try:
        check_image(ds, syntax)
        found["image"] = "ok"
        found["header"] = read_header(ds)
    except InstanceRejected as exc:
        found["image"] = f"refused {exc.status:#06x}: {exc.reason}"
    except Exception as exc:  # noqa: BLE001 - compared, not judged
        found["image"] = f"{type(exc).__name__}: {exc}"
    return found


def compare(raw: bytes, syntax: str) -> bool:
    """Assert both readers agree; True when the plain reader read it (did not decline)."""
    header = read_plain_header(memoryview(raw), syntax)
    if header is None:
        return False
    ds = decode(DicomBytesIO(raw), syntax == ImplicitVRLittleEndian, True)
    check_encoding(ds, syntax)  # what the plain reader accepts, pydicom's reading accepts
    assert outcome(header, syntax) == outcome(ds, syntax)
    return True


def variants(template: Dataset) -> list[Dataset]:
    """Plain CT images with the corners the reader must get right."""
    out = make_series(template, 3)
    a, b, c = (copy.deepcopy(ds) for ds in out)
    a.ConvolutionKernel = ["BONE", "SHARP"]  # several values
    a.SeriesDescription = "Head 5mm \\ axial "  # spaces around a delimiter
    a.ImageType = "DERIVED"  # one value
    a.PatientID = ""
    a.SliceThickness = None  # present, empty
    b.SOPInstanceUID = b.SOPInstanceUID + "1"[: len(b.SOPInstanceUID) % 2]  # odd length, padded
    b.PixelSpacing = ["0.5", "+.5e0"]
    b.InstanceNumber = "+7"
    b.NumberOfFrames = 1
    b.Rows = 64  # Pixel Data no longer matches: the same refusal from both readers
    del c.SeriesNumber
    c.BodyPartExamined = "HEAD "
    d = copy.deepcopy(out[0])  # contrast and follow-up attributes (checks.read_header)
    d.ContrastBolusAgent = "IOHEXOL "
    d.ContrastBolusRoute = "IV"
    d.ContrastBolusVolume = "50.5"
    d.ContrastBolusIngredient = "IODINE"
    d.IssuerOfPatientID = "HOSP"
    d.PatientBirthDate = "19500101"
    d.PatientSex = "F"
    d.AcquisitionDateTime = "20260101120000.5 "
    d.AcquisitionDate, d.AcquisitionTime = "20260101", "120000"
    d.SeriesDate, d.SeriesTime = "20260101", "115959.123"
    d.StudyDate, d.StudyTime = ["20260101", "20260102"], ""  # several values; empty
    return [*out, a, b, c, d]


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_plain_images_are_read_as_pydicom_reads_them(ct_template: Dataset, syntax: str) -> None:
    read = [compare(encode(ds, syntax), syntax) for ds in variants(ct_template)]
    assert all(read), read  # the plain case must not fall back to pydicom


@pytest.mark.skipif(not GE_DIR.is_dir(), reason="shared GE series absent")
def test_a_real_series_is_read_as_pydicom_reads_it() -> None:
    for path in sorted(GE_DIR.glob("*.dcm"))[:8]:
        ds = pydicom.dcmread(path)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assert compare(encode(ds, syntax), syntax), path.name


def test_unusual_data_sets_are_left_to_pydicom(ct_template: Dataset) -> None:
    ds = make_series(ct_template, 1)[0]
    enhanced = copy.deepcopy(ds)
    enhanced.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    latin = copy.deepcopy(ds)
    latin.SeriesDescription = "Schädel"
    grouped = copy.deepcopy(ds)  # contrast use is read from functional groups by pydicom
    grouped.SharedFunctionalGroupsSequence = [Dataset()]
    raw = encode(ds, ExplicitVRLittleEndian)
    declined = [
        read_plain_header(memoryview(raw), "1.2.840.10008.1.2.4.90"),  # compressed syntax
        read_plain_header(memoryview(raw), ImplicitVRLittleEndian),  # explicit bytes
        read_plain_header(memoryview(encode(ds, ImplicitVRLittleEndian)), ExplicitVRLittleEndian),
        read_plain_header(memoryview(raw[:-100]), ExplicitVRLittleEndian),  # cut short
        read_plain_header(memoryview(raw + b"\x00" * 3), ExplicitVRLittleEndian),
        read_plain_header(memoryview(encode(enhanced, ExplicitVRLittleEndian)),
                          ExplicitVRLittleEndian),
        read_plain_header(memoryview(encode(latin, ExplicitVRLittleEndian)),
                          ExplicitVRLittleEndian),
        read_plain_header(memoryview(encode(grouped, ExplicitVRLittleEndian)),
                          ExplicitVRLittleEndian),
    ]
    assert declined == [None] * len(declined)


@pytest.fixture(scope="module")
def quiet_pydicom() -> Any:
    mode = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    yield
    pydicom_config.settings.reading_validation_mode = mode


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), syntax=st.sampled_from(SYNTAXES),
       changes=st.integers(1, 6))
def test_mutated_headers_agree_or_are_declined(quiet_pydicom: Any, ct_template: Dataset,
                                               seed: int, syntax: str, changes: int) -> None:
    rng = random.Random(seed)
    raw = bytearray(encode(make_series(ct_template, 1)[0], syntax))
    header_end = raw.find(b"\xe0\x7f\x10\x00")  # Pixel Data: mutate what comes before it
    for _ in range(changes):
        at = rng.randrange(header_end)
        match rng.randrange(3):
            case 0:
                raw[at] = rng.randrange(256)
            case 1:
                raw[at:at] = bytes([rng.randrange(256)])
            case _:
                del raw[at]
    try:
        compare(bytes(raw), syntax)
    except (InstanceRejected, AssertionError):
        raise
    except Exception:  # noqa: BLE001 - pydicom cannot decode it: the plain reader must decline
        assert read_plain_header(memoryview(bytes(raw)), syntax) is None


def test_tests_use_the_same_reader_as_the_handler() -> None:
    from dicomnode.receive import handlers

    assert handlers.read_plain_header is read_plain_header
    assert Path(handlers.__file__).parent == Path(read_plain_header.__code__.co_filename).parent
