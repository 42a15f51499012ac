"""Overload suite: concurrent senders, each with its own study, against one node.

The runner is ``bench/overload.py`` (also a benchmark printing a table). No instance or
association may be refused, no series lost, the worker queue must drain, and the resident
memory of ``serve`` and of its worker must stay bounded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.overload import run_overload
from tests.reliability.conftest import PROFILE, on_databases, record, scale, scenario

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK absent")
SENDERS = scale(3, 10)
SLICES = scale(40, 300)
MATRIX = 128
# Bounds well above what was measured (see docs/benchmarks.md, Overload): memory that grows with
# the number of senders or slices would cross them.
MAX_SERVE_MIB = 600
MAX_WORKER_MIB = 1200


@on_databases
def test_concurrent_senders_nothing_refused_or_lost_memory_bounded(tmp_path: Path,
                                                                   db_url: str) -> None:
    figures = run_overload(tmp_path, senders=SENDERS, slices=SLICES, matrix=MATRIX,
                           drain_timeout_s=scale(300, 3000), db_url=db_url)
    record(scenario("overload", db_url), f"{SENDERS} DCMTK storescu senders at once, each one "
           f"study of {SLICES} slices {MATRIX}x{MATRIX} (new UIDs per sender), to `dicomnode serve` with its "
           "worker (threshold backend, fsync on, max_associations = senders); bench/overload.py",
           **figures, profile=PROFILE)
    assert figures["refused_instances"] == 0 and figures["rejected_associations"] == 0
    assert figures["in_database"] == SENDERS * SLICES
    assert figures["series_processed"] == SENDERS and figures["jobs_failed"] == 0
    assert figures["peak_rss_serve_mib"] < MAX_SERVE_MIB, figures
    assert figures["peak_rss_worker_mib"] < MAX_WORKER_MIB, figures
