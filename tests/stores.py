"""An InstanceStore for tests that is always closed, with its engine disposed.

Every test that stores instances takes its store from here (or closes its own): a store left
open keeps its recorder thread confirming pending marks after the test's database is gone
(tests/conftest.py fails such a test).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicomnode.db.session import make_sessions
from dicomnode.receive.instance_store import InstanceStore


@contextlib.contextmanager
def open_store(root: Path, db_url: str, **kwargs: Any) -> Iterator[InstanceStore]:
    """An InstanceStore on ``db_url``; closed, and its engine disposed, on exit."""
    sessions = make_sessions(db_url)
    store = InstanceStore(root, sessions, **kwargs)
    try:
        yield store
    finally:
        store.close()
        sessions.kw["bind"].dispose()
