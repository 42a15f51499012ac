"""Group commit of instance rows: one writer thread, one transaction per batch.

Handlers of concurrent associations hand the row of a file they have just written and linked
into place to the writer, and wait. The writer fsyncs each touched folder once and, at the same
time, writes every waiting row in one transaction (one WAL fsync), each with a *pending* mark;
the handler's own pool thread fsyncs the file meanwhile. A handler acknowledges only when its
file fsync, its folder fsync and the commit are all done, so every acknowledged instance is
durable on disk and in the database. The three fsyncs overlap instead of following one another
(one disk flush of waiting per image instead of three); the price is that a crash can leave a
committed row whose file is not complete, which is what the pending mark is for: it is deleted
(``confirm``, batched into a later transaction) once the file is known durable, and start-up
reconciliation checks the file of every mark left behind (receive/reconcile.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Table,
    bindparam,
    case,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from dicomnode.db.models import (
    AssociationCount,
    Base,
    Instance,
    PendingInstance,
    Series,
    SeriesState,
    Study,
    utcnow,
)

log = logging.getLogger(__name__)
_MAX_BATCH = 256
# Pending marks of acknowledged instances go with the next batch, or after this long idle.
CONFIRM_IDLE_S = 0.2
# After a failed transaction, confirmations alone are retried at doubling intervals up to this
# (a database that is down is not hammered, nor its error logged, five times a second).
_RETRY_MAX_S = 30.0
_CLOSE_WAIT_S = 30.0
_WAKE = "wake"


@dataclass
class Record:
    """One received instance, as the database needs it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    rel_path: str
    folder: Path
    size_bytes: int
    sha256: str
    series_attrs: dict[str, Any]
    geometry: dict[str, Any]
    patient_id: str | None
    accession_number: str | None
    # True when a file was already at the final path: the row may exist (a re-send).
    maybe_known: bool = False
    # False when the file is durable already (reconciliation): no pending mark.
    pending: bool = True
    result: Future[bool] = field(default_factory=Future)  # True: new row; False: already there


def _insert_ignore_statement(dialect: str, table: Table, key: str) -> Executable:
    """INSERT ... ON CONFLICT (key) DO NOTHING, on SQLite and PostgreSQL."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])
    return insert(table)  # pragma: no cover - other databases: plain insert, conflicts raise


def _add_counts_statement(dialect: str) -> Executable:
    """INSERT a counter row, or add to its count when it exists (SQLite and PostgreSQL)."""
    table = _table(AssociationCount)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    stmt = upsert(table)
    return stmt.on_conflict_do_update(
        index_elements=["node", "result"],
        set_={"count": table.c.count + stmt.excluded.count,
              "updated_at": stmt.excluded.updated_at})


def _insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]],
                   key: str) -> None:
    conn.execute(_insert_ignore_statement(conn.dialect.name, table, key), rows)


def _table(model: type[Base]) -> Table:
    """The Table of a mapped class (``__table__`` is typed as any FromClause)."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


class _FileLock:
    """An exclusive flock held around each transaction (blocking; wakes as soon as released)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


def _writer_lock(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """Receiving processes sharing one SQLite file take turns through a file lock.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ms ... between retries, which left a second
    receiving process waiting longer than the commit it waited for.
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return contextlib.nullcontext()
    return _FileLock(f"{database}-writer.lock")


class Recorder:
    """The single writer of instance rows in this process."""

    def __init__(self, engine: Engine, *, fsync_dir: Callable[[Path], None] | None) -> None:
        self.engine = engine
        self.fsync_dir = fsync_dir
        # Records to write; None stops the thread; _WAKE only starts the idle timer of confirm().
        self._queue: queue.Queue[Record | str | None] = queue.Queue()
        self._study_ids: dict[str, int] = {}
        self._series_ids: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        # Statements built once: rebuilding them per instance cost more than the SQL itself.
        self._select_known = select(Instance.sop_instance_uid).where(
            Instance.sop_instance_uid.in_(bindparam("uids", expanding=True)))
        reopen = Series.state != SeriesState.RECEIVING
        # One atomic statement: a series already completed reopens as a new version, so a late
        # instance is never merged silently into a result that was already queued.
        self._touch_series = update(Series).where(Series.id == bindparam("sid")).values(
            version=case((reopen, Series.version + 1), else_=Series.version),
            reason=case((reopen, "reopened: instances arrived after completion"),
                        else_=Series.reason),
            state=SeriesState.RECEIVING,
            instance_count=Series.instance_count + bindparam("n"),
            last_received_at=bindparam("now"), updated_at=bindparam("now"),
        ).returning(Series.version)
        self._insert_instances = insert(_table(Instance))
        self._insert_pending = _insert_ignore_statement(engine.dialect.name,
                                                        _table(PendingInstance),
                                                        "sop_instance_uid")
        self._delete_pending = delete(PendingInstance).where(
            PendingInstance.sop_instance_uid.in_(bindparam("uids", expanding=True)))
        #: The node name on this process's pending marks (receive.reconcile.use_node_tmp sets it).
        self.node = ""
        self._confirmed: list[str] = []
        self._counts: dict[str, int] = {}  # associations by result, not yet committed
        self._confirm_lock = threading.Lock()
        self._add_counts = _add_counts_statement(engine.dialect.name)
        self._idle_s = CONFIRM_IDLE_S
        self._writer_lock = _writer_lock(engine)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dicomnode-dirsync")
        self._thread = threading.Thread(target=self._run, name="dicomnode-recorder", daemon=True)
        self._thread.start()

    def submit(self, record: Record) -> bool:
        """Queue a row and wait until it is committed; True if new, False if already recorded."""
        return self.submit_nowait(record).result()

    def submit_nowait(self, record: Record) -> Future[bool]:
        """Queue a row; the future is set once it is committed (True if new)."""
        if not self._thread.is_alive():
            raise RuntimeError("recorder stopped")
        self._queue.put(record)
        return record.result

    def confirm(self, sop_uid: str) -> None:
        """The file of an acknowledged instance is durable: drop its pending mark (batched)."""
        with self._confirm_lock:
            first = not self._confirmed and not self._counts
            self._confirmed.append(sop_uid)
        if first:
            self._queue.put(_WAKE)  # the writer may be waiting without a timeout

    def count_association(self, result: str) -> None:
        """Count one association (``accepted``, ``aborted``) in the next transaction."""
        with self._confirm_lock:
            first = not self._confirmed and not self._counts
            self._counts[result] = self._counts.get(result, 0) + 1
        if first:
            self._queue.put(_WAKE)

    def _unwritten(self) -> bool:
        return bool(self._confirmed or self._counts)

    def close(self, *, wait: bool = True) -> None:
        """Write the last pending marks' confirmations and stop the writer thread.

        With ``wait=False`` (a store dropped without ``close``) the thread is only told to
        stop: it ends after its current batch, without being waited for.
        """
        self._queue.put(None)
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=_CLOSE_WAIT_S)
            if self._thread.is_alive():
                log.warning("recorder thread still busy %.0f s after close", _CLOSE_WAIT_S)
        self._pool.shutdown(wait=wait)

    # -- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._idle_s if self._unwritten() else None)
            except queue.Empty:
                self._flush([])  # idle: only the confirmations
                continue
            if first is None:
                if self._unwritten():
                    self._flush([])
                return
            if isinstance(first, str):
                continue
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if not isinstance(item, str):
                    batch.append(item)
            self._flush(batch)
            if stop:
                return

    def _flush(self, batch: list[Record]) -> None:
        with self._confirm_lock:
            confirmed, self._confirmed = self._confirmed, []
            counts, self._counts = self._counts, {}
        try:
            try:
                outcomes = self._transaction(batch, confirmed, counts)
            except IntegrityError:
                # The same new instance arrived on two associations at once: check every row.
                self._forget()
                for r in batch:
                    r.maybe_known = True
                outcomes = self._transaction(batch, confirmed, counts)
        except Exception as exc:  # noqa: BLE001 - every waiting handler must get the error
            self._forget()
            with self._confirm_lock:  # a mark left behind is only checked again at start-up
                self._confirmed[:0] = confirmed
                for result, n in counts.items():
                    self._counts[result] = self._counts.get(result, 0) + n
            log.exception("recording %d instances failed", len(batch))
            self._idle_s = min(self._idle_s * 2, _RETRY_MAX_S)
            for r in batch:
                r.result.set_exception(exc)
            return
        self._idle_s = CONFIRM_IDLE_S
        for r, new in zip(batch, outcomes, strict=True):
            r.result.set_result(new)

    def _transaction(self, batch: list[Record], confirmed: list[str],
                     counts: dict[str, int]) -> list[bool]:
        """Folder fsyncs run while the statements execute and commit; both end before return."""
        syncs = []
        if self.fsync_dir is not None:
            syncs = [self._pool.submit(self.fsync_dir, f) for f in {r.folder for r in batch}]
        try:
            with self._writer_lock, self.engine.begin() as conn:
                if confirmed:
                    conn.execute(self._delete_pending, {"uids": confirmed})
                if counts:
                    now = utcnow()
                    conn.execute(self._add_counts, [
                        {"node": self.node, "result": result, "count": n, "updated_at": now}
                        for result, n in sorted(counts.items())])
                outcomes = self._write(conn, batch)
        finally:
            for done in syncs:
                done.result()
        return outcomes

    def _forget(self) -> None:
        """Drop cached ids: after a rollback they may name rows that were never committed."""
        self._study_ids.clear()
        self._series_ids.clear()
        self._versions.clear()

    def _write(self, conn: Connection, batch: list[Record]) -> list[bool]:
        now = utcnow()
        maybe = [r.sop_uid for r in batch if r.maybe_known]
        existing = set(conn.scalars(self._select_known, {"uids": maybe})) if maybe else set()
        fresh: dict[str, Record] = {}
        for r in batch:
            if r.sop_uid not in existing and r.sop_uid not in fresh:
                fresh[r.sop_uid] = r
        by_series: dict[str, list[Record]] = {}
        for r in fresh.values():
            by_series.setdefault(r.series_uid, []).append(r)
        rows = []
        for series_uid, records in by_series.items():
            series_id = self._series_id(conn, records[0], now)
            version = conn.execute(self._touch_series,
                                   {"sid": series_id, "n": len(records), "now": now}).scalar_one()
            if version != self._versions.setdefault(series_uid, version):
                self._versions[series_uid] = version
                log.warning("late instances reopen the series as version %d", version,
                            extra={"series_uid": series_uid})
            for r in records:
                number = r.geometry.get("instance_number")
                rows.append({"sop_instance_uid": r.sop_uid, "series_id": series_id,
                             "sop_class_uid": r.sop_class_uid,
                             "transfer_syntax_uid": r.transfer_syntax, "path": r.rel_path,
                             "size_bytes": r.size_bytes, "sha256": r.sha256,
                             "instance_number": int(number) if number is not None else None,
                             "geometry": r.geometry, "received_at": now,
                             "series_version": version})
        if rows:
            conn.execute(self._insert_instances, rows)
        marks = [{"sop_instance_uid": r.sop_uid, "node": self.node}
                 for r in fresh.values() if r.pending]
        if marks:
            conn.execute(self._insert_pending, marks)
        return [r.sop_uid in fresh and fresh[r.sop_uid] is r for r in batch]

    def _study_id(self, conn: Connection, r: Record, now: Any) -> int:
        sid = self._study_ids.get(r.study_uid)
        if sid is None:
            _insert_ignore(conn, _table(Study), [{
                "study_instance_uid": r.study_uid, "patient_id": r.patient_id,
                "accession_number": r.accession_number, "created_at": now}],
                "study_instance_uid")
            sid = conn.scalar(select(Study.id).where(Study.study_instance_uid == r.study_uid))
            if sid is None:
                raise RuntimeError("study row missing right after its insert")
            self._study_ids[r.study_uid] = sid
        return sid

    def _series_id(self, conn: Connection, r: Record, now: Any) -> int:
        sid = self._series_ids.get(r.series_uid)
        if sid is None:
            _insert_ignore(conn, _table(Series), [{
                "series_instance_uid": r.series_uid, "study_id": self._study_id(conn, r, now),
                "state": SeriesState.RECEIVING, "reason": "", "version": 1,
                "instance_count": 0, "attributes": r.series_attrs, "geometry": {},
                "first_received_at": now, "last_received_at": now, "updated_at": now}],
                "series_instance_uid")
            sid = conn.scalar(select(Series.id).where(Series.series_instance_uid == r.series_uid))
            if sid is None:
                raise RuntimeError("series row missing right after its insert")
            self._series_ids[r.series_uid] = sid
        return sid
