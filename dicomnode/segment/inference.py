"""Array inference of the unet and BLAST-CT backends: preprocessed volume in, classes out.

Inputs: a normalised float32 (z, y, x) array on the model's grid and a loaded network.
Outputs: class probabilities (unet) or class values (BLAST-CT) on that same grid.
Side effects: none (``select_device`` sets torch's CPU thread count, ``blast_runtime`` turns
on cuDNN's autotuner on CUDA).

The backends (:mod:`dicomnode.segment.unet`, :mod:`dicomnode.segment.blast_ct`) resample
with SimpleITK before and after these functions; everything between, including the choice of
device and precision, is here so that ``bench/gpu_check.py`` measures the node's own code on a
machine that has only torch, numpy and MONAI. This module therefore imports only torch, numpy,
the DeepMedic definition and ``dicomnode.errors`` (the standard library only); MONAI is imported
inside the unet functions, because it pulls in every optional package it finds installed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicomnode.errors import ModelError
from dicomnode.segment.blast_ct_net import PATCH_IN, PATCH_OUT, DeepMedic

UNET_SW_BATCH_SIZE, UNET_OVERLAP = 2, 0.25  # the unet backend's sliding-window defaults
BLAST_BATCH_SIZE = 8  # the BLAST-CT backend's 110^3 patches per forward pass
BLAST_WINDOW_HU = (-15.0, 100.0)
BLAST_MARGIN = (PATCH_IN - PATCH_OUT) // 2  # 40: output voxel o is input voxel 40 + o of a patch


def select_device(preference: str = "auto") -> torch.device:
    """``cuda`` when present (or asked for), else ``cpu`` with one thread per core."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {preference!r}: expected auto, cpu or cuda")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    return torch.device("cpu")


# --- unet (MONAI DynUNet, sliding window) ---------------------------------------------------------

def unet_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The unet backend's precision: bf16 autocast on CUDA, fp32 (None) elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else None


def build_unet(arch: Mapping[str, Any]) -> torch.nn.Module:
    """The DynUNet described by a bundle's ``architecture``."""
    from monai.networks.nets import DynUNet

    if arch.get("type") != "DynUNet":
        raise ModelError(f"architecture {arch.get('type')!r} not supported (DynUNet only)")
    strides = [list(s) if isinstance(s, list) else s for s in arch["strides"]]
    kernels = [list(k) if isinstance(k, list) else k for k in arch["kernels"]]
    return DynUNet(spatial_dims=3, in_channels=int(arch["in_channels"]),
                   out_channels=int(arch["out_channels"]), kernel_size=kernels, strides=strides,
                   upsample_kernel_size=strides[1:], filters=list(arch["filters"]),
                   norm_name="instance", res_block=bool(arch.get("res_block", False)))


def load_unet(arch: Mapping[str, Any], weights_path: Path, device: torch.device) -> torch.nn.Module:
    """Build the DynUNet, load its state dict strictly (stored fp16 or fp32, computed in fp32).

    Raises
    ------
    ModelError
        The weights are unreadable or do not fit the architecture.
    """
    net = build_unet(arch)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (RuntimeError, OSError, KeyError) as exc:
        raise ModelError(f"{weights_path}: {exc}") from exc
    return net.eval().to(device)


def unet_normalise(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to the HU window and scale to [0, 1] (float32)."""
    lo, hi = window
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _tensor(output: object) -> torch.Tensor:
    """MONAI's sliding window returns a tensor for a network with one output (ours)."""
    if not isinstance(output, torch.Tensor):
        raise ModelError(f"the network returned {type(output).__name__}, not one tensor")
    return output


def unet_probabilities(net: torch.nn.Module, x: np.ndarray, roi_size_zyx: Sequence[int], *,
                       device: torch.device, autocast_dtype: torch.dtype | None,
                       sw_batch_size: int = UNET_SW_BATCH_SIZE, overlap: float = UNET_OVERLAP,
                       mirror: bool = False) -> np.ndarray:
    """Class probabilities (C, z, y, x) of a normalised (z, y, x) array, on the same grid.

    MONAI's sliding window with Gaussian blending; ``autocast_dtype`` None runs in fp32.
    ``mirror`` averages with the left-right mirrored input.
    """
    from monai.inferers import sliding_window_inference

    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].to(device)
    roi = tuple(int(v) for v in roi_size_zyx)
    enabled = autocast_dtype is not None
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                                enabled=enabled):
        logits = sliding_window_inference(tensor, roi, sw_batch_size, net, overlap=overlap,
                                          mode="gaussian")
        probs = torch.softmax(_tensor(logits).float(), dim=1)
        if mirror:  # left-right mirroring, averaged
            flipped = sliding_window_inference(tensor.flip(-1), roi, sw_batch_size, net,
                                               overlap=overlap, mode="gaussian")
            probs = (probs + torch.softmax(_tensor(flipped).float(), dim=1).flip(-1)) / 2
    return probs[0].cpu().numpy()


# --- BLAST-CT (DeepMedic ensemble, non-overlapping tiles; SPEC sections 4.4, 5, 6) ----------------

def blast_runtime(device: torch.device, *, half_precision: bool | None = None,
                  channels_last: bool | None = None) -> tuple[torch.dtype | None, torch.memory_format]:
    """The BLAST-CT backend's (autocast dtype, memory format) on ``device``.

    ``half_precision`` None: fp16 autocast on CUDA, fp32 on the CPU; True forces half precision
    (fp16 on CUDA, bf16 on the CPU). fp16's 10-bit mantissa (bf16: 7) keeps per-class volumes
    closer to fp32 (bench/blast_precision.py). ``channels_last`` None: channels-last-3d on CUDA
    only (on the CPU other oneDNN kernels change logits by ~5e-5). Turns on cuDNN's autotuner
    on CUDA.
    """
    on_cuda = device.type == "cuda"
    use_half = on_cuda if half_precision is None else bool(half_precision)
    dtype = (torch.float16 if on_cuda else torch.bfloat16) if use_half else None
    if channels_last is None:
        channels_last = on_cuda
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    return dtype, (torch.channels_last_3d if channels_last else torch.contiguous_format)


def blast_to_device(nets: Sequence[DeepMedic], device: torch.device,
                    memory_format: torch.memory_format) -> list[DeepMedic]:
    """Move loaded networks to the device in the memory format, in eval mode."""
    return [net.to(device, memory_format=memory_format).eval() for net in nets]  # type: ignore[call-overload]


def blast_normalise(array: np.ndarray) -> np.ndarray:
    """SPEC 4.3-4.4: float32, clip to [-15, 100] HU, ((2x + 15) - 100) / 115 -> [-1, 1]."""
    lo, hi = (np.float32(v) for v in BLAST_WINDOW_HU)
    x = np.clip(array.astype(np.float32), lo, hi)
    return ((np.float32(2) * x - lo) - hi) / (hi - lo)


def blast_predict_patches(nets: Sequence[DeepMedic], patches: np.ndarray, *, device: torch.device,
                          autocast_dtype: torch.dtype | None = None,
                          memory_format: torch.memory_format = torch.contiguous_format) -> np.ndarray:
    """(B, 110, 110, 110) normalised patches -> (B, 30, 30, 30) BLAST-CT class values (uint8).

    One model: argmax of the logits. Several: argmax of the summed softmax (SPEC section 6).
    """
    autocast = (contextlib.nullcontext() if autocast_dtype is None
                else torch.autocast(device.type, dtype=autocast_dtype))
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))[:, None]
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast:
            if len(nets) == 1:
                score = nets[0](x).float()
            else:
                score = torch.zeros((), device=device)
                for net in nets:
                    score = score + torch.softmax(net(x).float(), dim=1)
        return score.argmax(dim=1).to(torch.uint8).cpu().numpy()


def blast_predict_array(array: np.ndarray, predict_patches: Callable[[np.ndarray], np.ndarray], *,
                        batch_size: int = BLAST_BATCH_SIZE, skip_empty_patches: bool = False,
                        uniform_labels: dict[float, int] | None = None,
                        ) -> tuple[np.ndarray, dict[str, float]]:
    """SPEC section 5: tile a normalised (z, y, x) array; returns (class values uint8, stats).

    Parameters
    ----------
    array : ndarray
        Normalised 1 mm volume (``blast_normalise``).
    predict_patches : callable
        (B, 110, 110, 110) -> (B, 30, 30, 30) classes, e.g. ``blast_predict_patches`` bound
        to its networks.
    batch_size : int
        Patches per call of ``predict_patches`` (does not change results).
    skip_empty_patches : bool
        Give background, without running the network, to tiles whose 30^3 output region is all
        air (normalised input == -1). It can change labels (see the model card).
    uniform_labels : dict, optional
        Cache of the label of a tile whose whole input is one value (the network's output is
        then constant, so one 110^3 run per value serves every such tile); filled here.

    Returns
    -------
    tuple
        Class values on the array's grid, and counts of patches (``patches``, ``run``,
        ``uniform``, ``skipped``, ``empty_run``, ``empty_labelled_voxels``).
    """
    cache = {} if uniform_labels is None else uniform_labels
    shape = array.shape
    tiles = [s // PATCH_OUT + 1 for s in shape]
    pad = [(BLAST_MARGIN, PATCH_OUT * n + BLAST_MARGIN - s) for n, s in zip(tiles, shape, strict=True)]
    padded = np.pad(array.astype(np.float32, copy=False), pad, mode="edge")
    out = np.zeros([PATCH_OUT * n for n in tiles], np.uint8)
    todo: list[tuple[int, ...]] = []
    empty: list[tuple[int, ...]] = []  # tiles whose 30^3 output region is all air
    n_uniform = n_skipped = n_run = 0
    m = BLAST_MARGIN
    for t in itertools.product(*(range(n) for n in tiles)):
        o = tuple(PATCH_OUT * i for i in t)
        patch = padded[o[0]:o[0] + PATCH_IN, o[1]:o[1] + PATCH_IN, o[2]:o[2] + PATCH_IN]
        lo, hi = float(patch.min()), float(patch.max())
        dst = out[o[0]:o[0] + PATCH_OUT, o[1]:o[1] + PATCH_OUT, o[2]:o[2] + PATCH_OUT]
        if lo == hi:  # exact shortcut: same label the network gives everywhere in this tile
            if lo not in cache:
                one = np.full((1, PATCH_IN, PATCH_IN, PATCH_IN), lo, np.float32)
                cache[lo] = int(predict_patches(one)[0, 0, 0, 0])
            dst[...] = cache[lo]
            n_uniform += 1
        elif float(patch[m:-m, m:-m, m:-m].max()) <= -1.0:
            if skip_empty_patches:
                n_skipped += 1  # background (out is zero)
            else:
                empty.append(o)
                todo.append(o)
        else:
            todo.append(o)
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        patches = np.stack([padded[z:z + PATCH_IN, y:y + PATCH_IN, x:x + PATCH_IN] for z, y, x in batch])
        for (z, y, x), lab in zip(batch, predict_patches(patches), strict=True):
            out[z:z + PATCH_OUT, y:y + PATCH_OUT, x:x + PATCH_OUT] = lab
        n_run += len(batch)
    out = out[: shape[0], : shape[1], : shape[2]]
    # What skip_empty_patches would have changed (measured when it is off): labelled 1 mm
    # voxels the network put in all-air tiles.
    in_empty = sum(int(np.count_nonzero(out[z:z + PATCH_OUT, y:y + PATCH_OUT, x:x + PATCH_OUT]))
                   for z, y, x in empty)
    stats = {"patches": float(n_uniform + n_skipped + n_run), "run": float(n_run),
             "uniform": float(n_uniform), "skipped": float(n_skipped),
             "empty_run": float(len(empty)), "empty_labelled_voxels": float(in_empty)}
    return out, stats
