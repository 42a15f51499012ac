"""Start-up checks for a node that may share its database and storage folder with others.

SQLite on a shared folder is refused: its locking is not reliable over network file systems, and
a second host would corrupt it. A shared folder (``[storage] shared``, or a network file system
found in ``/proc/mounts``) is probed for what the node relies on: ``fsync`` of files and
folders, atomic ``rename`` over an existing file, and POSIX record locks. docs/deployment.md
lists the file systems that pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path

from dicomnode.config import Settings
from dicomnode.errors import DicomnodeError

log = logging.getLogger(__name__)
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre",
                        "gpfs", "beegfs", "9p", "afs", "fuse.sshfs", "fuse.glusterfs",
                        "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs"})


class StorageUnsuitable(DicomnodeError):
    """The storage folder or database cannot be shared as configured."""


def filesystem_type(path: Path, mounts: Path = Path("/proc/mounts")) -> str:
    """The type of the file system holding ``path`` (longest mount point), or ``""``."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return ""
    target = str(path.resolve())
    best, fstype = "", ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, parts[2]
    return fstype


def is_shared(settings: Settings) -> bool:
    """Configured as shared, or on a network file system."""
    return settings.storage.shared or filesystem_type(settings.storage.path) in NETWORK_FS


def check_sharing(settings: Settings) -> None:
    """Refuse SQLite on shared storage; probe a shared folder. Raises StorageUnsuitable."""
    if not is_shared(settings):
        return
    if settings.database_url.startswith("sqlite"):
        raise StorageUnsuitable(
            f"the storage folder {settings.storage.path} is shared "
            f"({filesystem_type(settings.storage.path) or '[storage] shared = true'}), and SQLite "
            "cannot be shared between hosts: set [database] url to a PostgreSQL database "
            "(docs/deployment.md)")
    probe_folder(settings.storage.path)


def probe_folder(folder: Path) -> None:
    """Write, fsync, rename over and lock a probe file in ``folder``; raise when one fails."""
    name = f".probe-{socket.gethostname()}-{os.getpid()}"
    tmp, final = folder / f"{name}.tmp", folder / f"{name}.dcm"
    step = "write and fsync a file"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for content in (b"old", b"new"):
            with open(tmp, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            step = "rename a file over an existing one"
            os.replace(tmp, final)
        if final.read_bytes() != b"new":
            raise StorageUnsuitable(f"{folder}: rename over an existing file is not atomic")
        step = "fsync a folder"
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "take a POSIX lock"
        with open(final, "r+b") as fh:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fh, fcntl.LOCK_UN)
    except OSError as exc:
        raise StorageUnsuitable(f"the shared storage folder {folder} cannot {step}: {exc} "
                                "(docs/deployment.md, shared storage)") from exc
    finally:
        for leftover in (tmp, final):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
    log.info("shared storage %s: fsync, atomic rename and locking work", folder)
