"""Received files on their way to disk: written in a pool thread, named, then fsynced.

A ``Write`` starts as soon as a C-STORE's bytes are in memory, while the handler decodes and
checks the data set; its SHA-256 is computed at the same time in another pool thread (both
release the GIL). A CT instance is linked into its final place once it is written, and only then
fsynced, by the handler, while the recorder fsyncs the folder and commits the row
(receive/recorder.py): the link is then already in the journal transaction that the file's fsync
commits, so the three fsyncs share one journal commit instead of waiting for a second one.
``os.link`` never replaces a file that another association put there first. Other kept classes
have no row and are renamed into place only once durable.
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
from dicomnode.storage import fsync_path

Buffer = bytes | bytearray | memoryview


class Write:
    """One temporary file, kept open: ``written()`` gives its path once its content is in the
    page cache, ``digest()`` the SHA-256 of that content, ``sync()`` fsyncs it (in the calling
    thread) and ``discard()`` closes it and removes the temporary name. Raise InstanceRejected
    when the disk refuses."""

    def __init__(self, digest: Future[str], *, fsync: bool) -> None:
        self._written: Future[tuple[Path, int]] = Future()
        self._done: Future[None] | None = None
        self._digest = digest
        self._fsync = fsync

    def written(self) -> Path:
        return self._written.result()[0]

    def digest(self) -> str:
        return self._digest.result()

    def sync(self) -> None:
        """Make the content durable (after the file was linked: one journal commit for both)."""
        _path, fd = self._written.result()
        if not self._fsync:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            raise InstanceRejected(status.OUT_OF_RESOURCES, f"cannot write instance: {exc}") from exc

    def discard(self) -> None:
        """Wait for the pool thread, close the file and remove its temporary name."""
        with contextlib.suppress(InstanceRejected, OSError):
            if self._done is not None:
                self._done.result()
        with contextlib.suppress(InstanceRejected, OSError):
            self._digest.result()  # the hash reads the buffer: let it finish first
        with contextlib.suppress(InstanceRejected, OSError):
            path, fd = self._written.result()
            os.close(fd)
            path.unlink(missing_ok=True)


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

    def close(self, *, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)

    def start(self, parts: Sequence[Buffer]) -> Write:
        """Write ``parts`` to a temporary file and hash them, each in a pool thread."""
        write = Write(self._pool.submit(_sha256, parts), fsync=self.fsync)
        write._done = self._pool.submit(self._write, parts, write._written)
        return write

    def _write(self, parts: Sequence[Buffer], written: Future[tuple[Path, int]]) -> None:
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            written.set_exception(InstanceRejected(status.OUT_OF_RESOURCES,
                                                   f"cannot write instance: {exc}"))
            return
        try:
            for part in parts:
                with memoryview(part) as view:
                    done = 0
                    while done < len(view):
                        done += os.write(fd, view[done:])
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            written.set_exception(InstanceRejected(status.OUT_OF_RESOURCES,
                                                   f"cannot write instance: {exc}"))
            return
        written.set_result((tmp, fd))

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
        write.sync()
        tmp = write.written()
        try:
            self.make_dirs(final.parent)
            os.replace(tmp, final)
            if self.fsync:
                fsync_path(final.parent)
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
                fsync_path(created.parent)
