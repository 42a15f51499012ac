"""Encode stage: results as DICOM objects that a PACS stores and shows.

Inputs: the source instances, the :class:`~dicomnode.domain.CTVolume`, the
:class:`~dicomnode.domain.LabelMap`, :class:`~dicomnode.domain.Measurements` and predictions.
Outputs: a DICOM Segmentation (:mod:`.seg`) and a TID 1500 Comprehensive 3D SR (:mod:`.sr`),
with deterministic UIDs (:mod:`.uids`) and every coded concept from :mod:`.codes`.
Side effects: none (the outbox writes and sends). See docs/outputs.md.
"""

from .seg import build_seg, read_seg_mask
from .sr import build_sr

__all__ = ["build_seg", "build_sr", "read_seg_mask"]
