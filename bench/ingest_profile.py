"""``bench/ingest.py --profile``: where the node's time goes per received instance.

Runs the node in this process, sends the series with DCMTK storescu, and prints per-stage wall
time (timers wrapped around the handler's stages) or a cProfile over the node's threads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import split_into  # noqa: E402 - bench/ is not a package
from ingest import node_config, send, verify_node  # noqa: E402


class StageTimer:
    """Accumulates wall time per named stage across threads (low overhead wrappers)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.total[name] = self.total.get(name, 0.0) + dt
            self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, name: str, fn: Callable) -> Callable:
        perf = time.perf_counter

        def wrapper(*args, **kwargs):
            t = perf()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, perf() - t)
        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        return wrapper


@contextlib.contextmanager
def patched(obj: object, attr: str, value: object) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@contextlib.contextmanager
def stage_timers(timer: StageTimer) -> Iterator[None]:
    """Wrap the node's handler stages (in this process only) with wall-clock timers."""
    from sqlalchemy.engine.default import DefaultDialect

    import dicomnode.receive.files as files
    import dicomnode.receive.handlers as handlers
    import dicomnode.receive.instance_store as storage
    import dicomnode.receive.recorder as recorder

    real_fsync = os.fsync
    with contextlib.ExitStack() as stack:
        e = stack.enter_context
        e(patched(handlers, "handle_store", timer.wrap("handler total", handlers.handle_store)))
        e(patched(handlers, "_file_parts", timer.wrap("  file meta + buffer", handlers._file_parts)))
        e(patched(handlers, "_decode", timer.wrap("  decode (pydicom)", handlers._decode)))
        e(patched(storage.InstanceStore, "store",
                  timer.wrap("  store.store total", storage.InstanceStore.store)))
        e(patched(storage.InstanceStore, "_check_disk",
                  timer.wrap("    _check_disk (statvfs, cached)", storage.InstanceStore._check_disk)))
        e(patched(storage, "check_encoding", timer.wrap("    check_encoding",
                                                        storage.check_encoding)))
        e(patched(storage, "check_image", timer.wrap("    check_image", storage.check_image)))
        e(patched(storage, "read_header", timer.wrap("    read_header", storage.read_header)))
        e(patched(files, "_sha256", timer.wrap("    sha256 (pool thread)", files._sha256)))
        e(patched(files.FileWriter, "_write",
                  timer.wrap("    write (pool thread)", files.FileWriter._write)))
        e(patched(files.Write, "written",
                  timer.wrap("    wait until written", files.Write.written)))
        e(patched(storage.InstanceStore, "_link",
                  timer.wrap("    link into place", storage.InstanceStore._link)))
        e(patched(storage.InstanceStore, "_row_state",
                  timer.wrap("    duplicate check (SELECT)", storage.InstanceStore._row_state)))
        e(patched(recorder.Recorder, "submit",
                  timer.wrap("    recorder.submit (wait for commit)", recorder.Recorder.submit)))
        e(patched(recorder.Recorder, "_transaction",
                  timer.wrap("      writer transaction (per batch)",
                             recorder.Recorder._transaction)))
        e(patched(recorder.Recorder, "_write",
                  timer.wrap("      writer SQL statements", recorder.Recorder._write)))
        e(patched(files.Write, "sync",
                  timer.wrap("    file fsync (handler, after the link)", files.Write.sync)))
        e(patched(os, "fsync", timer.wrap("    os.fsync (all: file+dir)", real_fsync)))
        e(patched(DefaultDialect, "do_commit",
                  timer.wrap("      sqlite COMMIT (WAL fsync)", DefaultDialect.do_commit)))
        yield


def profile_node(n: int, work: Path, files: list[Path], cprofile: bool, assocs: int = 1) -> None:
    """Run the node in this process, send with storescu, report per-instance stage costs."""
    import cProfile
    import pstats
    import resource

    from rich.console import Console
    from rich.table import Table

    from dicomnode.config import load_settings
    from dicomnode.runtime.service import Node

    console = Console(width=max(Console().width, 120))
    run_dir = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    folder = run_dir / "recv"
    folder.mkdir()
    settings = load_settings(node_config(folder, True),
                             overrides={"storage.path": str(folder), "node.port": 0,
                                        "assembly.settle_s": 30.0})
    timer = StageTimer()
    profiles: list[cProfile.Profile] = []
    node = None

    def thread_profiler(*_args):
        p = cProfile.Profile(time.thread_time)  # CPU time of each thread, not waits
        profiles.append(p)
        p.enable()  # replaces this hook for the rest of the thread

    try:
        with stage_timers(timer):
            node = Node(settings).start()
            if cprofile:
                threading.setprofile(thread_profiler)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            parts = ([files[0].parent] if assocs == 1 else
                     split_into(files, run_dir / "split", assocs))
            seconds = send(parts, node.port, run_dir).seconds
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            threading.setprofile(None)
            verify_node(folder, n)
    finally:
        threading.setprofile(None)
        if node is not None:
            node.stop()
        shutil.rmtree(run_dir, ignore_errors=True)

    per = 1000.0 / n
    user = cpu1.ru_utime - cpu0.ru_utime
    system = cpu1.ru_stime - cpu0.ru_stime
    title = (f"node in-process, {assocs} association(s), storescu sender" +
             (", cProfile on (slower)" if cprofile else ", stage timers"))
    console.print(f"[bold]{title}[/]: {n} images in {seconds:.2f} s = {n / seconds:.1f} img/s; "
                  f"wall {seconds * per:.2f} ms/img, node process CPU user {user * per:.2f} + "
                  f"sys {system * per:.2f} ms/img")
    if not cprofile:
        table = Table(title="time per instance inside the node (ms, wall clock, mean)")
        table.add_column("stage")
        table.add_column("ms/img", justify="right")
        table.add_column("calls/img", justify="right")
        table.add_column("% of wall", justify="right")
        # With several associations, stage times add up across threads (can exceed the wall).
        for name, total in timer.total.items():
            table.add_row(name, f"{total * per:.3f}", f"{timer.calls[name] / n:.1f}",
                          f"{100 * total / seconds:.0f}%")
        handler = timer.total.get("handler total", 0.0)
        table.add_row("outside the handler (pynetdicom PDU/DIMSE, ack, sender)",
                      f"{(seconds - handler) * per:.3f}", "",
                      f"{100 * (1 - handler / seconds):.0f}%")
        console.print(table)
        return
    stats = None
    for p in profiles:
        p.create_stats()
        if p.stats:
            stats = pstats.Stats(p) if stats is None else stats.add(p)
    if stats is None:
        console.print("no profile data")
        return
    console.print(f"cProfile over {len(profiles)} node threads; top 30 by total (self) time:")
    stats.sort_stats("tottime").print_stats(30)
    console.print("top 30 by cumulative time:")
    stats.sort_stats("cumulative").print_stats(30)
