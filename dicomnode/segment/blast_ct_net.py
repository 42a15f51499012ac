"""The BLAST-CT v1 network (a 3-D DeepMedic variant) and strict loading of its weights.

Written from the facts in ``blast-ct-v1/SPEC.md`` (sections 2 and 3) only. The module names
here differ from the upstream key strings (which contain spaces and parentheses), so every key
is mapped explicitly by :func:`upstream_key` and checked, with its shape, when loading.

Tensor layout is N x C x D0 x D1 x D2 with (D0, D1, D2) = the numpy order SimpleITK returns,
i.e. (z, y, x) of the preprocessed 1 mm grid; kernels are used as stored (no transpose).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from dicomnode.errors import ModelError

N_CLASSES = 5  # 0 background, 1 IPH, 2 EAH, 3 oedema, 4 IVH (BLAST-CT values)
FACTORS = (5, 3, 1)  # pathway sub-sampling factors, in upstream index (= concatenation) order
CONTEXT = 80  # input size - output size, per axis (I = 5 (k + 16), O = 5 k)
PATCH_IN, PATCH_OUT = 110, 30  # what BLAST-CT tiles with
PATH_BLOCKS = ((1, 30, 3), (30, 30, 3), (30, 40, 3), (40, 40, 3), (40, 40, 3), (40, 40, 3),
               (40, 50, 3), (50, 50, 3))  # (Cin, Cout, kernel) of path.1 .. path.8
HEAD_BLOCKS = ((150, 250, 1), (250, 250, 1), (250, N_CLASSES, 1))  # fully_connected.0 .. .2
BLOCK_KEYS = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
              "bn.num_batches_tracked", "conv.weight", "prelu.weight")


def centre_crop(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Keep ``[c//2 - s//2, c//2 - s//2 + s)`` on each spatial axis (no-op when equal)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    sl = [slice(None), slice(None)]
    for c, s in zip(x.shape[2:], size, strict=True):
        start = c // 2 - s // 2
        sl.append(slice(start, start + s))
    return x[tuple(sl)]


class PreActBlock(nn.Module):
    """BatchNorm -> PReLU (one slope) -> valid conv without bias, + cropped raw input if Cin == Cout."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(c_in, eps=1e-5)
        self.prelu = nn.PReLU(num_parameters=1)
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=1, padding=0, bias=False)
        self.residual = c_in == c_out
        self.trim = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.prelu(self.bn(x)))  # dropout is the identity at inference
        if self.residual:
            t = self.trim
            y = y + (x[:, :, t:-t, t:-t, t:-t] if t else x)
        return y


class Pathway(nn.Module):
    """Centre-crop to L_f, strided slice from floor(f/2), 8 blocks, nearest up-sampling x f."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.blocks = nn.ModuleList(PreActBlock(*b) for b in PATH_BLOCKS)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int, int]) -> torch.Tensor:
        f = self.factor
        x = centre_crop(x, tuple(f * (math.ceil(o / f) + 16) for o in out_size))  # type: ignore[arg-type]
        if f > 1:
            o = f // 2
            x = x[:, :, o::f, o::f, o::f]
        for block in self.blocks:
            x = block(x)
        if f > 1:
            x = F.interpolate(x, scale_factor=f, mode="nearest")
        return centre_crop(x, out_size)


class DeepMedic(nn.Module):
    """Input N x 1 x (O + 80) per axis (O a multiple of 5) -> N x 5 x O logits."""

    def __init__(self) -> None:
        super().__init__()
        self.pathways = nn.ModuleList(Pathway(f) for f in FACTORS)
        self.head = nn.ModuleList(PreActBlock(*b) for b in HEAD_BLOCKS)

    @staticmethod
    def output_size(in_size: tuple[int, ...]) -> tuple[int, int, int]:
        """Output size for a spatial input size; ``ValueError`` unless each is 5 (k + 16), k >= 1."""
        if len(in_size) != 3 or any(i <= CONTEXT or i % 5 for i in in_size):
            raise ValueError(f"input size {tuple(in_size)}: each axis must be 5 * (k + 16), k >= 1")
        return tuple(i - CONTEXT for i in in_size)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_size = self.output_size(tuple(x.shape[2:]))
        y = torch.cat([p(x, out_size) for p in self.pathways], dim=1)
        for block in self.head:
            y = block(y)
        return y


def upstream_key(key: str) -> str:
    """Our state-dict key -> the upstream key string (``path(5, 5, 5)0.path.1.bn.weight``, ...)."""
    parts = key.split(".")
    if parts[0] == "pathways":
        f = FACTORS[int(parts[1])]
        block = int(parts[3]) + 1  # upstream path.0 / path.9 are the parameter-free resamplers
        return f"path({f}, {f}, {f}){parts[1]}.path.{block}." + ".".join(parts[4:])
    if parts[0] == "head":
        return f"fully_connected.{parts[1]}." + ".".join(parts[2:])
    raise KeyError(key)


def load_deepmedic(path: Path) -> DeepMedic:
    """Build the network and load one weight file strictly (every key and shape checked).

    Raises
    ------
    ModelError
        The file is missing or unreadable, or its keys, shapes or dtypes differ from SPEC.md.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"BLAST-CT weight file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ModelError(f"BLAST-CT weight file {path} cannot be read: {type(exc).__name__}: {exc}") from exc
    net = DeepMedic()
    net.load_state_dict(map_state_dict(state, net, path))
    return net.eval()


def map_state_dict(state: object, net: DeepMedic, path: Path | str) -> dict[str, torch.Tensor]:
    """Upstream state dict -> ours, refusing any missing, extra, mis-shaped or mis-typed entry."""
    if not isinstance(state, Mapping):
        raise ModelError(f"BLAST-CT weight file {path}: expected a state dict, got {type(state).__name__}")
    ours = net.state_dict()
    wanted = {upstream_key(k): k for k in ours}
    problems = []
    missing = sorted(set(wanted) - set(state))
    extra = sorted(set(state) - set(wanted))
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(repr(k) for k in missing[:5]))
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): " + ", ".join(repr(k) for k in extra[:5]))
    mapped: dict[str, torch.Tensor] = {}
    for up, k in wanted.items():
        if up not in state:
            continue
        t = state[up]
        ref = ours[k]
        if not isinstance(t, torch.Tensor):
            problems.append(f"{up!r} is {type(t).__name__}, not a tensor")
        elif tuple(t.shape) != tuple(ref.shape):
            problems.append(f"{up!r} has shape {list(t.shape)}, expected {list(ref.shape)}")
        elif t.dtype != ref.dtype and (ref.is_floating_point() or t.is_floating_point()):
            problems.append(f"{up!r} has dtype {t.dtype}, expected {ref.dtype}")
        else:
            mapped[k] = t
    if problems:
        raise ModelError(f"BLAST-CT weight file {path} does not match the network: " + "; ".join(problems))
    return mapped
