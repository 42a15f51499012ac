"""The shipped systemd unit: hardened directives.

systemd-analyze verify and its security exposure are in tests/reliability/test_security.py.
"""

from __future__ import annotations

from tests.conftest import REPO

UNIT = REPO / "systemd" / "dicomnode.service"


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

