"""A loopback Orthanc (Debian package) as a PACS for tests, benchmarks and ``dicomnode demo``.

Orthanc does not start itself: we write a temporary JSON configuration with temp storage and
free ports, start ``Orthanc CONFIG.json``, wait for its REST API, and stop it (and wait for the
process to exit) on ``stop()``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc process on 127.0.0.1 with its own storage; AE title ``ORTHANC``."""

    AE_TITLE = "ORTHANC"

    def __init__(self, root: Path | None = None, *, dicom_port: int | None = None,
                 http_port: int | None = None) -> None:
        self.binary = shutil.which("Orthanc")
        if self.binary is None:
            raise FileNotFoundError("Orthanc not installed (Debian package orthanc)")
        self.root = Path(root or tempfile.mkdtemp(prefix="dicomnode-orthanc-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def peer(self) -> str:
        return f"{self.AE_TITLE}@127.0.0.1:{self.dicom_port}"

    def _config(self) -> Path:
        config = {
            "Name": "dicomnode-test-pacs", "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"), "DicomAet": self.AE_TITLE,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "Plugins": [], "HttpServerEnabled": True,
            "StableAge": 1, "LogExportedResources": False, "SaveJobs": False,
            "UnknownSopClassAccepted": True,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([str(self.binary), str(self._config())], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc REST API did not come up")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=10) as rsp:
            data = rsp.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main DICOM tags (simplified)."""
        out = []
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            out.append({"id": iid, **tags})
        return out

    def file(self, instance_id: str) -> bytes:
        return bytes(self.get(f"/instances/{instance_id}/file"))

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
