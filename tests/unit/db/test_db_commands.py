"""`dicomnode db upgrade | current`, and what `serve`, `worker` and `status` do with an old database.

The commands run as real processes; the start with ``auto_upgrade`` runs in this process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import Engine

from dicomnode.config import load_settings
from dicomnode.db.migrate import BASELINE, SchemaState, head_revision, schema_status
from dicomnode.db.session import make_engine
from dicomnode.runtime.service import Node
from dicomnode.runtime.worker import run_worker
from tests.conftest import EMPTY_CONFIG, make_settings
from tests.unit.db.revision_rows import BASELINE_ROWS, database_at, read_rows, write_rows

HEAD = head_revision()
#: Rows per table after upgrading BASELINE_ROWS to the head (later revisions add empty tables).


def dicomnode(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def old_storage(tmp_path: Path) -> Path:
    """A storage folder whose database was made before migrations, with rows in every table."""
    storage = tmp_path / "storage"
    storage.mkdir()
    engine = database_at(storage / "dicomnode.db", None)
    write_rows(engine, BASELINE_ROWS)
    engine.dispose()
    return storage


def engine_of(storage: Path) -> Engine:
    return make_engine(f"sqlite:///{storage / 'dicomnode.db'}")


def counts(storage: Path) -> dict[str, int]:
    """Rows in each table of the baseline (later revisions add tables of their own)."""
    rows = read_rows(engine_of(storage))
    return {name: len(rows[name]) for name in BASELINE_ROWS}


def test_db_current_then_upgrade_then_current(tmp_path: Path) -> None:
    storage = old_storage(tmp_path)
    options = ("--config", EMPTY_CONFIG, "--storage", storage)
    before = dicomnode("db", "current", *options)
    assert before.returncode == 1, before.stderr
    assert "from before dicomnode used migrations" in before.stdout
    assert f"dicomnode db upgrade --config {EMPTY_CONFIG} --storage {storage}" in before.stdout
    upgraded = dicomnode("db", "upgrade", *options)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (f"which was from before dicomnode used migrations (the schema of revision {BASELINE}), "
            f"is now at revision {head_revision()} (head)") in upgraded.stdout
    after = dicomnode("db", "current", *options)
    assert after.returncode == 0 and f"revision {head_revision()} (head)" in after.stdout
    assert counts(storage) == {name: len(rows) for name, rows in BASELINE_ROWS.items()}


def test_db_upgrade_creates_a_new_database_at_head(tmp_path: Path) -> None:
    done = dicomnode("db", "upgrade", "--config", EMPTY_CONFIG, "--storage", tmp_path / "new")
    assert done.returncode == 0, done.stderr
    assert f"created at revision {head_revision()} (head)" in done.stdout
    again = dicomnode("db", "upgrade", "--config", EMPTY_CONFIG, "--storage", tmp_path / "new")
    assert f"already at revision {head_revision()} (head)" in again.stdout


def test_db_upgrade_refuses_a_database_written_by_a_newer_dicomnode(tmp_path: Path) -> None:
    engine = database_at(tmp_path / "s" / "dicomnode.db", "head")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    done = dicomnode("db", "upgrade", "--config", EMPTY_CONFIG, "--storage", tmp_path / "s")
    assert done.returncode == 2
    assert "at revision 9999, which this dicomnode" in done.stderr
    assert "a newer dicomnode upgraded it" in done.stderr


def test_serve_and_worker_refuse_an_old_database_naming_the_upgrade(tmp_path: Path) -> None:
    storage = old_storage(tmp_path)
    for command in (("serve", "--port", "0"), ("worker",)):
        done = dicomnode(*command, "--config", EMPTY_CONFIG, "--storage", storage)
        assert done.returncode == 2, (command, done.stderr)
        assert (f"run `dicomnode db upgrade --config {EMPTY_CONFIG} --storage {storage}`"
                in done.stderr), done.stderr
    assert schema_status(engine_of(storage)).state is SchemaState.UNVERSIONED


def test_serve_upgrades_an_old_database_with_auto_upgrade(tmp_path: Path) -> None:
    storage = old_storage(tmp_path)
    node = Node(make_settings(storage, **{"database.auto_upgrade": True}))
    assert schema_status(engine_of(storage)).state is SchemaState.CURRENT
    assert counts(storage) == {name: len(rows) for name, rows in BASELINE_ROWS.items()}
    node.start()  # reconciliation then drops the instance rows: their files are not there
    try:
        assert node.port > 0
    finally:
        node.stop()


def test_worker_upgrades_an_old_database_with_auto_upgrade(tmp_path: Path) -> None:
    storage = old_storage(tmp_path)
    config = tmp_path / "worker.toml"
    config.write_text('[database]\nauto_upgrade = true\n[segmentation]\nbackend = "threshold"\n'
                      '[prediction]\nenabled = false\n')
    settings = load_settings(config, overrides={"storage.path": str(storage)})
    stopped = threading.Event()
    stopped.set()
    assert run_worker(settings, stopped) == 0
    assert counts(storage)["jobs"] == 2
    assert schema_status(engine_of(storage)).state is SchemaState.CURRENT


def test_status_reads_an_old_database_with_a_warning(tmp_path: Path) -> None:
    storage = old_storage(tmp_path)
    done = dicomnode("status", "--json", "--config", EMPTY_CONFIG, "--storage", storage)
    assert done.returncode == 0, done.stderr
    assert "warning: the database" in done.stderr and "dicomnode db upgrade" in done.stderr
    assert '"state": "done"' in done.stdout
    # A schema the code cannot read: a clear message, not a traceback.
    with engine_of(storage).begin() as conn:
        conn.exec_driver_sql("DROP TABLE outbox")
    done = dicomnode("status", "--json", "--config", EMPTY_CONFIG, "--storage", storage)
    assert done.returncode == 2
    assert "cannot read this schema (OperationalError)" in done.stderr
    assert "Traceback" not in done.stderr


def test_db_upgrade_with_a_postgresql_url_in_the_config(empty_db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "storage"}"\n'
                      f'[database]\nurl = "{empty_db_url}"\n')
    done = dicomnode("db", "upgrade", "--config", config)
    assert done.returncode == 0, done.stderr
    assert f"created at revision {HEAD} (head)" in done.stdout
    current = dicomnode("db", "current", "--config", config)
    assert current.returncode == 0 and f"revision {HEAD} (head)" in current.stdout
    engine = make_engine(empty_db_url)
    assert schema_status(engine).state is SchemaState.CURRENT
    engine.dispose()
