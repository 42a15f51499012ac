"""Priors from PACS, the pipeline's half (``serve``; docs/followup.md).

When a series has no analysed prior in the node, the PACS that ``[followup] query_pacs`` names
is asked (:mod:`dicomnode.query`) with the node's own rules: the patient key of ``compare`` and
the eligibility rules of ``assemble``. Every operation is recorded (``prior_retrievals``). The
moved series arrives at the node's SCP and is analysed like any other (its results delivered,
its images never sent anywhere); the follow-up waits for it, at most ``query_wait_max_s``, then
is analysed without a comparison. Only :mod:`dicomnode.pipeline` calls this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from dicomnode.assemble.selection import Sibling, query_reason
from dicomnode.compare import patient_key, same_patient, scan_datetime
from dicomnode.config import Destination, EligibilitySettings, Settings
from dicomnode.db.models import SeriesState, utcnow
from dicomnode.db.retrievals import (
    MOVED,
    RetrievalState,
    followup_facts,
    holds_series,
    job_retrievals,
    record_operations,
    retrieval_state,
)
from dicomnode.db.session import SessionFactory
from dicomnode.domain import SeriesRef
from dicomnode.query import Peer, PriorRequest, SeriesMatch, StudyMatch, retrieve_prior

log = logging.getLogger(__name__)
_SETTLED = (SeriesState.REJECTED, SeriesState.DONE, SeriesState.FAILED, SeriesState.NOT_ANALYSED)


def pacs_prior_wait(ref: SeriesRef, settings: Settings, sessions: SessionFactory) -> list[str]:
    """The series (moved from the PACS) the claimed series waits for; [] to analyse it now.

    Asks the PACS once per job, and never for a series that was itself fetched as a prior.
    """
    f = settings.followup
    pacs = settings.query_peer()
    if not f.enabled or pacs is None:
        return []
    state = retrieval_state(sessions, ref.job_id)
    if state.attempted:
        return _still_coming(state, f.query_wait_max_s)
    facts = followup_facts(sessions, ref.series_instance_uid)
    key = patient_key(facts.attributes)
    acquired = scan_datetime(facts.attributes)
    if facts.fetched_as_prior or not key or acquired is None:
        return []
    thickness = facts.attributes.get("slice_thickness_mm")
    request = PriorRequest(
        patient_id=key[0], issuer_of_patient_id=key[1], before=acquired,
        min_interval_h=f.min_interval_h, max_interval_h=f.max_interval_h,
        destination_ae=settings.node.ae_title, max_studies=f.query_max_studies,
        max_instances=f.query_max_instances,
        exclude_studies=frozenset({facts.study_instance_uid}),
        thickness_mm=float(thickness) if isinstance(thickness, int | float) else None)

    def patient(study: StudyMatch) -> bool:
        return same_patient(patient_key(study.attributes), key)

    def eligible(series: SeriesMatch, study: Sequence[SeriesMatch]) -> str | None:
        if holds_series(sessions, series.series_instance_uid):  # not analysed here: not again
            return "the node holds it already"
        return series_reason(series, study, settings.eligibility)

    operations = retrieve_prior(_peer(pacs, settings), request, same_patient=patient,
                                reason=eligible)
    record_operations(sessions, ref.job_id, operations)
    for op in operations:
        log.info("prior from PACS: %s at %s: %s (%d matches) %s", op.operation, op.peer,
                 op.outcome, op.matches, op.detail[:200])
    moved = [op.series_instance_uid for op in operations
             if op.operation == "move" and op.outcome in MOVED]
    return moved[:1]


def prior_search(sessions: SessionFactory, job_id: int) -> list[dict[str, Any]]:
    """What the job asked the PACS for its prior, for ``result.json`` (``prior_search``): one
    entry per C-FIND or C-MOVE, so a follow-up without a comparison says why. No patient
    identifiers: the rows hold UIDs, counts and the PACS's status, never the query keys."""
    keys = ("operation", "peer", "outcome", "matches", "completed", "failed", "detail")
    return [{k: row[k] for k in keys} | {"series_instance_uid": row["series_instance_uid"]}
            for row in job_retrievals(sessions, job_id)]


def series_reason(series: SeriesMatch, study: Sequence[SeriesMatch],
                  rules: EligibilitySettings) -> str | None:
    """The eligibility rules a C-FIND answer can be held to; a bone-kernel series is passed
    over when the study has an eligible soft-tissue one (as ``assemble`` does)."""
    siblings = [Sibling(s.series_instance_uid, str(s.attributes.get("kernel", "")), "")
                for s in study if s is not series
                and query_reason(s.attributes, s.n_instances, rules) is None]
    return query_reason(series.attributes, series.n_instances, rules, siblings)


def _peer(pacs: Destination, settings: Settings) -> Peer:
    return Peer(pacs.ae_title, pacs.host, pacs.port,
                calling_ae_title=settings.delivery.calling_ae_title,
                timeout_s=settings.delivery.timeout_s, ssl_context=pacs.client_ssl_context())


def _still_coming(state: RetrievalState, wait_max_s: float) -> list[str]:
    """The moved series while it is being received, assembled or analysed, within the limit."""
    if not state.moved_series_uid or state.moved_series_state in _SETTLED:
        return []
    if state.moved_at is not None and utcnow() - state.moved_at > timedelta(seconds=wait_max_s):
        log.warning("prior from PACS %s not analysed %.0f s after its retrieval: the follow-up "
                    "goes on without it", state.moved_series_uid, wait_max_s)
        return []
    return [state.moved_series_uid]
