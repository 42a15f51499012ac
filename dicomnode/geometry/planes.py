"""Functional groups of multi-frame (Enhanced and Legacy Converted Enhanced) CT headers.

PS3.3 C.7.6.16: a frame's Plane Position, Plane Orientation, Pixel Measures and Pixel Value
Transformation are looked up in its Per-frame Functional Groups item first, then in the Shared
Functional Groups. This is the one reader of that rule: receive (the geometry it records) and
load (the frames it builds) both use it.
"""

from __future__ import annotations

from pydicom.dataset import Dataset


def functional_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of macro ``sequence`` for frame ``index`` (0-based): per-frame, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        seq = per_frame[index].get(sequence)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(sequence)
        if seq:
            return seq[0]
    return None
