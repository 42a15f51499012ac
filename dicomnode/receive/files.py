"""Received files on their way to disk: written and fsynced in a pool thread, then given a name.

A ``Write`` starts as soon as a C-STORE's bytes are in memory, while the handler decodes and
checks the data set; its SHA-256 is computed at the same time in another pool thread (both
release the GIL). It reports *written* (complete in the page cache) and *durable* (fsynced). A
CT instance is linked into its final place once it is written, so that its folder fsync and
database commit run while the file's own fsync does (receive/recorder.py); ``os.link`` never
replaces a file that another association put there first. Other kept classes have no row and
are renamed into place only once durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dicomnode.errors import InstanceRejected
from dicomnode.receive import status
from dicomnode.storage import fsync_dir

Buffer = bytes | bytearray | memoryview


def fsync_file(path: Path) -> None:
    """Make a file's content durable (a file another writer wrote)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Write:
    """One temporary file: ``written()`` gives its path, ``digest()`` the SHA-256 of its
    content, ``durable()`` waits for its fsync. Raise InstanceRejected when the disk refuses."""

    def __init__(self, digest: Future[str]) -> None:
        self._written: Future[Path] = Future()
        self._durable: Future[None] | None = None
        self._digest = digest

    def written(self) -> Path:
        return self._written.result()

    def digest(self) -> str:
        return self._digest.result()

    def durable(self) -> None:
        if self._durable is not None:
            self._durable.result()

    def discard(self) -> None:
        """Wait for the pool thread to finish with the file, then remove its temporary name."""
        with contextlib.suppress(InstanceRejected, OSError):
            self.durable()
        with contextlib.suppress(InstanceRejected, OSError):
            self.written().unlink(missing_ok=True)


def _sha256(parts: Sequence[Buffer]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


class FileWriter:
    """Writes received files under ``root``; one per process, thread-safe."""

    def __init__(self, root: Path, tmp: Path, *, fsync: bool) -> None:
        self.root, self.tmp, self.fsync = root, tmp, fsync
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dicomnode-write")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def start(self, parts: Sequence[Buffer]) -> Write:
        """Write ``parts`` to a temporary file in a pool thread, then fsync it."""
        write = Write(self._pool.submit(_sha256, parts))
        write._durable = self._pool.submit(self._write, parts, write._written)
        return write

    def _write(self, parts: Sequence[Buffer], written: Future[Path]) -> None:
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as fh:
                for part in parts:
                    fh.write(part)
                fh.flush()
                written.set_result(tmp)
                if self.fsync:
                    os.fsync(fh.fileno())
        except OSError as exc:
            refused = InstanceRejected(status.OUT_OF_RESOURCES, f"cannot write instance: {exc}")
            if not written.done():
                tmp.unlink(missing_ok=True)
                written.set_exception(refused)
            raise refused from exc

    def link(self, write: Write, final: Path) -> bool:
        """Give the written file its final name; False if the name is taken."""
        tmp = write.written()
        try:
            self.make_dirs(final.parent)
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError as exc:
            raise InstanceRejected(status.OUT_OF_RESOURCES, f"cannot write instance: {exc}") from exc
        return True

    def replace(self, write: Write, final: Path) -> None:
        """Rename a durable file into place and make the name durable (no database row)."""
        write.durable()
        tmp = write.written()
        try:
            self.make_dirs(final.parent)
            os.replace(tmp, final)
            if self.fsync:
                fsync_dir(final.parent)
        except OSError as exc:
            raise InstanceRejected(status.OUT_OF_RESOURCES, f"cannot write instance: {exc}") from exc

    def make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents, each made durable in its parent."""
        if folder.is_dir():
            return
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for created in reversed(missing):
                fsync_dir(created.parent)
