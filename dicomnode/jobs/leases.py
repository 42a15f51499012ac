"""Leases on claimed rows, the nodes of the cluster, and once-per-cluster locks.

A claim writes a random token and an expiry on the row (``jobs``, ``outbox``). The holder renews
the expiry while it works (:class:`LeaseKeeper`); another node takes the row over only once the
lease has expired, and the first holder can then no longer record a result (the token differs).
A node that restarts releases the claims of its previous run at once (:func:`release_own`),
instead of waiting for them to expire. Expiries are compared with each host's clock: hosts
must keep time with NTP (a skew of seconds against a lease of a minute is harmless).

On PostgreSQL, claims select with ``FOR UPDATE SKIP LOCKED`` (:func:`skip_locked`), and periodic
tasks that must run once across the cluster take an advisory lock (:func:`cluster_lock`). On
SQLite (one host) writers are serialised by the database itself and the lock is always granted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Select, and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from dicomnode import __version__
from dicomnode.db.dml import affected_rows
from dicomnode.db.models import (
    Job,
    JobState,
    NodeRun,
    OutboxItem,
    OutboxState,
    Series,
    SeriesState,
    utcnow,
)
from dicomnode.db.session import SessionFactory

log = logging.getLogger(__name__)
S = TypeVar("S")


def new_token() -> str:
    """A fresh claim token (128 random bits, hex)."""
    return secrets.token_hex(16)


def expiry(lease_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) + timedelta(seconds=lease_s)


def dialect(sessions: SessionFactory) -> str:
    bind = sessions.kw.get("bind")
    return str(bind.dialect.name) if bind is not None else "sqlite"


def skip_locked(query: S, sessions: SessionFactory) -> S:
    """``FOR UPDATE SKIP LOCKED`` on PostgreSQL: concurrent claimers pass each other by."""
    if dialect(sessions) == "postgresql" and isinstance(query, Select):
        return cast(S, query.with_for_update(skip_locked=True))
    return query


def job_takeable(now: datetime) -> Any:
    """Queued, or processing under a lease that expired (or was never written)."""
    return or_(Job.state == JobState.QUEUED,
               and_(Job.state == JobState.PROCESSING,
                    or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)))


def outbox_takeable(now: datetime) -> Any:
    """Pending, due, and not under a live claim."""
    return and_(OutboxItem.state == OutboxState.PENDING, OutboxItem.next_attempt_at <= now,
                or_(OutboxItem.lease_expires_at.is_(None), OutboxItem.lease_expires_at < now))


def renew(sessions: SessionFactory, model: type[Job] | type[OutboxItem], token: str,
          lease_s: float) -> int:
    """Push the expiry of every row still held with ``token``; returns how many."""
    with sessions.begin() as session:
        return affected_rows(session.execute(
            update(model).where(model.lease_token == token, model.lease_expires_at.is_not(None))
            .values(lease_expires_at=expiry(lease_s))
            .execution_options(synchronize_session=False)))


class LeaseKeeper:
    """Renews a claim every ``renew_s`` in a thread while its holder works (``with`` block).

    ``lost`` is set when the rows are no longer held with the token (taken over after the lease
    expired, e.g. during a long database outage). A database error is logged and retried at the
    next renewal: the lease survives an outage shorter than ``lease_s - renew_s``.
    """

    def __init__(self, sessions: SessionFactory, model: type[Job] | type[OutboxItem], token: str,
                 *, lease_s: float, renew_s: float) -> None:
        self.sessions, self.model, self.token = sessions, model, token
        self.lease_s, self.renew_s = lease_s, renew_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{token[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                if renew(self.sessions, self.model, self.token, self.lease_s) == 0:
                    log.error("lease %s… on %s was lost (taken over after it expired)",
                              self.token[:8], self.model.__tablename__)
                    self.lost.set()
                    return
            except SQLAlchemyError as exc:
                log.warning("lease renewal failed, retrying in %.0f s: %s", self.renew_s,
                            type(exc).__name__)


def release_own(sessions: SessionFactory, names: tuple[str, ...], *,
                senders: tuple[str, ...] = ()) -> tuple[int, int]:
    """At start-up: give back the jobs claimed by a previous run of the workers ``names`` and
    the outbox items of the senders ``senders`` (that run is gone: it was us). Returns (jobs,
    outbox items) released."""
    with sessions.begin() as session:
        jobs = list(session.scalars(skip_locked(select(Job).where(
            Job.state == JobState.PROCESSING, Job.worker.in_(names)), sessions)))
        for job in jobs:
            job.state, job.worker = JobState.QUEUED, None
            job.lease_token = job.lease_expires_at = None
            series = session.get(Series, job.series_id)
            if series is not None and series.version == job.version:
                series.state = SeriesState.QUEUED
        items = affected_rows(session.execute(
            update(OutboxItem).where(OutboxItem.claimed_by.in_(senders),
                                     OutboxItem.lease_token.is_not(None))
            .values(lease_token=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)))
    if jobs or items:
        log.warning("released the claims of the previous run of %s: %d jobs, %d outbox items",
                    ", ".join(names + senders), len(jobs), items)
    return len(jobs), items


def register_node(sessions: SessionFactory, name: str, role: str) -> str:
    """Record this run of node ``name`` (``serve`` or ``worker``); returns its run token."""
    token = new_token()
    now = utcnow()
    values = {"name": name, "role": role, "run_token": token, "host": socket.gethostname(),
              "pid": os.getpid(), "version": __version__, "started_at": now, "seen_at": now}
    insert = pg_insert if dialect(sessions) == "postgresql" else sqlite_insert
    stmt = insert(NodeRun).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=[NodeRun.name],
                                      set_={k: v for k, v in values.items() if k != "name"})
    with sessions.begin() as session:
        session.execute(stmt)
    return token


def heartbeat(sessions: SessionFactory, name: str) -> None:
    """Mark node ``name`` as alive now (``status`` shows when each node was last seen)."""
    with sessions.begin() as session:
        session.execute(update(NodeRun).where(NodeRun.name == name).values(seen_at=utcnow()))


def live_nodes(sessions: SessionFactory, role: str, stale_s: float, *,
               now: datetime | None = None) -> list[NodeRun]:
    """Nodes of ``role`` seen within ``stale_s``, or holding a live lease (busy with a long job)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stale_s)
    busy = select(Job.worker).where(Job.state == JobState.PROCESSING, Job.lease_expires_at > now)
    with sessions() as session:
        return list(session.scalars(select(NodeRun).where(
            NodeRun.role == role, or_(NodeRun.seen_at >= cutoff, NodeRun.name.in_(busy)))))


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock`` from a task name."""
    return int.from_bytes(hashlib.sha256(f"dicomnode:{name}".encode()).digest()[:8], "big",
                          signed=True)


@contextmanager
def cluster_lock(sessions: SessionFactory, name: str) -> Iterator[bool]:
    """Yield True when this process may run the once-per-cluster task ``name`` now.

    PostgreSQL: a session advisory lock held on one connection for the block (released when
    the block ends, or by the server when the connection dies). SQLite: always True.
    """
    if dialect(sessions) != "postgresql":
        yield True
        return
    key = _lock_key(name)
    with sessions() as session:
        got = bool(session.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        session.commit()
        try:
            yield got
        finally:
            if got:
                try:
                    session.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    session.commit()
                except SQLAlchemyError:
                    pass  # the connection is gone, and the lock with it
