"""Serving the console with uvicorn, in the console's own process."""

from __future__ import annotations

import logging

import uvicorn
from sqlalchemy import event
from sqlalchemy.orm import sessionmaker

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory, make_engine
from dicomnode.web.app import create_app

log = logging.getLogger(__name__)
EXIT_CANNOT_BIND = 4


def read_only_sessions(settings: Settings) -> SessionFactory:
    """Sessions that cannot write (SQLite ``query_only``; PostgreSQL read-only transactions)."""
    engine = make_engine(settings.database_url,
                         sqlite_synchronous=settings.database.sqlite_synchronous)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _query_only(dbapi_conn, _record):
            dbapi_conn.execute("PRAGMA query_only=ON")
    elif engine.dialect.name == "postgresql":
        engine = engine.execution_options(postgresql_readonly=True)
    return sessionmaker(engine, expire_on_commit=False)


def writing_sessions(settings: Settings) -> SessionFactory:
    """Sessions for the actions and the audit log (the parent already checked the schema)."""
    engine = make_engine(settings.database_url,
                         sqlite_synchronous=settings.database.sqlite_synchronous)
    return sessionmaker(engine, expire_on_commit=False)


def serve(settings: Settings) -> int:
    """Run the console until SIGTERM; returns ``EXIT_CANNOT_BIND`` when the port is taken."""
    web = settings.web
    app = create_app(settings, read_only_sessions(settings), writing_sessions(settings))
    tls = {}
    if web.tls and settings.tls.certificate and settings.tls.private_key:
        tls = {"ssl_certfile": str(settings.tls.certificate),
               "ssl_keyfile": str(settings.tls.private_key)}
    config = uvicorn.Config(app, host=web.bind_address, port=web.port, log_level="warning",
                            access_log=False, proxy_headers=web.behind_tls_proxy,
                            server_header=False, **tls)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    scheme = "https" if tls else "http"
    log.info("console at %s://%s:%d/", scheme, web.bind_address, web.port)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        pass
    if not server.started:
        log.error("console could not listen on %s:%d; reception goes on without it",
                  web.bind_address, web.port)
        return EXIT_CANNOT_BIND
    return 0
