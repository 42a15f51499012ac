"""Shared helpers for the benchmarks in bench/: machine description, ports, processes, data.

Nothing here writes into the repository: generated series and receiver folders live in temporary
folders that the caller removes.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A benchmark precondition or check failed: the run must stop with an error."""


# -- machine ----------------------------------------------------------------------------------
def _first_match(path: str, pattern: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "?"
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1).strip() if m else "?"


def tool_version(cmd: Sequence[str]) -> str:
    """First meaningful line of ``cmd`` (e.g. ``storescu --version``), or "not found"."""
    if shutil.which(cmd[0]) is None:
        return "not found"
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            return line.strip().strip("$").strip()
    return "?"


def machine_info() -> dict[str, str]:
    """CPU, cores, RAM, kernel, Python and the DICOM library versions of this machine."""
    import pydicom
    import pynetdicom

    mem_kb = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    ram = f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "?"
    return {
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "cores": str(os.cpu_count()),
        "ram": ram,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": tool_version(["storescu", "--version"]),
    }


# -- network ----------------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (bind to port 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, host: str = LOOPBACK, timeout_s: float = 30.0,
                  proc: subprocess.Popen | None = None, what: str = "receiver") -> None:
    """Connect attempts until ``host:port`` accepts, or raise BenchError (also if proc died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} not listening on {host}:{port} after {timeout_s:.0f} s")


# -- processes --------------------------------------------------------------------------------
def spawn(cmd: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so stop() also ends its children)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed by the OS with it
    try:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=cwd, start_new_session=True)
    finally:
        log.close()


def stop(proc: subprocess.Popen | None, *, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not ended in time."""
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; children (storescp --fork) may remain in the group.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# -- data -------------------------------------------------------------------------------------
def make_ct_series(template: Path, dest: Path, n: int) -> list[Path]:
    """Write an ``n``-slice CT series derived from one slice: new UIDs, z step 1 mm.

    Returns the files in slice order. Study, Series and every SOP Instance UID are new, so each
    run's data never collides with anything a receiver already holds.
    """
    import pydicom
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(template)
    study_uid, series_uid = generate_uid(), generate_uid()
    ipp = [float(v) for v in ds.ImagePositionPatient]
    files = []
    for i in range(n):
        sop_uid = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [ipp[0], ipp[1], round(ipp[2] + i * 1.0, 4)]
        if "SliceLocation" in ds:
            ds.SliceLocation = round(float(ds.SliceLocation) + i * 1.0, 4)
        path = dest / f"{i + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def split_into(files: Sequence[Path], dest: Path, parts: int) -> list[Path]:
    """Hard-link ``files`` into ``parts`` sub-folders of contiguous chunks; returns the folders."""
    folders = []
    size = -(-len(files) // parts)
    for k in range(parts):
        folder = dest / f"part{k + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in files[k * size:(k + 1) * size]:
            try:
                os.link(f, folder / f.name)
            except OSError:
                shutil.copy2(f, folder / f.name)
        folders.append(folder)
    return folders


def count_files(root: Path, pattern: str = "*") -> int:
    """Regular files under ``root`` matching ``pattern`` (recursive)."""
    return sum(1 for p in root.rglob(pattern) if p.is_file())


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
