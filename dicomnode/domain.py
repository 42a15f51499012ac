"""Small frozen types passed between stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SeriesRef:
    """A claimed job: which version of which series, and where its instances are on disk."""

    job_id: int
    series_instance_uid: str
    study_instance_uid: str
    version: int
    instance_paths: tuple[Path, ...]
