"""Alembic environment: migrates the connection that :mod:`dicomnode.db.migrate` hands over.

There is no alembic.ini and no URL here: ``migrate`` opens the engine (with its SQLite pragmas),
starts the transaction and passes the connection in ``config.attributes["connection"]``. Offline
(``--sql``) mode is not supported. SQLite cannot alter most of a table in place, so operations
run in batch mode (copy, move, rename), inside the caller's transaction.
"""

from __future__ import annotations

from alembic import context

from dicomnode.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through dicomnode.db.migrate (`dicomnode db upgrade`), "
                       "not the alembic command line")
# transactional_ddl: the caller's transaction holds DDL too, on SQLite as well (see migrate.py).
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
