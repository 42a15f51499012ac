"""A loopback Orthanc (Debian package) as a PACS for tests, benchmarks and ``dicomnode demo``.

Orthanc does not start itself: we write a temporary JSON configuration with temp storage and
free ports, start ``Orthanc CONFIG.json``, wait for its REST API, and stop it (and wait for the
process to exit) on ``stop()``.
"""

from __future__ import annotations

import base64
import json
import os
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


PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's library (Debian ``orthanc-dicomweb``), or None."""
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


class Orthanc:
    """One Orthanc process on 127.0.0.1 with its own storage; AE title ``ORTHANC``."""

    AE_TITLE = "ORTHANC"

    def __init__(self, root: Path | None = None, *, dicom_port: int | None = None,
                 http_port: int | None = None, dicomweb: bool = False, dicom: bool = True,
                 users: dict[str, str] | None = None,
                 modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        """``dicomweb``: load the DICOMweb plugin (Debian ``orthanc-dicomweb``), served at
        ``/dicom-web`` and WADO-URI at ``/wado``. ``dicom=False``: no DICOM server at all (the
        viewer rig, which receives over DICOMweb). ``users``: HTTP basic authentication.
        ``modalities``: the DICOM peers it knows, ``{name: (AE title, host, port)}`` (a C-MOVE
        destination must be one).
        """
        self.binary = shutil.which("Orthanc")
        if self.binary is None:
            raise FileNotFoundError("Orthanc not installed (Debian package orthanc)")
        self.plugin = dicomweb_plugin() if dicomweb else None
        if dicomweb and self.plugin is None:
            raise FileNotFoundError("Orthanc's DICOMweb plugin not installed (Debian package "
                                    "orthanc-dicomweb)")
        self.root = Path(root or tempfile.mkdtemp(prefix="dicomnode-orthanc-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.dicom = dicom
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.users = dict(users or {})
        self.modalities = dict(modalities or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def peer(self) -> str:
        return f"{self.AE_TITLE}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (STOW-RS, QIDO-RS, WADO-RS)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def _config(self) -> Path:
        # Orthanc 1.10 cannot bind one address: its sockets listen on every interface. HTTP
        # refuses every client but loopback (RemoteAccessAllowed false), the DICOM server can be
        # left off (dicom=False), and nothing here makes Orthanc contact any peer.
        config = {
            "Name": "dicomnode-test-pacs", "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"), "DicomAet": self.AE_TITLE,
            "DicomServerEnabled": self.dicom,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "HttpServerEnabled": True,
            "Plugins": [str(self.plugin)] if self.plugin else [],
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            "OrthancPeers": {}, "HttpProxy": "",
            "StableAge": 1, "LogExportedResources": False, "SaveJobs": False,
            "UnknownSopClassAccepted": True,
        }
        if self.plugin:
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                                  "WadoRoot": "/wado", "Ssl": False,
                                  "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([str(self.binary), str(self._config())], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.root,
                                     # Nagle's algorithm adds about 40 ms per image on loopback
                                     env={**os.environ, "TCP_NODELAY": "1"})
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
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        self._authorize(request)
        with urllib.request.urlopen(request, timeout=10) as rsp:
            data = rsp.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def upload(self, paths: list[Path]) -> int:
        """Store DICOM files through the REST API (as a modality's copy would arrive)."""
        for path in paths:
            request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances",
                                             data=Path(path).read_bytes(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            self._authorize(request)
            with urllib.request.urlopen(request, timeout=30) as rsp:
                rsp.read()
        return len(paths)

    def _authorize(self, request: urllib.request.Request) -> None:
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")

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
