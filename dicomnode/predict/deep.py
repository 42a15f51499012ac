"""Deep-feature inputs (max-area slice and neighbours) and a small 2D CNN feature extractor.

Inputs: a :class:`~dicomnode.domain.CTVolume` (HU) and a :class:`~dicomnode.domain.LabelMap` on
its grid. Outputs: ``deep_slices`` -> float32 array (C, H, W) in [0, 1];
:class:`DeepFeatureExtractor` -> ``deep_0 .. deep_{n-1}`` (penultimate layer of a MONAI
classifier trained on HE or PSE). Side effects: none (no downloads, no pretrained weights).
Definitions in docs/prediction.md "Deep features".
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import ICH, CTVolume, LabelMap

if TYPE_CHECKING:
    import torch

__all__ = ["ARCHITECTURES", "DeepFeatureExtractor", "SliceConfig", "deep_slices", "largest_ich_slice"]

ARCHITECTURES = ("resnet10", "resnet18", "efficientnet-b0")
BRAIN_WINDOW_HU = (40.0, 80.0)  # centre, width
AIR_HU = -1000.0


def largest_ich_slice(labels: LabelMap) -> int | None:
    """z index with the most ICH pixels (lowest index on a tie), None without ICH (as measure)."""
    ich = sitk.GetArrayViewFromImage(labels.image) == ICH
    area = ich.reshape(ich.shape[0], -1).sum(axis=1)
    return int(np.argmax(area)) if area.any() else None


def _resample_plane(
    image: sitk.Image,
    centre_mm: np.ndarray,
    offset_mm: float,
    crop_mm: float,
    size_px: int,
    interpolator: int,
    default: float,
) -> np.ndarray:
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: image axes (LPS)
    px = crop_mm / size_px
    origin = centre_mm + d[:, 2] * offset_mm - (d[:, 0] + d[:, 1]) * (crop_mm / 2 - px / 2)
    out = sitk.Resample(
        image,
        [size_px, size_px, 1],
        sitk.Transform(),
        interpolator,
        [float(v) for v in origin],
        [px, px, 1.0],
        [float(v) for v in d.ravel()],
        default,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)[0]  # (H = image y, W = image x)


def deep_slices(
    volume: CTVolume,
    labels: LabelMap,
    *,
    offsets_mm: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    k_slices: int | None = None,
    crop_mm: float = 96.0,
    size_px: int = 64,
    window_hu: tuple[float, float] = BRAIN_WINDOW_HU,
    mask_channel: bool = False,
) -> np.ndarray:
    """The axial slice with the largest ICH area and its neighbours, cropped on the haematoma.

    Planes lie ``offsets_mm`` along the image's z axis from the largest-area slice (linear
    interpolation between slices), or, with ``k_slices``, at the slices -k..+k themselves.
    Each plane is a ``crop_mm`` square centred on the ICH centroid of that slice (image x/y axes),
    resampled to ``size_px`` square (linear), outside the volume -1000 HU; values in the
    ``window_hu`` (centre, width) window scaled to [0, 1]. ``mask_channel`` appends the ICH mask
    of the centre plane (linear, so partial values at the border). Returns float32
    (C, size_px, size_px), C = number of planes (+1). Raises ``ValueError`` without ICH.
    """
    if crop_mm <= 0 or size_px < 8:
        raise ValueError(f"crop_mm must be > 0 and size_px >= 8, got {crop_mm}, {size_px}")
    if window_hu[1] <= 0:
        raise ValueError(f"window width must be > 0, got {window_hu}")
    image = volume.image
    if labels.image.GetSize() != image.GetSize():
        raise ValueError(
            f"label map size {labels.image.GetSize()} differs from the volume's {image.GetSize()}"
        )
    z = largest_ich_slice(labels)
    if z is None:
        raise ValueError("no ICH in the label map: deep slices need a haematoma")
    if k_slices is not None:
        if k_slices < 0:
            raise ValueError(f"k_slices must be >= 0, got {k_slices}")
        dz = float(image.GetSpacing()[2])
        offsets = [k * dz for k in range(-k_slices, k_slices + 1)]
    else:
        offsets = [float(o) for o in offsets_mm]
        if not offsets:
            raise ValueError("offsets_mm is empty")
    lab = sitk.GetArrayViewFromImage(labels.image)
    ys, xs = np.nonzero(lab[z] == ICH)
    centre = np.asarray(
        image.TransformContinuousIndexToPhysicalPoint((float(xs.mean()), float(ys.mean()), float(z)))
    )
    hu_img = sitk.Cast(image, sitk.sitkFloat32)
    lo = window_hu[0] - window_hu[1] / 2
    planes = [
        np.clip(
            (_resample_plane(hu_img, centre, o, crop_mm, size_px, sitk.sitkLinear, AIR_HU) - lo)
            / window_hu[1],
            0,
            1,
        )
        for o in offsets
    ]
    if mask_channel:
        m = sitk.Cast(labels.image == ICH, sitk.sitkFloat32)
        m.CopyInformation(image)
        planes.append(np.clip(_resample_plane(m, centre, 0.0, crop_mm, size_px, sitk.sitkLinear, 0.0), 0, 1))
    return np.stack(planes).astype(np.float32)


@dataclass(frozen=True)
class SliceConfig:
    """How ``deep_slices`` builds a network's input; stored with the weights."""

    offsets_mm: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    k_slices: int | None = None
    crop_mm: float = 96.0
    size_px: int = 64
    window_hu: tuple[float, float] = BRAIN_WINDOW_HU
    mask_channel: bool = False

    @property
    def in_channels(self) -> int:
        n = 2 * self.k_slices + 1 if self.k_slices is not None else len(self.offsets_mm)
        return n + int(self.mask_channel)

    def slices(self, volume: CTVolume, labels: LabelMap) -> np.ndarray:
        return deep_slices(
            volume,
            labels,
            offsets_mm=self.offsets_mm,
            k_slices=self.k_slices,
            crop_mm=self.crop_mm,
            size_px=self.size_px,
            window_hu=self.window_hu,
            mask_channel=self.mask_channel,
        )


def _build(arch: str, in_channels: int, widen_factor: float) -> tuple[Any, int]:
    """(backbone returning pooled features, feature dimension)."""
    import torch.nn as nn
    from monai.networks.nets import EfficientNetBN, resnet10, resnet18

    if arch in ("resnet10", "resnet18"):
        factory = resnet10 if arch == "resnet10" else resnet18
        resnet: Any = factory(
            pretrained=False,
            spatial_dims=2,
            n_input_channels=in_channels,
            widen_factor=widen_factor,
            feed_forward=False,  # no fc: forward returns the pooled (penultimate) features
            num_classes=1,
        )
        return resnet, int(512 * widen_factor)
    if arch == "efficientnet-b0":
        if widen_factor != 1.0:
            raise ValueError("widen_factor applies to ResNets only")
        net: Any = EfficientNetBN(
            "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=1
        )
        n = int(net._fc.in_features)
        net._fc = nn.Identity()
        return net, n
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


class DeepFeatureExtractor:
    """A 2D MONAI classifier (one logit: HE or PSE) whose penultimate layer gives features.

    ``network`` maps (N, C, H, W) to (N, 1) logits (train it with ``BCEWithLogitsLoss``);
    ``embed`` returns the pooled features before the last linear layer, (N, n_features);
    ``features`` does ``deep_slices`` + ``embed`` for one study, as ``deep_0..deep_{n-1}``.
    ResNet feature dimension = 512 × ``widen_factor`` (256 by default); EfficientNet-B0 1280.
    Randomly initialised (``seed``); never pretrained, never downloads.
    """

    def __init__(
        self,
        arch: str = "resnet10",
        *,
        slices: SliceConfig | None = None,
        widen_factor: float = 0.5,
        seed: int = 0,
    ) -> None:
        import torch
        import torch.nn as nn

        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
        if arch == "efficientnet-b0":
            widen_factor = 1.0
        if widen_factor <= 0:
            raise ValueError(f"widen_factor must be > 0, got {widen_factor}")
        self.arch = arch
        self.slice_config = slices or SliceConfig()
        self.widen_factor = float(widen_factor)
        self.seed = int(seed)
        torch.manual_seed(self.seed)
        backbone, n = _build(arch, self.slice_config.in_channels, self.widen_factor)
        self.n_features = n
        self.network = _Classifier(backbone, nn.Linear(n, 1))
        self.network.eval()

    @property
    def feature_names(self) -> list[str]:
        return [f"deep_{i}" for i in range(self.n_features)]

    def config(self) -> dict[str, Any]:
        c = asdict(self.slice_config)
        c["offsets_mm"] = list(c["offsets_mm"])
        c["window_hu"] = list(c["window_hu"])
        return {
            "arch": self.arch,
            "widen_factor": self.widen_factor,
            "seed": self.seed,
            "n_features": self.n_features,
            "slices": c,
        }

    def inputs(self, volume: CTVolume, labels: LabelMap) -> np.ndarray:
        """The network input of one study, (C, H, W)."""
        return self.slice_config.slices(volume, labels)

    def _tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        import torch

        t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
        if t.ndim == 3:
            t = t.unsqueeze(0)
        c = self.slice_config.in_channels
        if t.ndim != 4 or t.shape[1] != c:
            raise ValueError(f"expected (N, {c}, H, W) input, got {tuple(t.shape)}")
        return t

    def embed(self, x: np.ndarray | torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
        """Penultimate-layer features, (N, n_features) float64 (eval mode, no gradients)."""
        import torch

        t = self._tensor(x)
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                out = [self.network.backbone(t[i : i + batch_size]) for i in range(0, len(t), batch_size)]
        finally:
            self.network.train(was_training)
        return torch.cat(out).double().numpy()

    def predict_logit(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The classifier's logits, (N,)."""
        import torch

        t = self._tensor(x)
        self.network.eval()
        with torch.no_grad():
            return self.network(t)[:, 0].double().numpy()

    def features(self, volume: CTVolume, labels: LabelMap) -> dict[str, float]:
        """``deep_0..deep_{n-1}`` of one study; NaN for every feature without ICH."""
        if largest_ich_slice(labels) is None:
            return dict.fromkeys(self.feature_names, math.nan)
        v = self.embed(self.inputs(volume, labels))[0]
        return {name: float(x) for name, x in zip(self.feature_names, v, strict=True)}

    def save(self, path: Path) -> tuple[Path, Path]:
        """Write the state dict (``path``, torch.save) and the config (``path`` with .json)."""
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), path)
        cfg = path.with_suffix(".json")
        cfg.write_text(json.dumps(self.config(), indent=2) + "\n")
        return path, cfg

    @classmethod
    def load(cls, path: Path) -> DeepFeatureExtractor:
        """Rebuild from ``save`` output; weights read with ``torch.load(weights_only=True)``."""
        import torch

        path = Path(path)
        cfg = json.loads(path.with_suffix(".json").read_text())
        s = dict(cfg["slices"])
        s["offsets_mm"] = tuple(float(v) for v in s["offsets_mm"])
        s["window_hu"] = tuple(float(v) for v in s["window_hu"])
        ext = cls(
            cfg["arch"], slices=SliceConfig(**s), widen_factor=cfg["widen_factor"], seed=cfg.get("seed", 0)
        )
        if ext.n_features != cfg["n_features"]:
            raise ValueError(
                f"{path}: config says {cfg['n_features']} features, network has {ext.n_features}"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        ext.network.load_state_dict(state)
        ext.network.eval()
        return ext


def _classifier_base() -> type:
    import torch.nn as nn

    return nn.Module


class _Classifier(_classifier_base()):  # type: ignore[misc]
    """backbone (pooled features) -> head (one logit)."""

    def __init__(self, backbone: Any, head: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
