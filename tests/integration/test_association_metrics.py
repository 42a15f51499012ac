"""``dicomnode_associations_total{result}`` counts accepted associations, across restarts.

DCMTK's echoscu opens real associations to a running node; the node's own console process
serves ``/metrics`` from the database (accepted ones are counted by the receiver's recorder in
its next transaction, rejected ones recorded one by one).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from dicomnode.runtime.service import Node
from tests.conftest import free_port, make_settings, requires

_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _echo(node: Node, calling: str) -> int:
    done = subprocess.run(["echoscu", "-aet", calling, "-aec", "DICOMNODE", "127.0.0.1",
                           str(node.port)], env=_ENV, capture_output=True, timeout=60)
    return done.returncode


def _wait_for(url: str, lines: tuple[str, ...], timeout_s: float = 30.0) -> str:
    """The exposition once it holds every one of ``lines`` (the console starts, rows land)."""
    deadline, text = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        try:
            text = httpx.get(url, timeout=5).text
        except httpx.HTTPError:
            text = ""
        if all(line in text.splitlines() for line in lines):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{lines} not all in /metrics:\n{text}")


def _total(result: str, n: int) -> str:
    return f'dicomnode_associations_total{{result="{result}"}} {float(n)}'


@requires("echoscu")
def test_accepted_and_rejected_associations_are_counted_across_restarts(
        tmp_path: Path, db_url: str) -> None:
    web_port = free_port()
    settings = make_settings(tmp_path / "storage", **{
        "database.url": db_url, "web.port": web_port,
        "access.allowed_calling_aets": ("GOODSCU",)})
    metrics = f"http://127.0.0.1:{web_port}/metrics"
    node = Node(settings).start()
    try:
        assert [_echo(node, "GOODSCU") for _ in range(3)] == [0, 0, 0]
        assert _echo(node, "BADSCU") != 0  # calling AE not recognised: rejected
        _wait_for(metrics, (_total("accepted", 3), _total("rejected", 1)))
    finally:
        node.stop()
    node = Node(settings).start()  # the counts are in the database, not in a process
    try:
        _wait_for(metrics, (_total("accepted", 3), _total("rejected", 1)))
        assert _echo(node, "GOODSCU") == 0
        _wait_for(metrics, (_total("accepted", 4), _total("rejected", 1), _total("aborted", 0)))
    finally:
        node.stop()
