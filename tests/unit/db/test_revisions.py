"""One test per schema revision: rows written at the previous revision survive the upgrade.

A new revision adds one test here with :func:`~tests.unit.db.revision_rows.assert_upgrade_keeps_rows`
(its docstring shows how).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import MetaData, create_engine, insert, select

from tests.unit.db.revision_rows import BASELINE_ROWS, assert_upgrade_keeps_rows


def test_0003_adds_empty_leases_and_the_nodes_table(empty_db_url: str) -> None:
    after = assert_upgrade_keeps_rows(empty_db_url, "0001", BASELINE_ROWS)
    assert {(j["lease_token"], j["lease_expires_at"]) for j in after["jobs"]} == {(None, None)}
    assert {(o["claimed_by"], o["lease_token"]) for o in after["outbox"]} == {(None, None)}
    assert after["nodes"] == []


def test_0001_adopts_a_pre_migration_database_with_all_its_rows(tmp_path: Path) -> None:
    after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", None, BASELINE_ROWS)
    assert {name: len(after[name]) for name in BASELINE_ROWS} == {
        name: len(rows) for name, rows in BASELINE_ROWS.items()}


def test_0004_console_keeps_rows_and_adds_its_tables(tmp_path: Path) -> None:
    node = {"name": "site-a:11112", "role": "serve", "run_token": "a" * 32, "host": "site-a",
            "pid": 4242, "version": "0.1.0", "started_at": datetime(2025, 3, 14, 9, 0, 0, 1),
            "seen_at": datetime(2025, 3, 14, 9, 26, 53, 589793)}
    after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", "0003",
                                      {**BASELINE_ROWS, "nodes": [node]})
    for table in ("audit_log", "destination_pauses"):
        assert after[table] == []


def test_0005_pending_marks_keep_rows_and_start_empty(tmp_path: Path) -> None:
    t = datetime(2025, 3, 14, 9, 26, 53, 589793)
    rows = {**BASELINE_ROWS,
            "nodes": [{"name": "site-a:11112", "role": "serve", "run_token": "b" * 32,
                       "host": "site-a", "pid": 7, "version": "0.1.0", "started_at": t,
                       "seen_at": t}],
            "audit_log": [{"id": 1, "at": t, "user": "admin", "action": "resend",
                           "target": "job 1", "detail": "Ä", "peer_address": "127.0.0.1"}],
            "destination_pauses": [{"destination": "pacs", "paused_at": t, "paused_by": "admin"}]}
    after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", "0004", rows)
    assert after["pending_instances"] == []


def test_0006_association_counts_keep_rows_and_start_empty(tmp_path: Path) -> None:
    t = datetime(2025, 3, 14, 9, 26, 53, 589793)
    rows = {**BASELINE_ROWS,
            "nodes": [{"name": "site-a:11112", "role": "serve", "run_token": "c" * 32,
                       "host": "site-a", "pid": 7, "version": "0.1.0", "started_at": t,
                       "seen_at": t}],
            "audit_log": [{"id": 1, "at": t, "user": "admin", "action": "pause",
                           "target": "destination pacs", "detail": "", "peer_address": "::1"}],
            "destination_pauses": [{"destination": "pacs", "paused_at": t, "paused_by": "ä"}],
            "pending_instances": [{"sop_instance_uid": "1.2.3.4", "node": "site-a:11112"}]}
    after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", "0005", rows)
    assert after["association_counts"] == []


def test_0007_prior_retrievals_keeps_rows_and_records_a_retrieval(empty_db_url: str) -> None:
    at = datetime(2025, 3, 14, 9, 30, 0, 250000)
    rows = {**BASELINE_ROWS,
            "nodes": [{"name": "site-a:11112", "role": "serve", "run_token": "b" * 32,
                       "host": "site-a", "pid": 7, "version": "0.1.0", "started_at": at,
                       "seen_at": at}],
            "audit_log": [{"id": 1, "at": at, "user": "it", "action": "pause",
                           "target": "destination pacs", "detail": "", "peer_address": "::1"}],
            "destination_pauses": [{"destination": "pacs", "paused_at": at, "paused_by": "it"}],
            "pending_instances": [{"sop_instance_uid": "1.2.3.4", "node": "site-a:11112"}],
            "association_counts": [{"node": "site-a:11112", "result": "accepted", "count": 12,
                                    "updated_at": at}]}
    after = assert_upgrade_keeps_rows(empty_db_url, "0006", rows)
    assert after["prior_retrievals"] == []
    engine = create_engine(empty_db_url)
    try:
        table = MetaData()
        table.reflect(engine, only=["prior_retrievals"])
        retrievals = table.tables["prior_retrievals"]
        row = {"job_id": 2, "operation": "move", "peer": "PACS@10.0.0.9:104",
               "outcome": "retrieved", "started_at": at, "finished_at": at, "matches": 32,
               "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "completed": 32,
               "failed": 0, "warning": 0, "detail": "status 0x0000"}
        with engine.begin() as conn:
            conn.execute(insert(retrievals).values(**row))
            stored = conn.execute(select(retrievals)).mappings().one()
        assert {k: stored[k] for k in row} == row
    finally:
        engine.dispose()


def test_0008_outcomes_keeps_rows_and_adds_its_tables(empty_db_url: str) -> None:
    t = datetime(2025, 3, 14, 9, 26, 53, 589793)
    rows = {**BASELINE_ROWS,
            "nodes": [{"name": "site-a:11112", "role": "serve", "run_token": "a" * 32,
                       "host": "site-a", "pid": 4242, "version": "0.1.0", "started_at": t,
                       "seen_at": t}],
            "audit_log": [{"id": 1, "at": t, "user": "rad-Ø", "action": "resend",
                           "target": "job 2", "detail": "3 outputs", "peer_address": "::1"}],
            "destination_pauses": [{"destination": "pacs", "paused_at": t, "paused_by": "it"}],
            "prior_retrievals": [{"id": 1, "job_id": 2, "operation": "move",
                                  "peer": "PACS@10.0.0.9:104", "outcome": "retrieved",
                                  "started_at": t, "finished_at": t, "matches": 32,
                                  "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4",
                                  "completed": 32, "failed": 0, "warning": 0, "detail": ""}],
            "pending_instances": [{"sop_instance_uid": "1.2.3.4", "node": "site-a:11112"}],
            "association_counts": [{"node": "site-a:11112", "result": "accepted", "count": 12,
                                    "updated_at": t}]}
    after = assert_upgrade_keeps_rows(empty_db_url, "0007", rows)
    for table in ("series_predictions", "expansion_outcomes", "clinical_outcomes"):
        assert after[table] == []
