"""Reliability suites: one profile switch and one place that records each scenario's figures.

``DICOMNODE_RELIABILITY=full`` (``make reliability``) runs the full profile; anything else runs
the reduced CI profile inside ``make test``. Each scenario calls ``record`` with its figures;
``bench/reliability_report.py`` turns the records into the table of docs/reliability.md.

The suites that run whole ``serve`` processes for a minute or more (crash, outage, overload) run
on SQLite in the reduced profile and on SQLite and PostgreSQL in the full one (``on_databases``);
in the reduced profile their PostgreSQL counterparts are test_scaleout.py (worker and node
SIGKILLed, the database restarted), tests/integration/test_serve_process.py (SIGKILL mid-transfer)
and tests/e2e/test_orthanc_e2e.py (PACS down, then up).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILE = "full" if os.environ.get("DICOMNODE_RELIABILITY") == "full" else "ci"
RECORDS = Path(os.environ.get("DICOMNODE_RELIABILITY_RECORDS", REPO / "var" / "reliability"))
T = TypeVar("T")


def scale(ci: T, full: T) -> T:
    """The value for the current profile."""
    return full if PROFILE == "full" else ci


#: Runs the test once per database of the profile (the ``db_url`` fixture of tests/conftest.py).
on_databases = pytest.mark.parametrize(
    "db_url", scale(["sqlite"], ["sqlite", "postgresql"]), indirect=True)


def scenario(name: str, db_url: str) -> str:
    """The record name of a scenario: ``name`` on SQLite, ``name_postgresql`` on PostgreSQL."""
    return name if db_url.startswith("sqlite") else f"{name}_postgresql"


def machine() -> str:
    """One line describing this machine (CPU model, cores, memory, Python)."""
    from bench._common import machine_info

    m = machine_info()
    return f"{m['cpu']}, {m['cores']} cores, {m['ram']}, Python {m['python']}"


def record(scenario: str, how: str, **figures: Any) -> None:
    """Write the figures of one scenario's last run to ``RECORDS/<scenario>.json``."""
    RECORDS.mkdir(parents=True, exist_ok=True)
    entry = {"scenario": scenario, "how": how, "profile": PROFILE, "figures": figures,
             "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine()}
    (RECORDS / f"{scenario}.json").write_text(json.dumps(entry, indent=2) + "\n")
