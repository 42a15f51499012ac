"""The shipped systemd unit: hardened directives, verified and scored by systemd-analyze."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dicomnode.service"


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_has_the_hardening_we_promise() -> None:
    d = _directives()
    assert d["User"] == ["dicomnode"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["ReadWritePaths"] == ["/var/lib/dicomnode"]
    assert d["NoNewPrivileges"] == ["true"]
    assert d["Restart"] == ["on-failure"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["ExecStart"][0].endswith("dicomnode serve")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    # verify fails when the ExecStart binary does not exist on this machine: point it at one.
    unit = tmp_path / "dicomnode.service"
    unit.write_text(re.sub(r"^ExecStart=.*$", f"ExecStart={shutil.which('true')}",
                           UNIT.read_text(), flags=re.M))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", security.stdout)
    assert m, security.stdout + security.stderr
    exposure, verdict = float(m.group(1)), m.group(2)
    print(f"systemd-analyze security exposure: {exposure} {verdict}")
    assert exposure <= 2.0 and verdict in ("SAFE", "OK")
