"""Child processes that die with their parent (Linux PR_SET_PDEATHSIG), so a killed
``dicomnode serve`` leaves no orphan holding the port or the GPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """In a child: ask the kernel to SIGKILL us when the parent dies (Linux), and exit at once
    if it already has. Called by the child itself: a preexec_fn is unsafe in a threaded parent."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def spawn_python(module: str, payload: Any) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with a pickled payload on stdin (parent to own child only)."""
    proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE)
    if proc.stdin is None:
        raise RuntimeError("child stdin not available")
    proc.stdin.write(pickle.dumps((os.getpid(), payload)))
    proc.stdin.close()
    return proc


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a process's main loop to wait on."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def read_payload() -> Any:
    """In the child: die with the parent, then return the payload it sent (trusted: our own
    parent process wrote it)."""
    parent_pid, payload = pickle.loads(sys.stdin.buffer.read())  # noqa: S301
    die_with_parent(parent_pid)
    return payload


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("child %d did not stop in %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()
