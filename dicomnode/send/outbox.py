"""Durable outbox: every output is a file and a row before anything is sent.

Inputs: a finished job's outputs (already fsynced files under ``storage/_results``).
Outputs: one ``outbox`` row per (object, destination). Side effects: C-STORE or STOW-RS
(``kind = "dicomweb"``, :mod:`dicomnode.send.stow`) to destinations;
rows move to ``sent`` or ``failed`` (permanent), or get a later ``next_attempt_at`` (transient,
exponential backoff). One bad item or destination never blocks the others.

Several nodes deliver from one outbox: a sender claims a batch of due items with a lease
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL), renews it while it sends, and records outcomes only
for the items it still holds, so no item is sent by two nodes at once. A sender that died leaves
its claims to expire (or to be released when it restarts); the items are then sent again with
the same UIDs, which the PACS stores once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from dicomnode.config import Destination, Settings
from dicomnode.db.dml import affected_rows
from dicomnode.db.models import DestinationPause, Job, OutboxItem, OutboxState, utcnow
from dicomnode.db.session import SessionFactory
from dicomnode.jobs.leases import LeaseKeeper, expiry, new_token, outbox_takeable, skip_locked
from dicomnode.send.scu import ItemOutcome, store_items
from dicomnode.send.stow import stow_items

log = logging.getLogger(__name__)
_BATCH = 200


def enqueue(sessions: SessionFactory, job_id: int, items: list[dict[str, Any]],
            destinations: tuple[Destination, ...]) -> int:
    """Add rows for each output each destination wants; existing rows are kept (idempotent)."""
    with sessions.begin() as session:
        return enqueue_in(session, job_id, items, destinations)


def enqueue_in(session: Any, job_id: int, items: list[dict[str, Any]],
               destinations: tuple[Destination, ...]) -> int:
    """``enqueue`` inside the caller's transaction."""
    added = 0
    for dest in destinations:
        for item in items:
            if item["kind"] in dest.outputs:
                added += _add(session, job_id, item, dest.name)
    return added


def _add(session: Any, job_id: int, item: dict[str, Any], destination: str) -> int:
    exists = session.scalar(select(OutboxItem.id).where(
        OutboxItem.sop_instance_uid == item["sop_instance_uid"],
        OutboxItem.destination == destination))
    if exists is not None:
        return 0
    session.add(OutboxItem(job_id=job_id, kind=item["kind"], destination=destination,
                           path=item["path"], sop_class_uid=item["sop_class_uid"],
                           sop_instance_uid=item["sop_instance_uid"]))
    return 1


def resend(sessions: SessionFactory, job_id: int) -> int:
    """Send a job's outputs again to every destination (same UIDs); returns how many rows."""
    with sessions.begin() as session:
        if session.get(Job, job_id) is None:
            raise KeyError(f"job {job_id} does not exist")
        return affected_rows(session.execute(
            update(OutboxItem).where(OutboxItem.job_id == job_id)
            .values(state=OutboxState.PENDING, attempts=0, next_attempt_at=utcnow(),
                    last_error="")))


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    return float(min(max_s, base_s * 2 ** max(0, attempts - 1)))


def claim_due(sessions: SessionFactory, sender: str, lease_s: float, *,
              now: datetime | None = None) -> tuple[str, list[OutboxItem]]:
    """Claim up to a batch of due items for ``sender``; returns (token, items)."""
    now = now or utcnow()
    token = new_token()
    with sessions.begin() as session:
        # Destinations paused from the console keep their items pending, untried.
        paused = select(DestinationPause.destination)
        ids = list(session.scalars(skip_locked(
            select(OutboxItem.id).where(outbox_takeable(now),
                                        OutboxItem.destination.not_in(paused))
            # Fewest attempts first: an object that keeps failing (e.g. makes the peer abort
            # the association) goes to the back and cannot starve the objects behind it.
            .order_by(OutboxItem.attempts, OutboxItem.id).limit(_BATCH), sessions)))
        if not ids:
            return token, []
        session.execute(update(OutboxItem).where(OutboxItem.id.in_(ids), outbox_takeable(now))
                        .values(claimed_by=sender, lease_token=token,
                                lease_expires_at=expiry(lease_s, now))
                        .execution_options(synchronize_session=False))
        due = list(session.scalars(select(OutboxItem).where(OutboxItem.lease_token == token)
                                   .order_by(OutboxItem.attempts, OutboxItem.id)))
    return token, due


def deliver_due(sessions: SessionFactory, settings: Settings, *,
                now: datetime | None = None, sender: str | None = None) -> dict[str, int]:
    """Claim the due items and send them, one association per destination; returns counts by
    result."""
    now = now or utcnow()
    w = settings.worker
    token, due = claim_due(sessions, sender or settings.node_name, w.lease_s, now=now)
    if not due:
        return {}
    with LeaseKeeper(sessions, OutboxItem, token, lease_s=w.lease_s, renew_s=w.renew_s):
        return _deliver(sessions, settings, due, token, now)


def _deliver(sessions: SessionFactory, settings: Settings, due: list[OutboxItem], token: str,
             now: datetime) -> dict[str, int]:
    by_dest: dict[str, list[OutboxItem]] = defaultdict(list)
    for item in due:
        by_dest[item.destination].append(item)
    destinations = {d.name: d for d in settings.destinations}
    counts: dict[str, int] = defaultdict(int)
    root = settings.storage.path
    for name, items in by_dest.items():
        dest = destinations.get(name)
        if dest is None:
            outcomes = {i.sop_instance_uid: ItemOutcome("permanent",
                                                        f"destination {name!r} not configured")
                        for i in items}
        else:
            batch = [(i.sop_instance_uid, root / i.path, i.sop_class_uid) for i in items]
            try:
                if dest.kind == "dicomweb":
                    outcomes = stow_items(batch, dest, timeout_s=settings.delivery.timeout_s)
                else:
                    outcomes = store_items(batch, dest.ae_title, dest.host, dest.port,
                                           calling_aet=settings.delivery.calling_ae_title,
                                           timeout_s=settings.delivery.timeout_s,
                                           ssl_context=dest.client_ssl_context())
            except Exception as exc:  # noqa: BLE001 - one destination must not stop the others
                log.exception("delivery to %s failed unexpectedly", name)
                outcomes = {i.sop_instance_uid: ItemOutcome("transient", f"{type(exc).__name__}: "
                                                            f"{exc}") for i in items}
        _record(sessions, settings, items, outcomes, now, token)
        for o in outcomes.values():
            counts[o.result] += 1
    return dict(counts)


def _record(sessions: SessionFactory, settings: Settings, items: list[OutboxItem],
            outcomes: dict[str, ItemOutcome], now: datetime, token: str | None = None) -> None:
    d = settings.delivery
    with sessions.begin() as session:
        for item in items:
            outcome = outcomes.get(item.sop_instance_uid,
                                   ItemOutcome("transient", "not attempted"))
            row = session.get(OutboxItem, item.id, with_for_update=token is not None)
            if row is None:
                continue
            if token is not None and row.lease_token != token:
                log.warning("%s to %s: claim taken over, outcome not recorded", row.kind,
                            row.destination)
                continue
            row.lease_token = row.lease_expires_at = None
            if outcome.result == "deferred":
                continue  # deferred: not tried, so still due, and no attempt is counted
            row.attempts += 1
            row.last_error = "" if outcome.result == "sent" else outcome.detail
            if outcome.result == "sent":
                row.state, row.sent_at = OutboxState.SENT, now
            elif outcome.result == "permanent":
                row.state = OutboxState.FAILED
                log.error("%s %s to %s failed permanently: %s", row.kind, row.sop_instance_uid,
                          row.destination, outcome.detail)
                if row.kind == "seg" and "not accepted" in outcome.detail:
                    _fall_back_to_overlays(session, row)
            else:
                row.next_attempt_at = now + timedelta(seconds=backoff_s(
                    row.attempts, d.retry_base_s, d.retry_max_s))
                log.warning("%s to %s will be retried (attempt %d): %s", row.kind,
                            row.destination, row.attempts, outcome.detail)


def _fall_back_to_overlays(session: Any, row: OutboxItem) -> None:
    """A destination that refuses SEG still gets the overlay images any viewer can show."""
    job = session.get(Job, row.job_id)
    items = [i for i in (job.outputs or {}).get("items", []) if i["kind"] == "overlay"]
    added = sum(_add(session, row.job_id, i, row.destination) for i in items)
    if added:
        log.warning("destination %s does not accept SEG: sending %d overlay images instead",
                    row.destination, added)


def delivery_summary(sessions: SessionFactory, job_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per job: counts by state and the last permanent errors (for ``dicomnode status``)."""
    out: dict[int, dict[str, Any]] = {}
    if not job_ids:
        return out
    with sessions() as session:
        # Columns, not OutboxItem: status reads a database at an older revision too.
        for item in session.execute(select(
                OutboxItem.job_id, OutboxItem.state, OutboxItem.kind, OutboxItem.destination,
                OutboxItem.last_error).where(OutboxItem.job_id.in_(job_ids))):
            s = out.setdefault(item.job_id, {"sent": 0, "pending": 0, "failed": 0,
                                             "errors": []})
            s[item.state] += 1
            if item.state == OutboxState.FAILED and len(s["errors"]) < 3:
                s["errors"].append(f"{item.kind} -> {item.destination}: {item.last_error}")
    return out

