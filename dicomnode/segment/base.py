"""The segmentation interface every backend implements, and device selection.

Inputs: a :class:`~dicomnode.domain.CTVolume`. Outputs: a :class:`~dicomnode.domain.LabelMap` on
the grid of ``volume.image`` with canonical label values (``dicomnode.domain.LABELS``).
A backend loads its model once, in its constructor, and keeps it for every call.
"""

from __future__ import annotations

from typing import Protocol

from dicomnode.domain import CTVolume, LabelMap


class SegmentationBackend(Protocol):
    """``segment(volume) -> LabelMap``; ``name`` is the backend's config name."""

    name: str

    def segment(self, volume: CTVolume) -> LabelMap:  # pragma: no cover - protocol
        ...


def select_device(preference: str = "auto"):
    """``cuda`` when present (or asked for), else ``cpu`` with one thread per core.

    See :func:`dicomnode.segment.inference.select_device`; imported here on first use so that
    importing this interface (the pipeline does) does not import torch.
    """
    from dicomnode.segment.inference import select_device as select

    return select(preference)
