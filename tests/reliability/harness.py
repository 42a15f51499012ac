"""Shared parts of the crash, outage and overload suites (and of bench/overload.py).

``dicomnode serve`` as a real process on a loopback port, node configurations with the fast
``threshold`` backend, senders that count acknowledged instances, a picky PACS, database and
disk counts, and process memory read from ``/proc``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from dicomnode.db.models import AssociationEvent, Instance, Job, OutboxItem, ReceiveError, Series
from dicomnode.db.session import SessionFactory, make_sessions

REPO = Path(__file__).resolve().parents[2]
EMPTY_CONFIG = REPO / "tests" / "data" / "empty.toml"
RECEIVE_ONLY = EMPTY_CONFIG.parent / "receive-only.toml"
T = TypeVar("T")


# -- the node as a process ---------------------------------------------------------------------
class ServeProcess:
    """Runs ``dicomnode serve`` on a free port; stop() sends SIGTERM, kill() SIGKILL."""

    def __init__(self, storage: Path, port: int, settle_s: float = 1.0,
                 config: Path = RECEIVE_ONLY) -> None:
        self.storage, self.port = storage, port
        self.log = storage.parent / f"serve-{port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config),
                 "--storage", str(storage), "--port", str(port), "--settle-s", str(settle_s)],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-4000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                self.start_s = time.monotonic() - started
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("serve did not start listening")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pid(self) -> int | None:
        """The processing worker child, if it is running."""
        return next((c for c in children(self.pid)
                     if b"dicomnode.runtime.worker" in _cmdline(c)), None)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def proc_state(pid: int) -> str:
    """One-letter state of a process; "Z" also for one that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def wait_gone(pids: Iterable[int], timeout_s: float = 10.0) -> float:
    """Wait until every pid has exited; returns the seconds it took. Raises if one lives on."""
    start = time.monotonic()
    pids = list(pids)
    while any(proc_state(p) != "Z" for p in pids):
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"processes outlived their parent: {pids}")
        time.sleep(0.02)
    return time.monotonic() - start


def with_database(config: Path, db_url: str, out: Path) -> Path:
    """A copy of ``config`` (which has no ``[database]`` table) at ``out``, using ``db_url``."""
    out.write_text(f'{config.read_text()}\n[database]\nurl = "{db_url}"\n')
    return out


def status_json(storage: Path, config: Path = EMPTY_CONFIG) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "dicomnode.cli", "status", "--json", "--config",
                          str(config), "--storage", str(storage)],
                         check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


def wait_for_state(storage: Path, state: str, timeout_s: float = 30,
                   config: Path = EMPTY_CONFIG) -> list[dict]:
    """Wait until ``dicomnode status`` shows every series in ``state``."""
    return wait_until(lambda: (rows := status_json(storage, config)) and all(
        r["state"] == state for r in rows) and rows, timeout_s, f"series {state}", 0.5)


def wait_until(pred: Callable[[], T], timeout_s: float, what: str,
               interval_s: float = 0.2) -> T:
    """Poll ``pred`` until it returns something true; returns that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


@dataclass(frozen=True)
class Peer:
    """A destination of the node's results."""

    name: str
    ae_title: str
    port: int
    outputs: tuple[str, ...] = ("seg", "sr", "overlay")


def node_config(path: Path, *, destinations: Sequence[Peer] = (), max_associations: int = 10,
                delivery_timeout_s: float = 5.0) -> Path:
    """A node configuration for the suites: threshold backend, no prediction, fast cycles."""
    text = (f"[node]\nmax_associations = {max_associations}\n"
            "[segmentation]\nbackend = \"threshold\"\n[prediction]\nenabled = false\n"
            "[assembly]\nsweep_interval_s = 0.2\n[worker]\npoll_interval_s = 0.2\n"
            "[delivery]\ninterval_s = 0.5\nretry_base_s = 0.5\nretry_max_s = 2\n"
            f"timeout_s = {delivery_timeout_s}\n[storage]\nmin_free_disk_mb = 0\n")
    for p in destinations:
        text += (f"[[destinations]]\nname = \"{p.name}\"\nae_title = \"{p.ae_title}\"\n"
                 f"host = \"127.0.0.1\"\nport = {p.port}\noutputs = {json.dumps(list(p.outputs))}\n")
    path.write_text(text)
    return path


# -- senders ----------------------------------------------------------------------------------
@dataclass
class SeriesFiles:
    """Files of one series to send and their SOP Instance UIDs."""

    series_uid: str
    files: dict[Path, str] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> SeriesFiles:
        files = {}
        series_uid = ""
        for p in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            files[p] = str(ds.SOPInstanceUID)
            series_uid = str(ds.SeriesInstanceUID)
        return cls(series_uid, files)


def send(study: SeriesFiles, port: int, acked: set[str],
         on_ack: Callable[[int], None] | None = None) -> bool:
    """C-STORE every file over one association, adding acknowledged UIDs to ``acked``.

    Returns True when every instance was acknowledged; False when the association died (the
    node was killed): a real sender then sends the whole series again.
    """
    ae = AE(ae_title="RELTEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    except (OSError, RuntimeError):
        return False
    if not assoc.is_established:
        return False
    n = 0
    try:
        for path, uid in study.files.items():
            try:
                rsp = assoc.send_c_store(path)
            except (OSError, RuntimeError, ValueError):
                return False
            if not assoc.is_established or rsp is None or "Status" not in rsp:
                return False
            if rsp.Status != 0:
                raise AssertionError(f"instance refused with 0x{rsp.Status:04X}")
            acked.add(uid)
            n += 1
            if on_ack is not None:
                on_ack(n)
    finally:
        if assoc.is_established:
            assoc.release()
    return True


def storescu(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """DCMTK storescu sending every file of ``folder`` over one association; its output goes
    to ``folder``.log (a file, so many senders at once never block on a full pipe)."""
    with open(folder.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            ["storescu", "-R", "+sd", "+sp", "*.dcm", "-aec", "DICOMNODE", "-aet", "LOADTEST",
             "127.0.0.1", str(port), f"{folder}/"], env={**os.environ, "TCP_NODELAY": "1"},
            stdout=log, stderr=subprocess.STDOUT)


def restamp(src: Path, dst: Path) -> Path:
    """Copy a series with new Study, Series and SOP Instance UIDs (a different patient visit)."""
    dst.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    for p in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dst / p.name, enforce_file_format=True)
    return dst


class PickyPacs:
    """A pynetdicom SCP that accepts only the given SOP classes, like many older PACS.

    ``abort_first`` maps SOP Instance UIDs to how many times the PACS aborts the association
    when it receives that object (a flaky object) before it accepts it; ``abort_first_of_class``
    (SOP Class UID, times) makes the first object of that class it receives the flaky one
    (``flaky_uid``).
    """

    def __init__(self, port: int, classes: Sequence[str] = (CTImageStorage,),
                 ae_title: str = "OLDPACS", abort_first: dict[str, int] | None = None,
                 abort_first_of_class: tuple[str, int] | None = None) -> None:
        self.received: list[str] = []
        self.abort_first = dict(abort_first or {})
        self.abort_first_of_class = abort_first_of_class
        self.flaky_uid: str | None = None
        self.aborts = 0
        # An in-process node started by an earlier test (receive.scp.build_ae) turns pynetdicom's
        # process-wide UNRESTRICTED_STORAGE_SERVICE on, which would make this PACS accept every
        # storage class at association time, SEG included.
        _config.UNRESTRICTED_STORAGE_SERVICE = False
        ae = AE(ae_title=ae_title)
        for c in classes:
            ae.add_supported_context(c)
        self.port = port
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if (self.abort_first_of_class and self.flaky_uid is None
                and str(event.request.AffectedSOPClassUID) == self.abort_first_of_class[0]):
            self.flaky_uid = uid
            self.abort_first[uid] = self.abort_first_of_class[1]
        if self.abort_first.get(uid, 0) > 0:
            self.abort_first[uid] -= 1
            self.aborts += 1
            event.assoc.abort()
            return 0xA700  # never sent: the association is gone
        self.received.append(uid)
        return 0

    def stop(self) -> None:
        self.server.shutdown()


# -- counts -----------------------------------------------------------------------------------
def sessions_for(storage: Path) -> SessionFactory:
    return make_sessions(f"sqlite:///{storage / 'dicomnode.db'}")


def files_on_disk(storage: Path) -> set[str]:
    """Received instances under the storage root (relative paths), results and temp excluded."""
    return {p.relative_to(storage).as_posix() for p in storage.glob("*/*/*.dcm")
            if not p.relative_to(storage).parts[0].startswith(("_", "."))}


def db_instances(sessions: SessionFactory) -> dict[str, str]:
    """SOP Instance UID -> relative path of every instance row."""
    with sessions() as s:
        return {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}


def jobs(sessions: SessionFactory) -> list[dict[str, Any]]:
    with sessions() as s:
        rows = s.execute(select(Job, Series.series_instance_uid, Series.version)
                         .join(Series, Job.series_id == Series.id)).all()
        return [{"id": j.id, "series_uid": uid, "version": j.version, "latest": latest,
                 "state": j.state, "attempts": j.attempts, "error": j.error,
                 "items": list((j.outputs or {}).get("items", []))}
                for j, uid, latest in rows]


def outbox(sessions: SessionFactory) -> list[dict[str, Any]]:
    with sessions() as s:
        return [{"job_id": o.job_id, "kind": o.kind, "destination": o.destination,
                 "sop_instance_uid": o.sop_instance_uid, "state": o.state,
                 "attempts": o.attempts, "last_error": o.last_error}
                for o in s.scalars(select(OutboxItem))]


def orthanc_uids(pacs: Any) -> list[str]:
    """SOP Instance UIDs of everything Orthanc holds (one entry per stored instance)."""
    return [i["MainDicomTags"]["SOPInstanceUID"] for i in pacs.get("/instances?expand")]


def refusals(sessions: SessionFactory) -> tuple[int, int]:
    """Refused instances and rejected associations the node recorded."""
    with sessions() as s:
        return (s.scalar(select(func.count(ReceiveError.id))) or 0,
                s.scalar(select(func.count(AssociationEvent.id))) or 0)


# -- memory -----------------------------------------------------------------------------------
def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Resident memory of a process in MiB (``VmHWM``: its peak so far); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss(threading.Thread):
    """Samples the peak resident memory of ``serve`` and of its worker child."""

    def __init__(self, node: ServeProcess, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True, name="peak-rss")
        self.node, self.interval_s = node, interval_s
        self.serve_mib = self.worker_mib = 0.0
        self._done = threading.Event()

    def sample(self) -> None:
        self.serve_mib = max(self.serve_mib, rss_mib(self.node.pid, "VmHWM"))
        worker = self.node.worker_pid()
        if worker is not None:
            self.worker_mib = max(self.worker_mib, rss_mib(worker, "VmHWM"))

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.sample()

    def finish(self) -> None:
        self.sample()
        self._done.set()
        self.join()
