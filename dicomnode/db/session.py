"""One engine and one sessionmaker per process, created from the settings and injected.

Opening a database checks its schema revision (:mod:`dicomnode.db.migrate`): writers get a
database at the head or a :class:`~dicomnode.errors.SchemaError`; readers get a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db import migrate

if TYPE_CHECKING:
    from dicomnode.config import Settings

SessionFactory = sessionmaker[Session]


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """Create the engine; SQLite gets WAL mode, a busy timeout and foreign keys."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed row survives power loss, matching the fsynced file it describes.
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessions(url: str, *, sqlite_synchronous: str = "FULL", auto_upgrade: bool = False,
                  upgrade_command: str = "dicomnode db upgrade") -> SessionFactory:
    """Open the database for writing, at the current schema revision.

    An empty database is created at the head; an older one is upgraded when ``auto_upgrade``,
    else refused with a :class:`~dicomnode.errors.SchemaError` naming ``upgrade_command``.
    """
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    migrate.ensure_current(engine, auto_upgrade=auto_upgrade, upgrade_command=upgrade_command)
    return sessionmaker(engine, expire_on_commit=False)


def open_sessions(settings: Settings) -> SessionFactory:
    """:func:`make_sessions` for a process that writes (``serve``, ``worker``, ``resend``)."""
    return make_sessions(settings.database_url,
                         sqlite_synchronous=settings.database.sqlite_synchronous,
                         auto_upgrade=settings.database.auto_upgrade,
                         upgrade_command=migrate.upgrade_command(settings))


def open_for_reading(settings: Settings) -> tuple[SessionFactory, migrate.SchemaStatus]:
    """Sessions for a read-only command, and where the schema stands (to warn when not head).

    An empty database is created at the head, as a writer would; any other is left as it is.
    """
    engine = make_engine(settings.database_url,
                         sqlite_synchronous=settings.database.sqlite_synchronous)
    status = migrate.schema_status(engine)
    if status.state is migrate.SchemaState.EMPTY:
        status = migrate.ensure_current(engine)
    return sessionmaker(engine, expire_on_commit=False), status
