"""Build the configured segmentation backend (once per process)."""

from __future__ import annotations

from dicomnode.config import SegmentationSettings
from dicomnode.errors import ModelError
from dicomnode.segment.base import SegmentationBackend


def build_backend(cfg: SegmentationSettings) -> SegmentationBackend:
    """The backend named in ``[segmentation] backend``, with its model loaded."""
    if cfg.backend == "unet":
        from dicomnode.segment.unet import UNetBackend

        return UNetBackend(cfg.unet_model, device=cfg.device, mirror=cfg.unet_mirror)
    if cfg.backend == "blast_ct":
        from dicomnode.segment.blast_ct import BlastCTBackend

        return BlastCTBackend(cfg.blast_ct_model, ensemble_size=cfg.blast_ct_ensemble_size,
                              device=cfg.device)
    if cfg.backend == "nnunet":
        if cfg.nnunet_model is None:
            raise ModelError("[segmentation] nnunet_model is required for backend nnunet")
        from dicomnode.segment.nnunet import NnUNetBackend

        return NnUNetBackend(cfg.nnunet_model, folds=cfg.nnunet_folds, device=cfg.device)
    if cfg.backend == "threshold":
        from dicomnode.segment.threshold import ThresholdBackend

        return ThresholdBackend()
    raise ModelError(f"unknown segmentation backend {cfg.backend!r}")
