"""The storage folder's layout: the one module that knows where things live on disk.

```
<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   received CT instances
<root>/_other/<StudyUID>/<SeriesUID>/<SOP>.dcm       other classes, when keep_non_ct = true
<root>/_results/<SeriesUID>/v<version>/              what the node produced for a series version
<root>/.tmp/                                         partial files (removed at every start)
<root>/.pseudonym-key                                this install's secret for exported pseudonyms
```

Paths in the database are relative to the root (``Instance.path``, job outputs), so a storage
folder can be moved or mounted elsewhere. UIDs are checked before they become path parts
(``receive.checks.check_uid``). Also the durable-write primitives every writer uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TMP_DIR = ".tmp"
OTHER_DIR = "_other"  # kept non-CT instances (keep_non_ct = true), still under storage root
RESULTS_DIR = "_results"  # what the node produces: never inside a received study's folder
RESERVED_DIRS = frozenset({TMP_DIR, OTHER_DIR, RESULTS_DIR})
PSEUDONYM_KEY = ".pseudonym-key"  # `dicomnode cohort export` (docs/prediction.md)


def instance_relpath(study_uid: str, series_uid: str, sop_instance_uid: str, *,
                     other: bool = False) -> Path:
    """Where a received instance is kept, relative to the storage root."""
    base = Path(OTHER_DIR) if other else Path()
    return base / study_uid / series_uid / f"{sop_instance_uid}.dcm"


def series_dir(root: Path, study_uid: str, series_uid: str) -> Path:
    """The folder of one series' received instances."""
    return Path(root) / study_uid / series_uid


def results_dir(root: Path, series_uid: str, version: int) -> Path:
    """The folder of one series version's outputs (result.json, SEG, SR, overlays)."""
    return Path(root) / RESULTS_DIR / series_uid / f"v{version}"


def fsync_path(path: Path) -> None:
    """Make ``path`` durable: a file's content, or a folder's entries (a rename, a new name).

    Both take an fsync of a read-only descriptor on Linux (fsync(2)).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dataset_durably(ds: Any, path: Path) -> None:
    """Write a pydicom dataset to ``path`` through a fsynced temporary file and a rename.

    The caller fsyncs the folder (once for many files) to make the renames durable.
    """
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_result(out_dir: Path) -> tuple[dict[str, Any], Any]:
    """A series version's ``result.json`` and its label map (SimpleITK image, None if absent).

    Raises
    ------
    OSError, ValueError
        When ``result.json`` cannot be read or parsed.
    """
    import json

    import SimpleITK as sitk

    record = json.loads((Path(out_dir) / "result.json").read_text(encoding="utf-8"))
    labels_path = Path(out_dir) / "labels.nii.gz"
    labels = sitk.ReadImage(str(labels_path)) if labels_path.is_file() else None
    return record, labels


def pseudonym_key(path: Path) -> bytes:
    """The secret at ``path`` (by default ``<root>/.pseudonym-key``), made on first use: 32
    random bytes, hex, readable by the owner only. The same key gives the same pseudonyms in
    every export of this install; without it they cannot be traced back."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if len(key) < 32:
            raise ValueError(f"{path}: too short for a pseudonym key") from None
        return key.encode("ascii")
    key = os.urandom(32).hex()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_path(path.parent)
    return key.encode("ascii")
