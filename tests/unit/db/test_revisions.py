"""One test per schema revision: rows written at the previous revision survive the upgrade.

A new revision adds one test here with :func:`~tests.unit.db.revision_rows.assert_upgrade_keeps_rows`
(its docstring shows how).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

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
