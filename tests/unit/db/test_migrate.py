"""Schema revisions (dicomnode.db.migrate): fresh, pre-migration, behind and ahead databases."""

from __future__ import annotations

import shutil
import textwrap
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from setuptools import find_packages
from sqlalchemy import Engine, create_engine, inspect

from dicomnode.db.migrate import (
    BASELINE,
    MIGRATIONS,
    PRE_MIGRATION_TABLES,
    SchemaState,
    ensure_current,
    head_revision,
    new_revision,
    schema_status,
    upgrade,
)
from dicomnode.db.models import Base
from dicomnode.db.session import make_engine, make_sessions
from dicomnode.errors import SchemaError
from tests.unit.db.revision_rows import (
    BASELINE_ROWS,
    assert_upgrade_keeps_rows,
    database_at,
    read_rows,
    write_rows,
)

REPO = Path(__file__).resolve().parents[3]


def schema_of(engine: Engine) -> dict[str, Any]:
    """Tables with their columns, indexes, unique constraints and foreign keys, as reflected."""
    insp = inspect(engine)
    return {t: {"columns": [(c["name"], str(c["type"]), c["nullable"])
                            for c in insp.get_columns(t)],
                "primary_key": insp.get_pk_constraint(t)["constrained_columns"],
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                  for i in insp.get_indexes(t)),
                "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
                "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                        tuple(f["referred_columns"]))
                                       for f in insp.get_foreign_keys(t))}
            for t in insp.get_table_names() if t != "alembic_version"}


def test_migrations_give_exactly_the_schema_of_the_models(
        tmp_path: Path, empty_db_url: str, request: pytest.FixtureRequest) -> None:
    migrated = database_at(empty_db_url, "head")
    if migrated.dialect.name == "sqlite":
        created = create_engine(f"sqlite:///{tmp_path / 'created.sqlite'}")
    else:
        created = create_engine(request.getfixturevalue("pg_server").create_database())
    Base.metadata.create_all(created)
    with migrated.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert schema_of(migrated) == schema_of(created)
    assert set(schema_of(migrated)) >= PRE_MIGRATION_TABLES


def test_baseline_is_the_schema_from_before_migrations(tmp_path: Path) -> None:
    old = database_at(tmp_path / "old.sqlite", None)
    assert schema_status(old).state is SchemaState.UNVERSIONED
    assert set(inspect(old).get_table_names()) == PRE_MIGRATION_TABLES
    assert schema_of(old) == schema_of(database_at(tmp_path / "base.sqlite", BASELINE))


def test_an_empty_database_is_created_at_head_and_then_left_alone(empty_db_url: str) -> None:
    url = empty_db_url
    engine = make_engine(url)
    assert schema_status(engine).state is SchemaState.EMPTY
    make_sessions(url)
    status = schema_status(engine)
    assert (status.state, status.revision) == (SchemaState.CURRENT, head_revision())
    write_rows(engine, BASELINE_ROWS)
    make_sessions(url)
    assert read_rows(engine)["jobs"][1]["outputs"] == BASELINE_ROWS["jobs"][1]["outputs"]


def test_a_writer_refuses_an_older_database_unless_auto_upgrade(empty_db_url: str) -> None:
    engine = database_at(empty_db_url, None)
    write_rows(engine, BASELINE_ROWS)
    with pytest.raises(SchemaError) as refused:
        ensure_current(engine, upgrade_command="dicomnode db upgrade --config /etc/x.toml")
    message = str(refused.value)
    assert "from before dicomnode used migrations" in message
    assert "`dicomnode db upgrade --config /etc/x.toml`" in message
    assert "auto_upgrade = true" in message
    assert schema_status(engine).state is SchemaState.UNVERSIONED  # refused: nothing changed
    assert ensure_current(engine, auto_upgrade=True).state is SchemaState.CURRENT
    assert len(read_rows(engine)["instances"]) == 3


def test_a_database_ahead_of_the_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    engine = database_at(tmp_path / "ahead.sqlite", "head")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    status = schema_status(engine)
    assert (status.state, status.revision) == (SchemaState.AHEAD, "9999")
    for attempt in (lambda: ensure_current(engine, auto_upgrade=True), lambda: upgrade(engine)):
        with pytest.raises(SchemaError, match="9999, which this dicomnode .* does not know"):
            attempt()
    assert schema_status(engine).revision == "9999"


def test_an_unversioned_database_missing_tables_is_not_adopted(tmp_path: Path) -> None:
    engine = database_at(tmp_path / "partial.sqlite", None)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE outbox")
    with pytest.raises(SchemaError, match="lacks the tables outbox"):
        upgrade(engine)
    assert "alembic_version" not in inspect(engine).get_table_names()


def test_processes_starting_together_on_an_empty_database_create_it_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dicomnode.db'}"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            make_sessions(url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with make_engine(url).connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [
            (head_revision(),)]


# -- a next revision, written into a copy of the migrations ---------------------------------
def with_revision(tmp_path: Path, body: str) -> Path:
    """A copy of the migrations with a revision 0099, after the head, whose upgrade() is ``body``."""
    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, location, ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / "0099_test.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\nrevision = '0099'\n"
        f"down_revision = '{head_revision()}'\nbranch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return location


def test_a_revision_that_copies_a_parent_table_keeps_every_row(tmp_path: Path) -> None:
    # SQLite batch mode copies `series`, drops it and renames the copy: with foreign keys on,
    # dropping a table that instances and jobs refer to would fail.
    location = with_revision(tmp_path, """
        with op.batch_alter_table("series", recreate="always") as batch:
            batch.add_column(sa.Column("priority", sa.Integer(), nullable=False,
                                       server_default="0"))
    """)
    after = assert_upgrade_keeps_rows(tmp_path / "db.sqlite", BASELINE, BASELINE_ROWS,
                                      script_location=location)
    assert [r["priority"] for r in after["series"]] == [0, 0]


def test_a_failing_revision_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    location = with_revision(tmp_path, """
        op.add_column("series", sa.Column("priority", sa.Integer()))
        op.create_table("leases", sa.Column("id", sa.Integer(), primary_key=True))
        raise RuntimeError("revision 0002 fails half-way")
    """)
    engine = database_at(tmp_path / "db.sqlite", BASELINE, script_location=location)
    write_rows(engine, BASELINE_ROWS)
    before = schema_of(engine)
    with pytest.raises(RuntimeError, match="half-way"):
        upgrade(engine, script_location=location)
    assert schema_of(engine) == before
    assert schema_status(engine, script_location=location).revision == BASELINE
    assert len(read_rows(engine)["series"]) == 2


def test_a_revision_that_would_orphan_rows_is_rolled_back(tmp_path: Path) -> None:
    location = with_revision(tmp_path, 'op.execute("DELETE FROM studies WHERE id = 1")\n')
    engine = database_at(tmp_path / "db.sqlite", BASELINE, script_location=location)
    write_rows(engine, BASELINE_ROWS)
    with pytest.raises(SchemaError, match="would break 1 foreign keys"):
        upgrade(engine, script_location=location)
    assert len(read_rows(engine)["studies"]) == 2


@pytest.mark.parametrize(("body", "lost"), [
    ('op.execute("DELETE FROM receive_errors")\n', "receive_errors row (1,) was lost"),
    ('op.drop_column("jobs", "error")\n', "column jobs.error was dropped"),
    ('op.execute("UPDATE outbox SET attempts = 0")\n', "outbox row (1,): attempts changed"),
])
def test_the_helper_reports_what_a_revision_loses(tmp_path: Path, body: str, lost: str) -> None:
    location = with_revision(tmp_path, body)
    with pytest.raises(AssertionError, match=lost.replace("(", r"\(").replace(")", r"\)")):
        assert_upgrade_keeps_rows(tmp_path / "db.sqlite", BASELINE, BASELINE_ROWS,
                                  script_location=location)


def test_the_helper_wants_rows_in_every_table(tmp_path: Path) -> None:
    rows = {name: r for name, r in BASELINE_ROWS.items() if name != "association_events"}
    with pytest.raises(AssertionError, match=r"\['association_events'\] are empty"):
        assert_upgrade_keeps_rows(tmp_path / "db.sqlite", None, rows)


def test_new_revision_writes_the_next_numbered_file(tmp_path: Path) -> None:
    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, location, ignore=shutil.ignore_patterns("__pycache__"))
    path = new_revision("add nothing", script_location=location)
    head = head_revision()
    following = f"{int(head) + 1:04d}"
    assert path == location / "versions" / f"{following}_add_nothing.py"
    text = path.read_text()
    assert f"down_revision = '{head}'" in text and "\n    pass\n" in text  # no model change
    engine = database_at(tmp_path / "db.sqlite", "head", script_location=location)
    assert schema_status(engine, script_location=location).revision == following


def test_the_migrations_are_packaged() -> None:
    assert {"dicomnode.db.migrations", "dicomnode.db.migrations.versions"} <= set(
        find_packages(str(REPO), include=["dicomnode*"]))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["dicomnode.db.migrations"]
    assert "script.py.mako" in data and (MIGRATIONS / "script.py.mako").is_file()
