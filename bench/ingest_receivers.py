"""The receivers that ``bench/ingest.py`` compares, each started fresh on an empty folder.

* ``node``       ``dicomnode serve`` with the shipped defaults (fsync file + folder, SQLite WAL
                 ``synchronous=FULL``), timed only once it listens and its worker is ready;
* ``node-Np``    the same with ``[node] receiver_processes = N``;
* ``node-nofsync`` the same with ``storage.fsync = false`` and ``sqlite_synchronous = "NORMAL"``;
* ``orthanc``    Orthanc (Debian package) with its default durability (it fsyncs each file),
                 ``TCP_NODELAY=1`` in its environment;
* ``storescp``   DCMTK ``storescp -od DIR`` (``--fork`` for several associations; no fsync);
* ``bare``       stock pynetdicom writing ``event.encoded_dataset()`` to a file (the library's
                 floor), without (``bare``) and with (``bare-fsync``) an fsync of the file.

Every receiver is checked after each measurement: a run that lost an image fails.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import (
    LOOPBACK,
    VENV_BIN,
    BenchError,
    count_files,
    free_port,
    spawn,
    tail,
    wait_for_port,
)

CALLED_AET = "DICOMNODE"
NODELAY = {"TCP_NODELAY": "1"}


@dataclass
class Receiver:
    name: str
    start: Callable[[Path, int, int], subprocess.Popen]   # (folder, port, associations)
    verify: Callable[[Path, int], None]                    # (folder, expected)
    note: str = ""
    ready: Callable[[Path, subprocess.Popen], None] | None = None  # waits beyond the port


# -- the bare pynetdicom receiver (run as its own process: ingest.py --bare-receiver ...) -------
def bare_receiver(folder: Path, port: int, fsync: bool) -> int:
    """Accept every storage class; write the encoded dataset; optionally fsync; ack."""
    from pydicom import uid
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    counter = iter(range(1 << 62))
    lock = threading.Lock()

    def handle_store(event):
        with lock:
            k = next(counter)
        with open(folder / f"{k:07d}.dcm", "wb") as fh:
            fh.write(event.encoded_dataset())
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        return 0x0000

    ae = AE(ae_title=CALLED_AET)
    ae.maximum_pdu_size = 0  # as the node's default configuration
    ae.maximum_associations = 10
    syntaxes = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian]
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:  # always set in pynetdicom's list; typed Optional
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"bare receiver listening on {LOOPBACK}:{port} fsync={fsync}", flush=True)
    ae.start_server((LOOPBACK, port), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    return 0


def _verify_files(pattern: str) -> Callable[[Path, int], None]:
    def verify(folder: Path, expected: int) -> None:
        got = count_files(folder, pattern)
        if got != expected:
            raise BenchError(f"{got} files received in {folder}, {expected} sent")
    return verify


def _start_bare(fsync: bool) -> Callable[[Path, int, int], subprocess.Popen]:
    def start(folder: Path, port: int, _assocs: int) -> subprocess.Popen:
        folder.mkdir(parents=True)
        ingest = Path(__file__).resolve().parent / "ingest.py"
        cmd = [sys.executable, str(ingest), "--bare-receiver", str(folder), str(port)]
        return spawn(cmd + (["--fsync"] if fsync else []),
                     log_path=folder.parent / f"{folder.name}.log")
    return start


def _start_storescp(folder: Path, port: int, assocs: int) -> subprocess.Popen:
    folder.mkdir(parents=True)
    cmd = ["storescp", "-aet", CALLED_AET, "-od", str(folder)]
    if assocs > 1:
        cmd.append("--fork")
    cmd.append(str(port))
    return spawn(cmd, log_path=folder.parent / f"{folder.name}.log", env=NODELAY)


# -- Orthanc ------------------------------------------------------------------------------------
def _start_orthanc(folder: Path, port: int, _assocs: int) -> subprocess.Popen:
    """Orthanc with its defaults (SyncStorageArea: fsync of each file), REST on a free port."""
    folder.mkdir(parents=True)
    http_port = free_port()
    config = {"Name": "bench", "StorageDirectory": str(folder), "IndexDirectory": str(folder),
              "DicomAet": CALLED_AET, "DicomPort": port, "HttpPort": http_port,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "Plugins": []}
    path = folder.parent / f"{folder.name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    (folder.parent / f"{folder.name}.http").write_text(str(http_port), encoding="utf-8")
    return spawn(["Orthanc", str(path)], log_path=folder.parent / f"{folder.name}.log",
                 env=NODELAY)


def _orthanc_get(folder: Path, route: str) -> dict:
    http_port = (folder.parent / f"{folder.name}.http").read_text(encoding="utf-8")
    with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}{route}", timeout=10) as rsp:
        return json.loads(rsp.read())


def _orthanc_ready(folder: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"Orthanc exited:\n{tail(folder.parent / f'{folder.name}.log')}")
        try:
            _orthanc_get(folder, "/system")
            return
        except OSError:
            time.sleep(0.1)
    raise BenchError("Orthanc's REST API did not come up")


def _verify_orthanc(folder: Path, expected: int) -> None:
    got = _orthanc_get(folder, "/statistics")["CountInstances"]
    if got != expected:
        raise BenchError(f"Orthanc holds {got} instances, {expected} sent")


# -- the node -----------------------------------------------------------------------------------
def node_config(folder: Path, fsync: bool, processes: int | None = None) -> Path:
    """A configuration with the shipped defaults, except what a variant names."""
    cfg = folder.parent / f"{folder.name}.toml"
    text = "[node]\nbind_address = \"127.0.0.1\"\n"
    if processes is not None:
        text += f"receiver_processes = {processes}\n"
    if not fsync:
        text += "[storage]\nfsync = false\n[database]\nsqlite_synchronous = \"NORMAL\"\n"
    cfg.write_text(text, encoding="utf-8")
    return cfg


def _start_node(fsync: bool, processes: int | None = None,
                ) -> Callable[[Path, int, int], subprocess.Popen]:
    def start(folder: Path, port: int, _assocs: int) -> subprocess.Popen:
        folder.mkdir(parents=True)
        config = node_config(folder, fsync, processes)
        cmd = [str(VENV_BIN / "dicomnode"), "serve", "--config", str(config),
               "--storage", str(folder), "--port", str(port), "--settle-s", "2"]
        return spawn(cmd, log_path=folder.parent / f"{folder.name}.log", cwd=folder.parent)
    return start


def _node_ready(folder: Path, proc: subprocess.Popen) -> None:
    """Wait until every receiving process listens and the worker has loaded its model."""
    log = folder.parent / f"{folder.name}.log"
    config = (folder.parent / f"{folder.name}.toml").read_text(encoding="utf-8")
    m = re.search(r"receiver_processes = (\d+)", config)
    listeners = int(m.group(1)) if m else 1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"node exited before it was ready:\n{tail(log)}")
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if text.count(" listening as ") >= listeners and re.search(r"worker \S+ ready", text):
            return
        time.sleep(0.1)
    raise BenchError(f"node not ready after 120 s:\n{tail(log)}")


def verify_node(folder: Path, expected: int) -> None:
    files = sum(1 for p in folder.rglob("*.dcm")
                if p.is_file() and p.relative_to(folder).parts[0] not in (".tmp", "_other"))
    con = sqlite3.connect(f"file:{folder / 'dicomnode.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT count(*) FROM instances").fetchone()[0]
        errors = con.execute("SELECT count(*) FROM receive_errors").fetchone()[0]
    finally:
        con.close()
    if files != expected or rows != expected or errors:
        raise BenchError(f"node stored {files} files and {rows} instance rows "
                         f"({errors} receive errors); {expected} sent")


RECEIVERS = {
    "storescp": Receiver("storescp", _start_storescp, _verify_files("*"), "DCMTK, no fsync"),
    "orthanc": Receiver("Orthanc", _start_orthanc, _verify_orthanc,
                        "defaults: fsync file, SQLite index", _orthanc_ready),
    "bare": Receiver("bare pynetdicom", _start_bare(False), _verify_files("*.dcm"),
                     "write only, no fsync"),
    "bare-fsync": Receiver("bare pynetdicom", _start_bare(True), _verify_files("*.dcm"),
                           "write + fsync(file)"),
    "node": Receiver("node", _start_node(True), verify_node,
                     "shipped defaults: fsync file+dir, SQLite FULL", _node_ready),
    "node-1p": Receiver("node, 1 receiving process", _start_node(True, 1), verify_node,
                        "fsync file+dir, SQLite FULL", _node_ready),
    "node-2p": Receiver("node, 2 receiving processes", _start_node(True, 2), verify_node,
                        "fsync file+dir, SQLite FULL", _node_ready),
    "node-nofsync": Receiver("node", _start_node(False), verify_node,
                             "fsync off, SQLite NORMAL", _node_ready),
}


def start_receiver(key: str, folder: Path, port: int, assocs: int) -> subprocess.Popen:
    """Start a receiver and return once it accepts associations (and, for the node, once its
    worker is ready)."""
    rec = RECEIVERS[key]
    proc = rec.start(folder, port, assocs)
    wait_for_port(port, proc=proc, what=f"{key} receiver",
                  timeout_s=60 if key.startswith(("node", "orthanc")) else 30)
    if rec.ready is not None:
        rec.ready(folder, proc)
    return proc
