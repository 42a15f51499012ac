"""One engine and one sessionmaker per process, created from the settings and injected."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import Base

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


def make_sessions(url: str, *, sqlite_synchronous: str = "FULL") -> SessionFactory:
    """Create the schema if needed and return the session factory."""
    engine = make_engine(url, sqlite_synchronous=sqlite_synchronous)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)
