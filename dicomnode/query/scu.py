"""C-FIND and C-MOVE as a service class user, Study Root (PS3.4 C.6.2): a follow-up's prior.

Inputs: the PACS (:class:`Peer`), a patient and a date range, a study, a series.
Outputs: the matches (:class:`StudyMatch`, :class:`SeriesMatch`, their attributes under the keys
``receive.checks.read_header`` uses) and the C-MOVE's sub-operation counts (:class:`MoveResult`).
Side effects: the PACS sends the moved series to the node's own AE title, whose SCP receives it
like any other series. Every failure raises :class:`~dicomnode.errors.RetrievalError`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomnode.errors import RetrievalError

log = logging.getLogger(__name__)
FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove
_PENDING = (0xFF00, 0xFF01)
_CANCELLED = 0xFE00

# Return keys -> the attribute names of receive.checks.read_header (eligibility, matching).
STUDY_KEYS = {"PatientID": "patient_id", "IssuerOfPatientID": "issuer_of_patient_id",
              "PatientBirthDate": "patient_birth_date", "PatientSex": "patient_sex",
              "StudyDate": "study_date", "StudyTime": "study_time",
              "StudyDescription": "study_description"}
SERIES_KEYS = {"Modality": "modality", "SeriesDescription": "series_description",
               "BodyPartExamined": "body_part", "ProtocolName": "protocol_name",
               "ConvolutionKernel": "kernel", "SeriesDate": "series_date",
               "SeriesTime": "series_time", "ContrastBolusAgent": "contrast_agent"}


@dataclass(frozen=True)
class Peer:
    """The PACS queried: its AE title and address, our calling AE title, and the DICOM TLS
    client context (None: no TLS)."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "DICOMNODE"
    timeout_s: float = 30.0
    ssl_context: ssl.SSLContext | None = None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StudyMatch:
    """One study of the patient the PACS holds."""

    study_instance_uid: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SeriesMatch:
    """One series of a study; ``n_instances`` None when the PACS does not say."""

    series_instance_uid: str
    n_instances: int | None
    attributes: dict[str, Any]


@dataclass(frozen=True)
class MoveResult:
    """The final C-MOVE status and its sub-operations (PS3.4 C.4.2.1.4)."""

    status: int
    completed: int
    failed: int
    warning: int
    announced: int  # completed + failed + warning + remaining, as the PACS first announced
    cancelled: bool  # we cancelled it: the PACS announced more than the limit


@contextmanager
def _association(peer: Peer, model: str) -> Iterator[Association]:
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = peer.timeout_s
    ae.connection_timeout = peer.timeout_s
    ae.add_requested_context(model)
    kwargs: dict[str, Any] = {"ae_title": peer.ae_title}
    if peer.ssl_context is not None:
        kwargs["tls_args"] = (peer.ssl_context, peer.host)
    try:
        assoc = ae.associate(peer.host, peer.port, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise RetrievalError(f"association with {peer.address} failed: {exc}") from exc
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "not established (PACS down or unreachable)"
        raise RetrievalError(f"association with {peer.address} {why}")
    ok = False
    try:
        yield assoc
        ok = True
    finally:
        if assoc.is_established:
            assoc.release() if ok else assoc.abort()


def _status(status: Dataset | None, what: str) -> int:
    if status is None or "Status" not in status:
        # Orthanc, for one, aborts a query from an AE title it does not know.
        raise RetrievalError(f"{what}: no response (timeout, or the PACS aborted: does it know "
                             "our calling AE title?)")
    return int(status.Status)


def _find(peer: Peer, query: Dataset, max_matches: int) -> tuple[list[Dataset], bool]:
    """The matches (at most ``max_matches``: then C-CANCEL) and whether there were more."""
    found: list[Dataset] = []
    more = False
    with _association(peer, FIND) as assoc:
        for status, identifier in assoc.send_c_find(query, FIND):
            code = _status(status, "C-FIND")
            if code in _PENDING:
                if len(found) < max_matches and identifier is not None:
                    found.append(identifier)
                elif not more:  # one more than the limit: stop the PACS searching
                    more = True
                    assoc.send_c_cancel(1, query_model=FIND)
            elif code in (0x0000, _CANCELLED):
                break
            else:
                raise RetrievalError(f"C-FIND at {peer.address} failed: status 0x{code:04X}")
    return found, more


def _values(ds: Dataset, keys: dict[str, str]) -> dict[str, Any]:
    """The non-empty return keys of an identifier, under read_header's names."""
    out: dict[str, Any] = {}
    for keyword, name in keys.items():
        value = ds.get(keyword)
        text = str(value).strip() if value is not None else ""
        if text:
            out[name] = text.upper() if name == "body_part" else text
    return out


def find_studies(peer: Peer, patient_id: str, issuer: str, first: date, last: date, *,
                 max_matches: int) -> tuple[list[StudyMatch], bool]:
    """The patient's CT studies dated ``first``..``last`` (Study Root, STUDY level)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in STUDY_KEYS:
        setattr(query, keyword, "")
    query.PatientID = patient_id
    if issuer:
        query.IssuerOfPatientID = issuer
    query.StudyDate = f"{first:%Y%m%d}-{last:%Y%m%d}"
    query.StudyInstanceUID = ""
    query.ModalitiesInStudy = "CT"
    found, more = _find(peer, query, max_matches)
    return [StudyMatch(str(ds.StudyInstanceUID), _values(ds, STUDY_KEYS))
            for ds in found if ds.get("StudyInstanceUID")], more


def find_series(peer: Peer, study_uid: str, *, max_matches: int) -> list[SeriesMatch]:
    """The series of one study with the keys the eligibility rules read (SERIES level)."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    for keyword in SERIES_KEYS:
        setattr(query, keyword, "")
    query.NumberOfSeriesRelatedInstances = None
    query.ImageType = ""  # optional keys: a PACS may leave them out
    query.SliceThickness = None
    found, _ = _find(peer, query, max_matches)
    out = []
    for ds in found:
        if not ds.get("SeriesInstanceUID"):
            continue
        attrs = _values(ds, SERIES_KEYS)
        if ds.get("ImageType"):
            values = ds.ImageType
            attrs["image_type"] = [str(v).upper() for v in
                                   ([values] if isinstance(values, str) else values)]
        thickness = _number(ds, "SliceThickness")
        if thickness is not None:
            attrs["slice_thickness_mm"] = thickness
        count = _number(ds, "NumberOfSeriesRelatedInstances")
        out.append(SeriesMatch(str(ds.SeriesInstanceUID),
                               int(count) if count is not None else None, attrs))
    return out


def _number(ds: Dataset, keyword: str) -> float | None:
    """A DS or IS value; None when absent, empty or not a number (then it is not known)."""
    try:
        value = ds.get(keyword)
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def move_series(peer: Peer, study_uid: str, series_uid: str, destination_ae: str, *,
                max_instances: int) -> MoveResult:
    """C-MOVE one series to ``destination_ae`` (the node); cancelled when the PACS announces
    more than ``max_instances`` sub-operations."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    counts = {"completed": 0, "failed": 0, "warning": 0}
    announced, cancelled, code = 0, False, -1
    with _association(peer, MOVE) as assoc:
        for status, _ in assoc.send_c_move(query, destination_ae, MOVE):
            code = _status(status, "C-MOVE")
            for key, keyword in (("completed", "NumberOfCompletedSuboperations"),
                                 ("failed", "NumberOfFailedSuboperations"),
                                 ("warning", "NumberOfWarningSuboperations")):
                if status.get(keyword) is not None:
                    counts[key] = int(status.get(keyword))
            remaining = int(status.get("NumberOfRemainingSuboperations") or 0)
            announced = max(announced, sum(counts.values()) + remaining)
            if code not in _PENDING:
                break
            if announced > max_instances and not cancelled:
                log.warning("C-MOVE of %s: %d instances announced, more than %d: cancelled",
                            series_uid, announced, max_instances)
                cancelled = True
                assoc.send_c_cancel(1, query_model=MOVE)
    return MoveResult(code, counts["completed"], counts["failed"], counts["warning"], announced,
                      cancelled)
