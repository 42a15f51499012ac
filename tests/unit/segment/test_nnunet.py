"""nnU-Net v2 backend: label-name mapping and folder checks (always), and a tiny nnU-Net-format
model (3d_fullres PlainConvUNet, trained here for a few dozen steps on synthetic blobs) run through
nnunetv2's own predictor (skipped when nnunetv2 is not installed)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.domain import EXTRA_AXIAL, ICH, IVH, OEDEMA, CTVolume
from dicomnode.errors import ModelError
from dicomnode.segment.nnunet import NnUNetBackend, canonical_value, label_table

try:
    import nnunetv2  # noqa: F401

    HAVE_NNUNET = True
except ImportError:
    HAVE_NNUNET = False
needs_nnunet = pytest.mark.skipif(not HAVE_NNUNET, reason="nnunetv2 not installed (pip install .[nnunet])")

SPACING_ZYX = [2.0, 1.0, 1.0]  # the tiny model's target spacing
PATCH_ZYX = [16, 32, 32]
INTENSITY = {"mean": 60.0, "std": 20.0, "percentile_00_5": 0.0, "percentile_99_5": 100.0,
             "min": -20.0, "max": 120.0, "median": 60.0}


# --- a tiny nnU-Net v2 model folder ---------------------------------------------------------------

def dataset_json(labels: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "Dataset999_TinyICH", "channel_names": {"0": "CT"}, "labels": labels,
            "numTraining": 8, "file_ending": ".nii.gz", **extra}


def plans_json() -> dict[str, Any]:
    resample = "resample_data_or_seg_to_shape"
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 2, "features_per_stage": [8, 16],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]],
            "n_conv_per_stage": [2, 2], "n_conv_per_stage_decoder": [2], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    fullres = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": PATCH_ZYX, "median_image_size_in_voxels": [20, 32, 32],
        "spacing": SPACING_ZYX, "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": resample, "resampling_fn_seg": resample,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                      "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                     "force_separate_z": None},
        "resampling_fn_probabilities": resample,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": arch, "batch_dice": True,
    }
    return {
        "dataset_name": "Dataset999_TinyICH", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": SPACING_ZYX,
        "original_median_shape_after_transp": [20, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": fullres},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": INTENSITY},
    }


def phantom(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...], rng: np.random.Generator,
            centre_mm: np.ndarray | None = None, radius_mm: float | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Air around a 30 HU 'brain' ellipsoid with a 70 HU blob: (hu, blob mask), z, y, x."""
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape_zyx, spacing_zyx, strict=True)],
                        indexing="ij")
    extent = np.array(shape_zyx) * np.array(spacing_zyx)
    brain = sum(((g - e / 2) / (0.45 * e)) ** 2 for g, e in zip(grids, extent, strict=True)) <= 1
    if centre_mm is None:
        centre_mm = extent / 2 + rng.uniform(-0.2, 0.2, 3) * extent
    if radius_mm is None:
        radius_mm = float(rng.uniform(3.5, 7.0))
    blob = sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True)) <= radius_mm ** 2
    blob &= brain
    hu = np.where(brain, 30.0, -1000.0) + rng.normal(0, 6, shape_zyx)
    hu[blob] = 70.0 + rng.normal(0, 6, int(blob.sum()))
    return hu.astype(np.float32), blob


def train_tiny_network(plans: dict[str, Any], steps: int, seed: int = 0,
                       lr: float = 1e-2) -> dict[str, Any]:
    """A few Adam steps on synthetic blobs, normalised exactly as nnU-Net will at inference."""
    import torch
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                 arch["_kw_requires_import"], 1, 2, allow_init=True,
                                 deep_supervision=False)
    norm = CTNormalization(use_mask_for_norm=False, intensityproperties=INTENSITY)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    weight = torch.tensor([1.0, 3.0])  # blobs are small: weight the foreground
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            hu, blob = phantom(tuple(PATCH_ZYX), tuple(SPACING_ZYX), rng)
            xs.append(norm.run(hu.copy())[None])
            ys.append(blob.astype(np.int64))
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        logits = net(x)
        probs = torch.softmax(logits, 1)[:, 1]
        fg = (y == 1).float()
        dice = 1 - (2 * (probs * fg).sum() + 1) / (probs.sum() + fg.sum() + 1)
        loss = torch.nn.functional.cross_entropy(logits, y, weight=weight) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def write_model(folder: Path, weights: dict[str, Any], labels: dict[str, Any],
                *, folds: tuple[int, ...] = (0,), **extra: Any) -> Path:
    """An nnU-Net v2 trained-model folder, checkpoints in the keys nnUNetTrainer.save_checkpoint
    writes (what nnUNetPredictor.initialize_from_trained_model_folder reads)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    ds, plans = dataset_json(labels, **extra), plans_json()
    (folder / "dataset.json").write_text(json.dumps(ds, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({
            "network_weights": weights,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold,
                          "dataset_json": ds, "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 1,
        }, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def volume_of(hu_zyx: np.ndarray, spacing_xyz: tuple[float, float, float]) -> CTVolume:
    image = sitk.GetImageFromArray(hu_zyx.astype(np.float32))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((-20.0, -15.0, 7.5))
    return CTVolume(series_instance_uid="1.2.3", study_instance_uid="1.2", image=image, slices=(),
                    orientation=(1, 0, 0, 0, 1, 0), pixel_spacing_mm=spacing_xyz[1::-1],
                    rows=image.GetSize()[1], columns=image.GetSize()[0])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


TRAIN_STEPS = 20  # Dice 0.92-0.99 on the test case over seeds 0-3 (1 thread, ~4 s)


def one_thread() -> None:
    """The tiny network is fastest on one thread (and CI machines are shared): the backend's
    select_device() sets one thread per core, so set it back after each construction."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _restore_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights() -> dict[str, Any]:
    one_thread()
    return train_tiny_network(plans_json(), TRAIN_STEPS)


@pytest.fixture(scope="module")
def test_case() -> tuple[CTVolume, np.ndarray]:
    """40 x 40 x 16 voxels (x, y, z) at 0.8 x 0.8 x 2 mm: nnU-Net resamples it to 1 x 1 x 2 mm
    (one 16 x 32 x 32 patch) and the segmentation back; the blob is off-centre on every axis."""
    spacing_xyz = (0.8, 0.8, 2.0)
    hu, blob = phantom((16, 40, 40), spacing_xyz[::-1], np.random.default_rng(7),
                       centre_mm=np.array([14.0, 13.0, 18.0]), radius_mm=6.0)
    return volume_of(hu, spacing_xyz), blob


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, weights: dict[str, Any]) -> NnUNetBackend:
    folder = write_model(tmp_path_factory.mktemp("nnunet") / "nnUNetTrainer__nnUNetPlans__3d_fullres",
                         weights, {"background": 0, "ICH": 1})
    backend = NnUNetBackend(folder, folds=(0,), device="cpu")  # mirroring on (nnU-Net's default)
    one_thread()
    return backend


# --- label names and folder checks (no nnunetv2 needed) -------------------------------------------

@pytest.mark.parametrize(("name", "value"), [
    ("ICH", ICH), ("hemorrhage", ICH), ("Haemorrhage", ICH), ("IPH", ICH),
    ("intraparenchymal_hemorrhage", ICH), ("IVH", IVH), ("edema", OEDEMA), ("Oedema", OEDEMA),
    ("PHE", OEDEMA), ("EAH", EXTRA_AXIAL), ("extra-axial", EXTRA_AXIAL),
    ("Extra axial", EXTRA_AXIAL), ("SDH", EXTRA_AXIAL), ("EDH", EXTRA_AXIAL),
])
def test_label_synonyms(name: str, value: int) -> None:
    assert canonical_value(name) == value


def test_label_table_maps_several_names() -> None:
    table = label_table({"background": 0, "hemorrhage": 1, "IVH": 2, "edema": 3, "SDH": 4,
                         "EDH": 5, "ignore": 6})
    assert table == {1: ICH, 2: IVH, 3: OEDEMA, 4: EXTRA_AXIAL, 5: EXTRA_AXIAL}


def test_unknown_label_names_refused_and_listed() -> None:
    with pytest.raises(ModelError, match=r"'SAH'.*'tumour'"):
        label_table({"background": 0, "ICH": 1, "SAH": 2, "tumour": 3})


def test_region_labels_refused() -> None:
    with pytest.raises(ModelError, match="region-based"):
        label_table({"background": 0, "ICH": [1, 2], "IVH": 2})


def test_unknown_labels_refuse_the_model(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text(json.dumps(dataset_json({"background": 0, "SAH": 1})))
    with pytest.raises(ModelError, match="unknown label name.*'SAH'"):
        NnUNetBackend(folder)


def test_incomplete_folder_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        NnUNetBackend(tmp_path / "nowhere")
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(dataset_json({"background": 0, "ICH": 1})))
    with pytest.raises(ModelError, match=r"incomplete: missing plans\.json, fold_0/checkpoint_final"
                                         r"\.pth, fold_1/checkpoint_final\.pth"):
        NnUNetBackend(tmp_path, folds=(0, 1))


def test_bad_arguments_rejected(tmp_path: Path) -> None:
    for folds in ((), (-1,), (0, 0), "0", (True,)):
        with pytest.raises(ValueError):
            NnUNetBackend(tmp_path, folds=folds)  # type: ignore[arg-type]


def test_missing_nnunetv2_is_a_clear_model_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "m"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text(json.dumps(dataset_json({"background": 0, "ICH": 1})))
    monkeypatch.setitem(sys.modules, "nnunetv2.inference.predict_from_raw_data", None)
    with pytest.raises(ModelError, match=r"pip install \.\[nnunet\]"):
        NnUNetBackend(folder)


# --- the real predictor on a tiny model -----------------------------------------------------------

@needs_nnunet
def test_segments_the_blob_on_the_same_grid(backend: NnUNetBackend,
                                            test_case: tuple[CTVolume, np.ndarray]) -> None:
    volume, blob = test_case
    labels = backend.segment(volume)
    out = sitk.GetArrayFromImage(labels.image)
    assert labels.image.GetSize() == volume.image.GetSize()
    assert labels.image.GetSpacing() == volume.image.GetSpacing()
    assert labels.image.GetOrigin() == volume.image.GetOrigin()
    assert labels.image.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(out)) <= {0, ICH}
    assert dice(out == ICH, blob) > 0.8, dice(out == ICH, blob)
    assert labels.backend == "nnunet" and labels.model == "Dataset999_TinyICH"
    assert labels.model_version == "nnUNetTrainer__nnUNetPlans__3d_fullres folds 0"
    assert labels.labels == {ICH: "ICH"} and labels.synthetic_training is False
    again = sitk.GetArrayFromImage(backend.segment(volume).image)
    np.testing.assert_array_equal(out, again)  # deterministic


@needs_nnunet
def test_array_and_spacing_in_simpleitk_reader_order(backend: NnUNetBackend,
                                                     test_case: tuple[CTVolume, np.ndarray],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    volume, _ = test_case
    seen: dict[str, Any] = {}
    hu = sitk.GetArrayFromImage(volume.image)

    def spy(image: np.ndarray, props: dict[str, Any], *args: Any, **kwargs: Any) -> np.ndarray:
        seen["spacing"] = list(props["spacing"])
        np.testing.assert_array_equal(image, hu[None])  # HU, untouched, (1, z, y, x)
        out = np.zeros(image.shape[1:], np.uint8)
        out[0, 1, 2] = 1
        return out

    monkeypatch.setattr(backend.predictor, "predict_single_npy_array", spy)
    out = sitk.GetArrayFromImage(backend.segment(volume).image)
    assert seen == {"spacing": [2.0, 0.8, 0.8]}  # (z, y, x) as nnU-Net's SimpleITK reader gives
    assert out[0, 1, 2] == ICH and out.sum() == ICH  # and the result is read back in that order


@needs_nnunet
def test_label_names_reach_the_label_map(tmp_path: Path, weights: dict[str, Any],
                                         test_case: tuple[CTVolume, np.ndarray]) -> None:
    """Same network, its class 1 named "IVH" and two folds: canonical IVH, synthetic flag."""
    folder = write_model(tmp_path / "ivh", weights, {"background": 0, "IVH": 1}, folds=(0, 1),
                         synthetic_training=True)
    backend = NnUNetBackend(folder, folds=[0, 1], device="cpu", mirror=False)
    one_thread()
    volume, blob = test_case
    labels = backend.segment(volume)
    out = sitk.GetArrayFromImage(labels.image)
    assert set(np.unique(out)) <= {0, IVH}
    assert dice(out == IVH, blob) > 0.8
    assert labels.labels == {IVH: "IVH"} and labels.synthetic_training is True
    assert labels.model_version.endswith("folds 0,1")


@needs_nnunet
def test_other_trainers_and_mixed_folds(tmp_path: Path, weights: dict[str, Any]) -> None:
    """A stock trainer variant is found even where nnU-Net's own lookup trips over an optional
    module (Primus needs torchvision); folds from different trainings are refused."""
    import torch

    folder = write_model(tmp_path / "m", weights, {"background": 0, "ICH": 1}, folds=(0, 1))
    for fold, trainer in ((0, "nnUNetTrainer_250epochs"), (1, "nnUNetTrainer_250epochs")):
        path = folder / f"fold_{fold}" / "checkpoint_final.pth"
        torch.save({**torch.load(path, weights_only=False), "trainer_name": trainer}, path)
    backend = NnUNetBackend(folder, folds=(0, 1), device="cpu")
    one_thread()
    assert backend.version == "nnUNetTrainer_250epochs__nnUNetPlans__3d_fullres folds 0,1"
    path = folder / "fold_1" / "checkpoint_final.pth"
    torch.save({**torch.load(path, weights_only=False), "trainer_name": "nnUNetTrainer"}, path)
    with pytest.raises(ModelError, match="fold_1: trained with"):
        NnUNetBackend(folder, folds=(0, 1), device="cpu")


@needs_nnunet
def test_broken_checkpoint_is_a_model_error(tmp_path: Path, weights: dict[str, Any]) -> None:
    import torch

    folder = write_model(tmp_path / "m", weights, {"background": 0, "ICH": 1})
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    torch.save({**ckpt, "trainer_name": "MyCustomTrainer"}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelError, match="trainer class 'MyCustomTrainer' not found"):
        NnUNetBackend(folder, device="cpu")
    torch.save({**ckpt, "network_weights": {}}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelError, match=r"(?s)could not load.*Missing key.* \.\.\.$"):
        NnUNetBackend(folder, device="cpu")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="could not load"):
        NnUNetBackend(folder, device="cpu")
    shutil.rmtree(folder / "fold_0")
    with pytest.raises(ModelError, match="incomplete"):
        NnUNetBackend(folder, device="cpu")
