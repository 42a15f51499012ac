"""Schema revisions: where a database stands against this code, and bringing it to the head.

A database is in one of five states (:class:`SchemaState`): empty (no dicomnode table yet),
unversioned (made before dicomnode used migrations: its schema is revision ``0001``, but no
``alembic_version`` says so), behind, current, or ahead (at a revision this code does not know,
written by a newer dicomnode). Processes that write (``serve``, ``worker``, ``resend``) call
:func:`ensure_current` at start; ``dicomnode db upgrade`` calls :func:`upgrade`.

Alembic runs in-process from ``dicomnode/db/migrations`` (no alembic.ini), so an installed
package migrates as a checkout does. An empty database is created by running every revision
from the first, so a fresh database and an upgraded one come from the same code. On SQLite an
upgrade is one transaction opened with ``BEGIN IMMEDIATE``: a failed revision leaves the
database as it was, and two processes starting on an empty database do not both create it.
Foreign keys are off meanwhile (batch operations copy, drop and rename tables) and checked
before the commit. On PostgreSQL the upgrade transaction holds an advisory lock, so nodes
starting together on one database upgrade it once.
"""

from __future__ import annotations

import enum
import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from dicomnode import __version__
from dicomnode.errors import SchemaError

if TYPE_CHECKING:
    from dicomnode.config import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: The first revision: the schema that ``create_all`` made before dicomnode used migrations.
BASELINE = "0001"
#: The tables of that schema; a database without a revision must hold all of them.
PRE_MIGRATION_TABLES = frozenset({
    "studies", "series", "instances", "jobs", "discarded_classes", "receive_errors",
    "association_events", "outbox"})


#: PostgreSQL advisory lock key held while a database is upgraded (any fixed 64-bit number).
_UPGRADE_LOCK = 0x64636D6E6F6465  # "dcmnode"


class SchemaState(enum.StrEnum):
    """Where a database stands against this code's revisions."""

    EMPTY = "empty"
    UNVERSIONED = "unversioned"
    BEHIND = "behind"
    CURRENT = "current"
    AHEAD = "ahead"


@dataclass(frozen=True)
class SchemaStatus:
    """Where one database stands: its state, its revision (None: none recorded) and the head."""

    state: SchemaState
    revision: str | None
    head: str
    url: str  # password hidden

    @property
    def where(self) -> str:
        if self.state is SchemaState.EMPTY:
            return "empty"
        if self.revision is None:
            return f"from before dicomnode used migrations (the schema of revision {BASELINE})"
        return f"at revision {self.revision}"

    def problem(self, upgrade_command: str) -> str | None:
        """Why a writer must not use this database, and what to do; None when it may."""
        if self.state in (SchemaState.UNVERSIONED, SchemaState.BEHIND):
            return (f"the database {self.url} is {self.where}; this dicomnode {__version__} "
                    f"needs revision {self.head}. Back it up, then run `{upgrade_command}` "
                    "(or set [database] auto_upgrade = true)")
        if self.state is SchemaState.AHEAD:
            return (f"the database {self.url} is at revision {self.revision}, which this "
                    f"dicomnode {__version__} does not know (its newest is {self.head}): a newer "
                    "dicomnode upgraded it. Run that version, or restore the backup taken "
                    "before the upgrade")
        return None

    def describe(self, upgrade_command: str) -> str:
        """Two lines for ``dicomnode db current``: the database, then its revision."""
        if self.state is SchemaState.CURRENT:
            line = f"revision {self.revision} (head)"
        elif self.state is SchemaState.EMPTY:
            line = (f"empty: `{upgrade_command}` or the first `dicomnode serve` creates it at "
                    f"revision {self.head} (head)")
        else:
            line = f"not head: {self.problem(upgrade_command)}"
        return f"database {self.url}\n{line}"


def alembic_config(script_location: Path | None = None) -> Config:
    """Alembic's configuration, built in code; ``script_location`` other than ours is for tests."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or MIGRATIONS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("path_separator", "os")
    return cfg


@cache
def _script(location: Path) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(location))


def head_revision(script_location: Path | None = None) -> str:
    """The newest revision this code knows."""
    head = _script(script_location or MIGRATIONS).get_current_head()
    if head is None:
        raise SchemaError(f"no revisions in {script_location or MIGRATIONS}")
    return head


def upgrade_command(settings: Settings) -> str:
    """The command that upgrades this configuration's database, for messages."""
    parts = ["dicomnode db upgrade"]
    if settings.source is not None:
        parts.append(f"--config {shlex.quote(str(settings.source))}")
    if not settings.database.url:  # SQLite under the storage folder, which --storage may move
        parts.append(f"--storage {shlex.quote(str(settings.storage.path))}")
    return " ".join(parts)


def _status(conn: Connection, script_location: Path | None) -> SchemaStatus:
    location = script_location or MIGRATIONS
    head = head_revision(location)
    url = conn.engine.url.render_as_string(hide_password=True)
    tables = set(inspect(conn).get_table_names())
    revision = None
    if "alembic_version" in tables:
        revision = MigrationContext.configure(conn).get_current_revision()
    if revision is None:
        state = SchemaState.UNVERSIONED if tables & PRE_MIGRATION_TABLES else SchemaState.EMPTY
    elif revision == head:
        state = SchemaState.CURRENT
    elif revision in {s.revision for s in _script(location).walk_revisions()}:
        state = SchemaState.BEHIND
    else:
        state = SchemaState.AHEAD
    return SchemaStatus(state, revision, head, url)


def schema_status(engine: Engine, *, script_location: Path | None = None) -> SchemaStatus:
    """Where ``engine``'s database stands; changes nothing."""
    with engine.connect() as conn:
        return _status(conn, script_location)


@contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One connection in one transaction for a whole upgrade (on SQLite: DDL included)."""
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # Nodes starting together on one database upgrade it one after the other:
                    # the second finds it at the head. Released when the transaction ends.
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")
                yield conn
            return
        # pysqlite opens transactions only before INSERT/UPDATE/DELETE, so DDL would commit
        # one statement at a time: say BEGIN and COMMIT ourselves instead.
        raw = conn.connection.driver_connection
        if raw is None:  # typed Optional; a checked-out pool connection always has one
            raise SchemaError("no SQLite connection to upgrade")
        level = raw.isolation_level
        raw.isolation_level = None
        try:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # no effect inside a transaction
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise SchemaError(f"the upgrade would break {len(broken)} foreign keys "
                                      f"(first: {tuple(broken[0])}); nothing was changed")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
            raw.isolation_level = level


def upgrade(engine: Engine, revision: str = "head", *,
            script_location: Path | None = None) -> tuple[SchemaStatus, SchemaStatus]:
    """Bring the database to ``revision`` in one transaction; returns (before, after).

    An empty database gets every revision from the first; one from before migrations is first
    recorded as revision ``0001`` (its schema), then upgraded. A database ahead of this code
    raises :class:`~dicomnode.errors.SchemaError` and is left alone.
    """
    cfg = alembic_config(script_location)
    with _migration_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        before = _status(conn, script_location)
        if before.state is SchemaState.AHEAD:
            raise SchemaError(str(before.problem("dicomnode db upgrade")))
        if before.state is SchemaState.UNVERSIONED:
            missing = PRE_MIGRATION_TABLES - set(inspect(conn).get_table_names())
            if missing:
                raise SchemaError(f"the database {before.url} has no revision and lacks the "
                                  f"tables {', '.join(sorted(missing))}: it is not a dicomnode "
                                  "database, or its creation was interrupted")
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)
        after = _status(conn, script_location)
    if before.revision != after.revision:
        log.info("upgraded database %s to revision %s (it was %s)", after.url, after.revision,
                 before.where)
    return before, after


def ensure_current(engine: Engine, *, auto_upgrade: bool = False,
                   upgrade_command: str = "dicomnode db upgrade") -> SchemaStatus:
    """Make a writer's database usable at start-up, or refuse.

    An empty database is created at the head. One that is behind (or from before migrations)
    is upgraded when ``auto_upgrade``, else refused; one ahead is always refused. Refusals raise
    :class:`~dicomnode.errors.SchemaError` naming ``upgrade_command``.
    """
    status = schema_status(engine)
    if status.state is SchemaState.CURRENT:
        return status
    problem = status.problem(upgrade_command)
    if status.state is SchemaState.AHEAD or (problem and not auto_upgrade):
        raise SchemaError(str(problem))
    if problem:
        log.warning("[database] auto_upgrade: upgrading %s (%s) to revision %s", status.url,
                    status.where, status.head)
    return upgrade(engine)[1]


def describe_upgrade(before: SchemaStatus, after: SchemaStatus) -> str:
    """One line for ``dicomnode db upgrade``."""
    if before.state is SchemaState.EMPTY:
        return f"database {after.url}: created at revision {after.revision} (head)"
    if before.revision == after.revision:
        return f"database {after.url}: already at revision {after.revision} (head)"
    return (f"database {after.url}, which was {before.where}, is now at revision "
            f"{after.revision} (head)")


def new_revision(message: str, *, script_location: Path | None = None) -> Path:
    """Write the next revision file (``<NNNN>_<slug>.py``) for a change to ``models.py``.

    Its operations are generated from the difference between the models and a scratch SQLite
    database at the head: review them, and add a test (tests/unit/db/test_revisions.py).
    """
    from tempfile import TemporaryDirectory

    from sqlalchemy import create_engine

    location = script_location or MIGRATIONS
    heads = ScriptDirectory.from_config(alembic_config(location)).get_heads()
    rev_id = f"{int(heads[0]) + 1:04d}" if heads else BASELINE
    with TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/head.db")
        if heads:
            upgrade(engine, script_location=location)
        cfg = alembic_config(location)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            made = command.revision(cfg, message, autogenerate=True, rev_id=rev_id)
        engine.dispose()
    _script.cache_clear()
    if made is None or isinstance(made, list):
        raise SchemaError("alembic wrote no single revision")
    return Path(made.path)


def main(argv: list[str] | None = None) -> int:
    """``python -m dicomnode.db.migrate "MESSAGE"`` (``make migration m="MESSAGE"``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dicomnode.db.migrate",
                                     description="write the next schema revision from models.py")
    parser.add_argument("message", help="what the revision changes, e.g. 'add job leases'")
    print(new_revision(parser.parse_args(argv).message))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
