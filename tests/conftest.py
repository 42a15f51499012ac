"""Shared fixtures: settings on temp storage, a running node on port 0, a CT template.

CT test series are written by :mod:`tests.ct_series` (the one helper for that).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomnode.config import Settings, load_settings
from dicomnode.runtime.service import Node
from tests.pg_server import PgServer, find_bin

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GE_DIR = SHARED / "data" / "ge-head-ct-tilt"
EMPTY_CONFIG = REPO / "tests" / "data" / "empty.toml"
#: Every test that takes ``db_url`` or ``empty_db_url`` runs once on each.
DATABASES = ("sqlite", "postgresql")
_HEAD_TEMPLATE = "dicomnode_head"


#: Threads the node names (receive: recorder, dirsync, write, scp): none may outlive its test.
_NODE_THREAD_PREFIXES = ("dicomnode-",)
_THREAD_GRACE_S = 3.0


class LeakedThreadWarning(UserWarning):
    """A test left a non-daemon thread running that is not one of the node's own."""


def _new_threads(before: set[int | None]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive after a short grace period."""
    deadline = time.monotonic() + _THREAD_GRACE_S
    while True:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()
                 and (t.name.startswith(_NODE_THREAD_PREFIXES) or not t.daemon)]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


def _check_threads(before: set[int | None], where: str) -> None:
    """Fail when the node's threads outlived ``where``; warn about other non-daemon threads.

    A recorder left running once kept confirming pending marks against a dropped PostgreSQL
    test database and logged to closed streams until pytest itself failed (an internal error).
    """
    extra = _new_threads(before)
    ours = sorted(t.name for t in extra if t.name.startswith(_NODE_THREAD_PREFIXES))
    others = sorted(t.name for t in extra if not t.name.startswith(_NODE_THREAD_PREFIXES))
    if others:
        warnings.warn(f"{where} left non-daemon threads running: {others}", LeakedThreadWarning,
                      stacklevel=1)
    if ours:
        pytest.fail(f"{where} left the node's threads running (close the store, SCP or node "
                    f"it started): {ours}", pytrace=False)


@pytest.fixture(autouse=True, scope="module")
def _module_threads_stopped(request: pytest.FixtureRequest) -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    _check_threads(before, f"module {request.module.__name__}")


@pytest.fixture(autouse=True)
def _test_threads_stopped(request: pytest.FixtureRequest) -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    _check_threads(before, request.node.nodeid)


def requires(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(storage: Path, **overrides: object) -> Settings:
    """Embedded defaults (not the repo's file) on temp storage, fast sweeps, no disk watermark."""
    values: dict[str, object] = {"storage.path": str(storage), "node.port": 0,
                                 "assembly.settle_s": 0.5, "assembly.sweep_interval_s": 0.1,
                                 "storage.min_free_disk_mb": 0}
    values.update(overrides)
    return load_settings(EMPTY_CONFIG, overrides=values)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole session (skipped without initdb/pg_ctl)."""
    bindir = find_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server not installed (initdb, pg_ctl): apt-get install postgresql")
    server = PgServer(bindir)
    try:
        from dicomnode.db import migrate
        from dicomnode.db.session import make_engine

        engine = make_engine(server.make_template(_HEAD_TEMPLATE))
        migrate.upgrade(engine)
        engine.dispose()
        server.seal(_HEAD_TEMPLATE)
        yield server
    finally:
        server.close()


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the schema head, on SQLite and on PostgreSQL (one new database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.create_database(template=_HEAD_TEMPLATE)
    yield url
    server.drop_database(url)


@pytest.fixture(params=DATABASES)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no table), on SQLite and on PostgreSQL, for migration tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "storage")


@pytest.fixture
def node(settings: Settings) -> Iterator[Node]:
    n = Node(settings).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def db_settings(tmp_path: Path, db_url: str) -> Settings:
    """``settings`` with the database on SQLite and on PostgreSQL (the test runs on each)."""
    return make_settings(tmp_path / "storage", **{"database.url": db_url})


@pytest.fixture
def db_node(db_settings: Settings) -> Iterator[Node]:
    """``node`` on SQLite and on PostgreSQL (the test runs on each)."""
    n = Node(db_settings).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="session")
def ct_template() -> Dataset:
    """A small real CT slice (pydicom's CT_small, 128 x 128) made to look like head CT."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "Head 5mm"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.8, 1.8]  # 230 mm field of view, head-sized
    ds.SliceThickness = 5.0
    # CT_small was acquired with contrast (ISOVUE300 IV); a non-contrast head CT carries none.
    for keyword in ("ContrastBolusAgent", "ContrastBolusRoute"):
        delattr(ds, keyword)
    return ds
