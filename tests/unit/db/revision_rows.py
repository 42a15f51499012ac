"""Test helper: rows written at one schema revision survive the upgrade to the head.

Every schema change is a new revision (docs/architecture.md, "How to change the schema") plus
one test in ``test_revisions.py`` that calls :func:`assert_upgrade_keeps_rows` with rows for
every table of the *previous* revision, e.g. for a revision 0002 that adds a column::

    def test_0002_keeps_rows(tmp_path: Path) -> None:
        after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", "0001", BASELINE_ROWS)
        assert {r["priority"] for r in after["series"]} == {0}  # what 0002 adds

Rows go in and come out through tables reflected from the database itself, never through
today's ORM models (they follow the head), so each such test stays valid as the schema moves on.
``revision=None`` means a database made before dicomnode used migrations: the frozen DDL of
that time (``pre_migration_schema.sql``) and no ``alembic_version``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, select

from dicomnode.db.migrate import BASELINE, SchemaState, schema_status, upgrade
from dicomnode.db.session import make_engine

PRE_MIGRATION_SQL = Path(__file__).with_name("pre_migration_schema.sql")
Rows = Mapping[str, Sequence[Mapping[str, Any]]]

_T0 = datetime(2025, 3, 14, 9, 26, 53, 589793)
_STUDY, _SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.2"
#: One or more rows in every table of revision 0001 (and of the schema before migrations), with
#: NULLs where allowed, JSON documents, non-ASCII text and microseconds in times.
BASELINE_ROWS: Rows = {
    "studies": [
        {"id": 1, "study_instance_uid": _STUDY, "patient_id": "PAT-Ø1",
         "accession_number": "ACC1", "created_at": _T0},
        {"id": 2, "study_instance_uid": _STUDY + "9", "patient_id": None,
         "accession_number": None, "created_at": _T0},
    ],
    "series": [
        {"id": 1, "series_instance_uid": _SERIES, "study_id": 1, "state": "done", "reason": "",
         "version": 2, "instance_count": 3,
         "attributes": {"series_description": "Kopf nativ", "image_type": ["ORIGINAL", "PRIMARY"]},
         "geometry": {"tilt_deg": 18.5, "spacing_mm": [0.45, 0.45, 5.0]},
         "first_received_at": _T0, "last_received_at": _T0, "completed_at": _T0,
         "updated_at": _T0},
        {"id": 2, "series_instance_uid": _SERIES + "9", "study_id": 2, "state": "rejected",
         "reason": "localizer: ImageType has LOCALIZER", "version": 1, "instance_count": 1,
         "attributes": {}, "geometry": {}, "first_received_at": _T0, "last_received_at": _T0,
         "completed_at": None, "updated_at": _T0},
    ],
    "instances": [
        {"id": i, "sop_instance_uid": f"{_SERIES}.{i}", "series_id": 1 if i < 3 else 2,
         "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
         "transfer_syntax_uid": "1.2.840.10008.1.2.1",
         "path": f"{_STUDY}/{_SERIES}/{_SERIES}.{i}.dcm", "size_bytes": 526_000 + i,
         "sha256": f"{i:064x}", "instance_number": i if i != 2 else None,
         "geometry": {"position_mm": [-120.0, -110.0, 5.0 * i], "tilt_deg": 0.0},
         "received_at": _T0, "series_version": 1 if i == 1 else 2}
        for i in (1, 2, 3)
    ],
    "jobs": [
        {"id": 1, "series_id": 1, "version": 1, "state": "failed", "attempts": 2,
         "worker": "gpu-1:4242", "error": "VolumeError: uneven spacing", "timings_s": {},
         "outputs": {}, "created_at": _T0, "claimed_at": _T0, "finished_at": _T0},
        {"id": 2, "series_id": 1, "version": 2, "state": "done", "attempts": 1,
         "worker": None, "error": "", "timings_s": {"load": 0.8, "segment": 12.5},
         "outputs": {"dir": "_results/x/v2", "items": [{"kind": "seg", "path": "seg.dcm"}]},
         "created_at": _T0, "claimed_at": None, "finished_at": None},
    ],
    "discarded_classes": [
        {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.67", "count": 7, "last_at": _T0},
        {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.7", "count": 1, "last_at": _T0},
    ],
    "receive_errors": [
        {"id": 1, "at": _T0, "calling_ae_title": "CT01", "peer_address": "10.0.0.5:40312",
         "sop_instance_uid": "1.2.3", "status": 0xA900, "reason": "no Pixel Data"},
    ],
    "association_events": [
        {"id": 1, "at": _T0, "calling_ae_title": "STRANGER", "called_ae_title": "DICOMNODE",
         "peer_address": "192.0.2.7", "outcome": "rejected", "reason": "calling AE not allowed"},
    ],
    "outbox": [
        {"id": n, "job_id": 2, "kind": kind, "destination": "pacs", "path": f"{kind}.dcm",
         "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4", "sop_instance_uid": f"2.25.{n}",
         "state": state, "attempts": n, "next_attempt_at": _T0, "last_error": error,
         "created_at": _T0, "sent_at": _T0 if state == "sent" else None}
        for n, (kind, state, error) in enumerate([("seg", "sent", ""),
                                                  ("sr", "failed", "0xA700 out of resources")], 1)
    ],
}


def database_at(path: Path | str, revision: str | None, *,
                script_location: Path | None = None) -> Engine:
    """A new database at ``revision`` (None: made before migrations): a SQLite file at ``path``,
    or ``path`` is the URL of an empty database (PostgreSQL)."""
    engine = make_engine(path if isinstance(path, str) else f"sqlite:///{path}")
    if revision is None and engine.dialect.name != "sqlite":
        # The frozen DDL is SQLite's; elsewhere the baseline revision made that same schema.
        upgrade(engine, BASELINE, script_location=script_location)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE alembic_version")
    elif revision is None:
        with engine.connect() as conn:
            conn.connection.driver_connection.executescript(PRE_MIGRATION_SQL.read_text())
    else:
        upgrade(engine, revision, script_location=script_location)
    return engine


def write_rows(engine: Engine, rows: Rows) -> None:
    """Insert ``rows`` with SQL through the tables as they are in the database."""
    meta = MetaData()
    meta.reflect(engine)
    with engine.begin() as conn:
        for table in meta.sorted_tables:  # parents before children
            if rows.get(table.name):
                conn.execute(table.insert(), [dict(r) for r in rows[table.name]])


def read_rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (but ``alembic_version``), in primary-key order."""
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return {t.name: [dict(r._mapping) for r in conn.execute(
                    select(t).order_by(*t.primary_key.columns))]
                for t in meta.sorted_tables if t.name != "alembic_version"}


def assert_upgrade_keeps_rows(path: Path | str, revision: str | None, rows: Rows, *,
                              changed: Mapping[str, set[str]] | None = None,
                              script_location: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Write ``rows`` at ``revision``, upgrade to the head, check that nothing was lost.

    ``rows`` must hold at least one row for every table of that revision. After the upgrade,
    every row is still there (by primary key) with the same value in every column it had,
    except the columns in ``changed`` (``{table: {column}}``) that the revision transforms on
    purpose: check those in the test. Returns the rows after the upgrade.
    """
    engine = database_at(path, revision, script_location=script_location)
    try:
        write_rows(engine, rows)
        before = read_rows(engine)
        empty = sorted(name for name, table_rows in before.items() if not table_rows)
        assert not empty, f"give rows for every table at revision {revision}: {empty} are empty"
        upgrade(engine, script_location=script_location)
        assert schema_status(engine, script_location=script_location).state is SchemaState.CURRENT
        after = read_rows(engine)
        meta = MetaData()
        meta.reflect(engine)
        for name, old_rows in before.items():
            assert name in after, f"table {name} was dropped"
            keys = [c.name for c in meta.tables[name].primary_key.columns]
            new = {tuple(r[k] for k in keys): r for r in after[name]}
            for old in old_rows:
                key = tuple(old[k] for k in keys)
                assert key in new, f"{name} row {key} was lost"
                for column, value in old.items():
                    if column in (changed or {}).get(name, set()):
                        continue
                    assert column in new[key], f"column {name}.{column} was dropped"
                    assert new[key][column] == value, f"{name} row {key}: {column} changed"
        return after
    finally:
        engine.dispose()

