"""``nnunet``: a department's own trained nnU-Net v2 model, run through ``nnunetv2``'s predictor.

Inputs: a :class:`~dicomnode.domain.CTVolume`. Outputs: a :class:`~dicomnode.domain.LabelMap` on
the grid of ``volume.image``, canonical label values. Side effects: none (no files written).

The model folder is the one ``nnUNetv2_train`` writes (``<Trainer>__<Plans>__<configuration>``):
``dataset.json``, ``plans.json`` and ``fold_<k>/<checkpoint>``. nnU-Net does its own preprocessing
(transpose, crop, CT normalisation, resampling to the plans' spacing), sliding-window inference
with Gaussian blending and mirroring, and resamples the result back to the input grid. We hand it
the HU array exactly as its SimpleITK reader would: ``(1, z, y, x)`` with the spacing reversed to
``(z, y, x)``. nnU-Net ignores direction cosines (in training too): the network sees voxels in the
index order of the loaded series, so it should have been trained on images in that order (see
docs/models/nnunet.md). Checkpoints are pickles: the model folder must be trusted.

Model label names (``dataset.json`` ``labels``) are mapped to dicomnode's canonical values by
name; a name we do not recognise refuses the model rather than guessing. Optional extra:
``pip install .[nnunet]``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import logging
import pickle
import pkgutil
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import EXTRA_AXIAL, ICH, IVH, LABELS, OEDEMA, CTVolume, LabelMap
from dicomnode.errors import ModelError
from dicomnode.segment.base import select_device

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install .[nnunet]"

# Accepted label names (case-folded; spaces and underscores read as hyphens) -> canonical value.
LABEL_SYNONYMS: Mapping[str, int] = {
    **dict.fromkeys(("ich", "iph", "hemorrhage", "haemorrhage", "intracerebral-hemorrhage",
                     "intracerebral-haemorrhage", "intraparenchymal-hemorrhage",
                     "intraparenchymal-haemorrhage", "hematoma", "haematoma"), ICH),
    **dict.fromkeys(("ivh", "intraventricular-hemorrhage", "intraventricular-haemorrhage"), IVH),
    **dict.fromkeys(("edema", "oedema", "phe", "perihematomal-edema", "perihaematomal-oedema",
                     "perihematomal-oedema", "perihaematomal-edema"), OEDEMA),
    **dict.fromkeys(("eah", "extra-axial", "extraaxial", "extra-axial-hemorrhage",
                     "extra-axial-haemorrhage", "sdh", "edh", "subdural", "epidural", "extradural",
                     "subdural-hematoma", "subdural-haematoma", "epidural-hematoma",
                     "epidural-haematoma", "extradural-haematoma"), EXTRA_AXIAL),
}
_BACKGROUND_NAMES = ("background",)
_IGNORE_NAMES = ("ignore",)  # nnU-Net's ignore label: never predicted


def canonical_value(name: str) -> int | None:
    """The canonical label value for a model label name, or None when we do not know it."""
    key = re.sub(r"[\s_]+", "-", name.strip().casefold())
    return LABEL_SYNONYMS.get(key)


def label_table(labels: Mapping[str, Any], *, where: str = "dataset.json") -> dict[int, int]:
    """Model label value -> canonical value, from a ``dataset.json`` ``labels`` mapping.

    Raises :class:`ModelError` for region-based labels (lists of values), for any name we do
    not recognise (all of them listed), and for a model without foreground labels.
    """
    table: dict[int, int] = {}
    unknown: list[str] = []
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelError(f"{where}: label {name!r} = {value!r}: region-based (or non-integer) "
                             "labels are not supported by the nnunet backend")
        folded = name.strip().casefold()
        if folded in _BACKGROUND_NAMES or folded in _IGNORE_NAMES:
            continue
        canon = canonical_value(name)
        if canon is None:
            unknown.append(name)
        else:
            table[value] = canon
    if unknown:
        raise ModelError(f"{where}: unknown label name(s) {', '.join(map(repr, unknown))}; "
                         "rename them in dataset.json to one of ICH, IVH, oedema, extra-axial "
                         "(or a synonym: hemorrhage, IPH, edema, EAH, SDH, EDH)")
    if not table:
        raise ModelError(f"{where}: no foreground labels")
    return table


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


@contextlib.contextmanager
def _quiet():
    """nnU-Net prints to stdout; send that to our debug log instead (journald keeps stdout)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        text = buffer.getvalue().strip()
        if text:
            log.debug("nnunetv2: %s", text)


def find_trainer_class(name: str) -> Any:
    """The nnU-Net trainer class a checkpoint names (its ``build_network_architecture`` builds the
    network). nnU-Net's own lookup imports every trainer module and stops at the first that fails
    (the Primus trainers need timm/torchvision, which fails with a CUDA torchvision wheel beside a
    CPU torch); if it fails, search again skipping modules that cannot be imported."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except (ImportError, RuntimeError, AssertionError, AttributeError, OSError) as first_error:
        import nnunetv2.training.nnUNetTrainer as trainers

        log.debug("nnU-Net trainer lookup failed (%s: %s); searching module by module",
                  type(first_error).__name__, first_error)
        for info in pkgutil.walk_packages(trainers.__path__, trainers.__name__ + ".",
                                          onerror=lambda _name: None):
            try:
                module = importlib.import_module(info.name)
            except (ImportError, RuntimeError, AttributeError, OSError) as exc:
                log.debug("skipping %s: %s: %s", info.name, type(exc).__name__, exc)
                continue
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, nnUNetTrainer):
                return cls
        raise ModelError(f"nnU-Net trainer class {name!r} not found: {first_error}") from first_error


class NnUNetBackend:
    """Segments with a trained nnU-Net v2 model folder (one or more folds, averaged).

    Parameters
    ----------
    model_dir
        The trained-model folder, e.g. ``Dataset123_ICH/nnUNetTrainer__nnUNetPlans__3d_fullres``.
    folds
        Folds to ensemble (``fold_<k>`` subfolders); ``"all"`` is accepted for ``fold_all``.
    device
        ``auto``, ``cpu`` or ``cuda`` (see :func:`~dicomnode.segment.base.select_device`).
    checkpoint
        Checkpoint file name inside each fold folder.
    mirror
        Test-time mirroring over the axes the model allows (nnU-Net's default; 8 passes in 3D).
    tile_step_size
        Sliding-window step as a fraction of the patch size (nnU-Net's default 0.5).
    """

    name = "nnunet"

    def __init__(self, model_dir: Path, *, folds: Sequence[int | str] = (0,), device: str = "auto",
                 checkpoint: str = "checkpoint_final.pth", mirror: bool = True,
                 tile_step_size: float = 0.5) -> None:
        model_dir = Path(model_dir)
        fold_list = self._check_folds(folds)
        if not checkpoint or "/" in checkpoint:
            raise ValueError(f"checkpoint {checkpoint!r}: expected a file name")
        if not 0 < tile_step_size <= 1:
            raise ValueError(f"tile_step_size {tile_step_size!r}: expected 0 < step <= 1")
        self.folder = model_dir
        self.folds = tuple(fold_list)
        self._check_folder(model_dir, fold_list, checkpoint)
        self.dataset_json = _read_json(model_dir / "dataset.json")
        self.plans = _read_json(model_dir / "plans.json")
        self._check_dataset(self.dataset_json, model_dir / "dataset.json")
        self.class_values = label_table(self.dataset_json["labels"],
                                        where=str(model_dir / "dataset.json"))
        self.lut = np.zeros(max(self.class_values) + 1, np.uint8)
        for value, canon in self.class_values.items():
            self.lut[value] = canon
        synthetic = self.dataset_json.get("synthetic_training", False)
        if not isinstance(synthetic, bool):
            raise ModelError(f"{model_dir / 'dataset.json'}: synthetic_training {synthetic!r}: "
                             "expected true or false")
        self.synthetic_training = synthetic

        try:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        except ImportError as exc:
            raise ModelError(f"the nnunet backend needs nnunetv2 ({exc}); install it with "
                             f"`{INSTALL_HINT}`") from exc

        self.device = select_device(device)
        cuda = self.device.type == "cuda"
        with _quiet():
            self.predictor = nnUNetPredictor(
                tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=mirror,
                perform_everything_on_device=cuda, device=self.device, verbose=False,
                verbose_preprocessing=False, allow_tqdm=False)
        try:
            with _quiet():
                trainer_name, config_name = self._load(model_dir, fold_list, checkpoint)
        except ModelError as exc:
            raise ModelError(f"{model_dir}: {exc}") from exc
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, ImportError,
                AssertionError, OSError, EOFError, pickle.UnpicklingError) as exc:
            text = str(exc) if len(str(exc)) <= 600 else str(exc)[:600] + " ..."
            raise ModelError(f"{model_dir}: nnU-Net could not load the model: "
                             f"{type(exc).__name__}: {text}") from exc

        self.model = str(self.dataset_json.get("name") or self.plans.get("dataset_name")
                         or model_dir.parent.name)
        fold_text = ",".join(str(f) for f in fold_list)
        ckpt_text = "" if checkpoint == "checkpoint_final.pth" else f" {Path(checkpoint).stem}"
        plans_name = self.predictor.plans_manager.plans_name
        self.version = f"{trainer_name}__{plans_name}__{config_name} folds {fold_text}{ckpt_text}"
        log.info("nnunet model %s (%s) on %s: labels %s", self.model, self.version,
                 self.device.type, {v: LABELS[c] for v, c in self.class_values.items()})

    def _load(self, model_dir: Path, folds: list[int | str], checkpoint: str) -> tuple[str, str]:
        """What ``nnUNetPredictor.initialize_from_trained_model_folder`` does, plus checks: every
        fold from the same trainer and configuration, every fold's weights loaded strictly now
        (not at the first series), and a trainer lookup that survives broken optional modules.
        Returns (trainer name, configuration name)."""
        import torch
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        parameters: list[dict[str, Any]] = []
        first: tuple[str, str] | None = None
        mirror_axes = None
        for fold in folds:
            path = model_dir / f"fold_{fold}" / checkpoint
            # nnU-Net checkpoints are pickles (plans, trainer arguments): the folder must be trusted.
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
                raise ModelError(f"fold_{fold}/{checkpoint}: not an nnU-Net checkpoint")
            ident = (ckpt["trainer_name"], ckpt["init_args"]["configuration"])
            if first is None:
                first = ident
                mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
            elif ident != first:
                raise ModelError(f"fold_{fold}: trained with {ident}, fold_{folds[0]} with {first}")
            parameters.append(ckpt["network_weights"])
        if first is None:
            raise ModelError("no folds")
        trainer_name, config_name = first

        plans_manager = PlansManager(self.plans)
        config = plans_manager.get_configuration(config_name)
        if config.previous_stage_name is not None:
            raise ModelError(f"configuration {config_name!r} is a cascade stage "
                             "(needs the low-resolution stage's output); use 3d_fullres or 2d")
        n_in = determine_num_input_channels(plans_manager, config, self.dataset_json)
        n_out = plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads
        trainer = find_trainer_class(trainer_name)
        if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
            network = trainer.build_network_architecture(plans_manager, config, n_in, n_out,
                                                         enable_deep_supervision=False)
        else:  # the signature before nnU-Net 2.6
            network = trainer.build_network_architecture(
                config.network_arch_class_name, config.network_arch_init_kwargs,
                config.network_arch_init_kwargs_req_import, n_in, n_out,
                enable_deep_supervision=False)
        for params in reversed(parameters):  # strict: every fold must fit; fold 0 stays loaded
            network.load_state_dict(params)
        self.predictor.manual_initialization(network, plans_manager, config, parameters,
                                             self.dataset_json, trainer_name, mirror_axes)
        return trainer_name, config_name

    @staticmethod
    def _check_folds(folds: Sequence[int | str]) -> list[int | str]:
        if isinstance(folds, (str, bytes)) or not isinstance(folds, Sequence) or not folds:
            raise ValueError(f"folds {folds!r}: expected a non-empty list of fold numbers")
        out: list[int | str] = []
        for f in folds:
            if f == "all" or (isinstance(f, int) and not isinstance(f, bool) and f >= 0):
                out.append(f)
            else:
                raise ValueError(f"fold {f!r}: expected a non-negative integer or 'all'")
        if len(set(out)) != len(out):
            raise ValueError(f"folds {folds!r}: duplicates")
        return out

    @staticmethod
    def _check_folder(model_dir: Path, folds: list[int | str], checkpoint: str) -> None:
        if not model_dir.is_dir():
            raise ModelError(f"nnU-Net model folder {model_dir} does not exist")
        wanted = [model_dir / "dataset.json", model_dir / "plans.json"]
        wanted += [model_dir / f"fold_{f}" / checkpoint for f in folds]
        missing = [str(p.relative_to(model_dir)) for p in wanted if not p.is_file()]
        if missing:
            present = sorted(p.name for p in model_dir.glob("fold_*") if p.is_dir())
            raise ModelError(f"nnU-Net model folder {model_dir} is incomplete: missing "
                             f"{', '.join(missing)} (fold folders present: {present or 'none'})")

    @staticmethod
    def _check_dataset(dataset: Mapping[str, Any], path: Path) -> None:
        channels = dataset.get("channel_names", dataset.get("modality"))
        labels = dataset.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise ModelError(f"{path}: no 'labels' mapping")
        if not isinstance(channels, dict) or len(channels) != 1:
            raise ModelError(f"{path}: channel_names {channels!r}: the nnunet backend feeds one "
                             "CT channel, the model expects a different number")
        name = str(next(iter(channels.values())))
        if name.casefold() != "ct":
            log.warning("%s: input channel is named %r, not 'CT': nnU-Net will not use its CT "
                        "(HU-clipping) normalisation for it", path, name)

    def segment(self, volume: CTVolume) -> LabelMap:
        image = volume.image
        if image.GetDimension() != 3:
            raise ModelError(f"nnunet: expected a 3D volume, got {image.GetDimension()}D")
        hu = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)[None]  # (1, z, y, x)
        spacing_zyx = [float(s) for s in reversed(image.GetSpacing())]
        with _quiet():
            seg = self.predictor.predict_single_npy_array(hu, {"spacing": spacing_zyx})
        seg = np.asarray(seg)
        if seg.shape != hu.shape[1:]:
            raise ModelError(f"nnunet: prediction shape {seg.shape} != volume shape {hu.shape[1:]}")
        if seg.size and int(seg.max()) >= len(self.lut):
            raise ModelError(f"nnunet: model predicted label {int(seg.max())}, not in dataset.json")
        labels = self.lut[seg]
        out = sitk.GetImageFromArray(labels)
        out.CopyInformation(image)
        log.debug("nnunet %s: %s", volume.series_instance_uid,
                  {LABELS[c]: int((labels == c).sum()) for c in sorted(set(self.class_values.values()))})
        return LabelMap(image=out, backend=self.name, model=self.model, model_version=self.version,
                        labels={c: LABELS[c] for c in sorted(set(self.class_values.values()))},
                        synthetic_training=self.synthetic_training)
