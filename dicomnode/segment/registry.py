"""Build the configured segmentation backend (once per process)."""

from __future__ import annotations

from dataclasses import replace

from dicomnode.config import QASettings, SegmentationSettings
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


def build_second_reader(cfg: SegmentationSettings, qa: QASettings) -> SegmentationBackend | None:
    """The QA second reader (``[qa] second_reader``), or None when it is off.

    Off when named ``none`` or the same as the primary backend, and on the CPU unless
    ``second_reader_on_cpu`` (one BLAST-CT model takes minutes there).
    """
    if not qa.enabled or qa.second_reader in ("none", cfg.backend):
        return None
    if not qa.second_reader_on_cpu and not _cuda(cfg.device):
        return None
    return build_backend(replace(cfg, backend=qa.second_reader,
                                 blast_ct_ensemble_size=qa.second_reader_ensemble_size))


def _cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())
