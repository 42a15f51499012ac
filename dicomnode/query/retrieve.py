"""Find and retrieve a follow-up's prior: C-FIND studies, C-FIND series, C-MOVE the best one.

Inputs: the PACS, a :class:`PriorRequest`, and two rules the pipeline passes (is a study the
same patient; why a series is not eligible). Outputs: one :class:`~dicomnode.domain.PacsOperation`
per DIMSE operation, in order, for the database. Never raises for a PACS that is down or
refuses: that is an operation with outcome ``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from dicomnode.domain import PacsOperation
from dicomnode.errors import RetrievalError
from dicomnode.query.choose import candidate_studies, choose_series
from dicomnode.query.scu import (
    MoveResult,
    Peer,
    SeriesMatch,
    StudyMatch,
    find_series,
    find_studies,
    move_series,
)

log = logging.getLogger(__name__)
MAX_SERIES = 500  # series per study read from a C-FIND (a study holds tens)
# What a PACS that is down, refuses or answers malformed data makes pynetdicom and us raise.
_FAILURES = (RetrievalError, ValueError, RuntimeError, OSError)
_MOVE_DESTINATION_UNKNOWN = 0xA801


@dataclass(frozen=True)
class PriorRequest:
    """What to look for: the patient, the window before the follow-up, and the limits."""

    patient_id: str
    issuer_of_patient_id: str
    before: datetime  # the follow-up's acquisition
    min_interval_h: float
    max_interval_h: float
    destination_ae: str  # the node's own AE title
    max_studies: int
    max_instances: int
    exclude_studies: frozenset[str] = frozenset()  # the follow-up's own study
    thickness_mm: float | None = None  # the follow-up's: the prior's nearest is preferred


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


SeriesRule = Callable[[SeriesMatch, Sequence[SeriesMatch]], "str | None"]


def retrieve_prior(peer: Peer, request: PriorRequest, *,
                   same_patient: Callable[[StudyMatch], bool],
                   reason: SeriesRule) -> list[PacsOperation]:
    """Query the PACS and move the chosen series to the node; every operation, in order."""
    first = (request.before - timedelta(hours=request.max_interval_h)).date()
    last = (request.before - timedelta(hours=request.min_interval_h)).date()
    start = _now()
    try:
        studies, more = find_studies(peer, request.patient_id, request.issuer_of_patient_id,
                                     first, last, max_matches=request.max_studies)
    except _FAILURES as exc:
        return [PacsOperation("find_studies", peer.address, "failed", start, _now(),
                              detail=_error(exc))]
    candidates = candidate_studies([s for s in studies if same_patient(s)],
                                   before=request.before, min_interval_h=request.min_interval_h,
                                   max_interval_h=request.max_interval_h,
                                   exclude=set(request.exclude_studies))
    detail = (f"{len(studies)} CT studies dated {first:%Y%m%d}-{last:%Y%m%d}"
              + (f" (more not read: limit {request.max_studies})" if more else "")
              + f"; {len(candidates)} of the patient in the window")
    ops = [PacsOperation("find_studies", peer.address, "found" if candidates else "none", start,
                         _now(), matches=len(studies), detail=detail,
                         study_instance_uid=candidates[0].study_instance_uid if candidates else "")]
    for study in candidates:
        start = _now()
        try:
            found = find_series(peer, study.study_instance_uid, max_matches=MAX_SERIES)
        except _FAILURES as exc:
            return ops + [PacsOperation("find_series", peer.address, "failed", start, _now(),
                                        study_instance_uid=study.study_instance_uid,
                                        detail=_error(exc))]
        text = {k: v for k, v in study.attributes.items() if k == "study_description"}
        series = [replace(s, attributes={**text, **s.attributes}) for s in found]
        chosen, notes = choose_series(series, lambda s: reason(s, series),  # noqa: B023
                                      max_instances=request.max_instances,
                                      thickness_mm=request.thickness_mm)
        ops.append(PacsOperation(
            "find_series", peer.address, "found" if chosen else "none", start, _now(),
            matches=len(series), study_instance_uid=study.study_instance_uid,
            series_instance_uid=chosen.series_instance_uid if chosen else "",
            detail="; ".join(notes)[:4000]))
        if chosen is not None:
            return ops + [_move(peer, request, study.study_instance_uid, chosen)]
    return ops


def _move(peer: Peer, request: PriorRequest, study_uid: str,
          series: SeriesMatch) -> PacsOperation:
    start = _now()
    base = PacsOperation("move", peer.address, "failed", start, start,
                         study_instance_uid=study_uid,
                         series_instance_uid=series.series_instance_uid)
    try:
        result = move_series(peer, study_uid, series.series_instance_uid, request.destination_ae,
                             max_instances=request.max_instances)
    except _FAILURES as exc:
        return replace(base, finished_at=_now(), detail=_error(exc))
    outcome, detail = _move_outcome(result, request)
    log.info("prior from PACS: C-MOVE of %s: %s, %d instances", series.series_instance_uid,
             outcome, result.completed)
    return replace(base, outcome=outcome, finished_at=_now(), matches=result.announced,
                   completed=result.completed, failed=result.failed, warning=result.warning,
                   detail=detail)


def _error(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RetrievalError) else f"{type(exc).__name__}: {exc}"


def _move_outcome(result: MoveResult, request: PriorRequest) -> tuple[str, str]:
    status = f"status 0x{result.status:04X}" if result.status >= 0 else "no status"
    if result.cancelled:
        return "cancelled", (f"{result.announced} instances announced, more than the limit of "
                             f"{request.max_instances}: cancelled")
    if result.status == _MOVE_DESTINATION_UNKNOWN:
        return "failed", (f"{status}: the PACS does not know the move destination "
                          f"{request.destination_ae!r} (add the node to its DICOM modalities)")
    if result.completed > 0 and result.failed == 0 and result.status == 0:
        return "retrieved", status
    if result.completed + result.warning > 0:
        return "partial", f"{status}, {result.failed} sub-operations failed"
    return "failed", f"{status}, {result.failed} sub-operations failed"
