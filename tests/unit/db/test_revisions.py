"""One test per schema revision: rows written at the previous revision survive the upgrade.

A new revision adds one test here with :func:`~tests.unit.db.revision_rows.assert_upgrade_keeps_rows`
(its docstring shows how).
"""

from __future__ import annotations

from pathlib import Path

from tests.unit.db.revision_rows import BASELINE_ROWS, assert_upgrade_keeps_rows


def test_0001_adopts_a_pre_migration_database_with_all_its_rows(tmp_path: Path) -> None:
    after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", None, BASELINE_ROWS)
    assert {name: len(after[name]) for name in BASELINE_ROWS} == {
        name: len(rows) for name, rows in BASELINE_ROWS.items()}


def test_0004_console_keeps_rows_and_adds_its_tables(tmp_path: Path) -> None:
    after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", "0001", BASELINE_ROWS)
    for table in ("audit_log", "destination_pauses", "heartbeats"):
        assert after[table] == []
