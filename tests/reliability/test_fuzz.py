"""Property-based fuzzing (hypothesis) of the dataset checks a received instance goes through.

Whatever the input, the checks either accept it or refuse it with ``InstanceRejected`` (a DIMSE
status and a reason); nothing else may escape, nothing may be written outside the storage root,
and what is recorded must be strict JSON (no NaN). Example counts follow the profile.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import decode

from dicomnode.assemble.selection import evaluate
from dicomnode.assemble.stack_summary import series_geometry
from dicomnode.config import EligibilitySettings
from dicomnode.db.session import make_sessions
from dicomnode.errors import InstanceRejected
from dicomnode.receive.checks import check_encoding, check_image, check_uid, read_header
from dicomnode.receive.instance_store import InstanceStore
from tests.ct_series import make_series
from tests.reliability.conftest import record, scale

EXAMPLES = scale(150, 3000)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
UID_PART = st.one_of(st.text(max_size=80), st.from_regex(r"[0-9.]{0,70}", fullmatch=True),
                     st.sampled_from(["..", "../..", "/", "1.2/../3", "1..2", ".1", "1."]))
NUMBER_TEXT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str),
                        st.sampled_from(["", "x", "1e309", "-0", "NaN", " 1 "]))
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _record_counts() -> Iterator[None]:
    # pydicom would warn (and log) about every invalid value we make on purpose: slow and noise.
    modes = (pydicom_config.settings.reading_validation_mode,
             pydicom_config.settings.writing_validation_mode)
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    yield
    (pydicom_config.settings.reading_validation_mode,
     pydicom_config.settings.writing_validation_mode) = modes
    record("fuzz", f"hypothesis, {EXAMPLES} examples per property: UIDs as path parts, pixel "
           "and geometry headers, mutated encodings through decode and the store, assembly",
           examples_per_property=EXAMPLES, properties=4, outcomes=dict(sorted(COUNTS.items())),
           unexpected_exceptions=0)


def _count(name: str, accepted: bool) -> None:
    key = f"{name}_{'accepted' if accepted else 'refused'}"
    COUNTS[key] = COUNTS.get(key, 0) + 1


@FUZZ
@given(value=UID_PART)
def test_check_uid_returns_only_path_safe_values(value: str) -> None:
    root = Path("/storage/root")
    try:
        uid = check_uid(value, "SeriesInstanceUID")
    except InstanceRejected as exc:
        assert exc.status == 0xC000 and exc.reason
        _count("uid", False)
        return
    assert len(uid) <= 64 and uid.replace(".", "").isdigit() and ".." not in uid
    assert (root / uid / uid).resolve().is_relative_to(root)
    _count("uid", True)


def _fuzzed(template: Dataset, data: st.DataObject) -> tuple[Dataset, str]:
    """The template with drawn header values; pydicom refusing a value is not a finding."""
    try:
        return _draw_header(template, data)
    except (ValueError, TypeError, OverflowError, KeyError):
        reject()
        raise  # not reached: reject() raises


def _draw_header(template: Dataset, data: st.DataObject) -> tuple[Dataset, str]:
    ds = copy.deepcopy(template)
    draw = data.draw
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel",
                    "PixelRepresentation"):
        if draw(st.booleans()):
            value = draw(st.one_of(st.integers(-1, 70000), st.none()))
            if value is None:
                del ds[keyword]
            else:
                ds[keyword].value = value
    if draw(st.booleans()):
        ds.PhotometricInterpretation = draw(st.sampled_from(
            ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "", "YBR_FULL"]))
    for keyword, n in (("PixelSpacing", 2), ("ImagePositionPatient", 3),
                       ("ImageOrientationPatient", 6)):
        if draw(st.booleans()):
            ds[keyword].value = draw(st.lists(NUMBER_TEXT, min_size=0, max_size=n + 1))
    for keyword in ("SliceThickness", "NumberOfFrames", "InstanceNumber"):
        if draw(st.booleans()):
            setattr(ds, keyword, draw(NUMBER_TEXT))
    if draw(st.booleans()):
        ds.ImageType = draw(st.lists(st.text(max_size=20), max_size=40))
    if draw(st.booleans()):
        size = draw(st.integers(0, 2 * len(ds.PixelData)))
        ds.PixelData = (ds.PixelData * 2)[:size]
    syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                   JPEG2000Lossless]))
    return ds, syntax


def test_header_checks_refuse_or_accept_only(ct_template: Dataset) -> None:
    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        ds, syntax = _fuzzed(ct_template, data)
        try:
            check_image(ds, syntax)
            attrs, geometry = read_header(ds)
        except InstanceRejected as exc:
            assert exc.status in (0xA900, 0xC000) and exc.reason
            _count("header", False)
            return
        json.dumps([attrs, geometry], allow_nan=False)  # strict JSON: no NaN or inf recorded
        assert len(attrs["image_type"]) <= 16
        _count("header", True)

    check()


def _encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_received_bytes_are_stored_or_refused(tmp_path: Path, ct_template: Dataset,
                                              db_url: str) -> None:
    """Mutated encodings through decode (as pynetdicom does) and the durable store, on SQLite
    and on PostgreSQL (``db_url``: mutated header strings reach text columns)."""
    root = tmp_path / "storage"
    store = InstanceStore(root, make_sessions(db_url), fsync=False)
    good = make_series(ct_template, 1)[0]
    file_bytes = _encoded(good)
    split = len(file_bytes) - len(good.PixelData) - 12  # the data set starts after the meta

    @FUZZ
    @given(edits=st.lists(st.tuples(st.integers(0, split - 1), st.binary(min_size=0, max_size=8),
                                    st.integers(0, 8)), min_size=1, max_size=6),
           cut=st.one_of(st.none(), st.integers(0, len(file_bytes))),
           syntax=st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    def check(edits: list[tuple[int, bytes, int]], cut: int | None, syntax: str) -> None:
        body = bytearray(file_bytes[file_bytes.index(b"\x08\x00\x05\x00"):])
        for at, insert, remove in edits:
            at = min(at, len(body))
            body[at:at + remove] = insert
        if cut is not None:
            body = body[:cut]
        ts = UID(syntax)

        def decoded() -> Dataset:
            ds = decode(io.BytesIO(bytes(body)), ts.is_implicit_VR, ts.is_little_endian,
                        ts.is_deflated)
            check_encoding(ds, syntax)
            return ds

        try:
            outcome = store.store(bytes(body), decoded, sop_class_uid=str(good.SOPClassUID),
                                  sop_instance_uid=str(good.SOPInstanceUID) if edits[0][0] % 2
                                  else "1.2.3.4", transfer_syntax=syntax)
        except InstanceRejected as exc:
            assert exc.status in (0xA700, 0xA900, 0xC000) and exc.reason
            _count("bytes", False)
            return
        assert outcome.path is None or outcome.path.resolve().is_relative_to(root.resolve())
        _count("bytes", True)

    try:
        check()
    finally:
        store.close()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(root)
               and not p.name.startswith("db.sqlite")]
    assert not outside


def test_assembly_judges_any_geometry() -> None:
    """Any headers read_header can produce: a reason or None, and strict-JSON geometry."""
    finite = st.floats(-1e4, 1e4, allow_nan=False)
    instance = st.fixed_dictionaries({
        "ipp": st.one_of(st.none(), st.lists(finite, min_size=3, max_size=3)),
        "iop": st.one_of(st.none(), st.lists(finite, min_size=6, max_size=6),
                         st.sampled_from([[1, 0, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0]])),
        "matrix": st.one_of(st.none(), st.lists(st.integers(0, 2048), min_size=2, max_size=2)),
        "pixel_spacing_mm": st.one_of(st.none(), st.lists(finite, min_size=2, max_size=2)),
    })

    @st.composite
    def stack(draw: st.DrawFn) -> list[dict]:
        """A regular axial stack of 10 to 30 slices, some slices replaced by drawn ones."""
        n = draw(st.integers(10, 30))
        gap = draw(st.floats(0.5, 5))
        out = [{"ipp": [0.0, 0.0, i * gap], "iop": [1, 0, 0, 0, 1, 0], "matrix": [512, 512],
                "pixel_spacing_mm": [0.45, 0.45]} for i in range(n)]
        for index, replacement in draw(st.lists(st.tuples(st.integers(0, n - 1), instance),
                                                max_size=3)):
            out[index] = replacement
        return out

    @FUZZ
    @given(instances=st.one_of(st.lists(instance, max_size=30), stack()),
           attrs=st.fixed_dictionaries({
        "modality": st.sampled_from(["CT", "MR", ""]),
        "image_type": st.sampled_from([["ORIGINAL", "PRIMARY", "AXIAL"], []]),
        "slice_thickness_mm": st.one_of(st.none(), finite, st.floats(0.5, 6)),
        "pixel_spacing_mm": st.one_of(st.none(), st.lists(finite, min_size=2, max_size=2)),
        "body_part": st.sampled_from(["HEAD", ""]), "columns": st.integers(0, 1024)}))
    def check(instances: list[dict], attrs: dict) -> None:
        geometry = series_geometry(instances)
        reason = evaluate(attrs, geometry, len(instances), EligibilitySettings())
        assert reason is None or isinstance(reason, str) and reason
        json.dumps(geometry, allow_nan=False)
        _count("assembly", reason is None)

    check()
