"""The unet backend: training writes a bundle that loads strictly and segments on the CT grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.domain import ICH, CTVolume
from dicomnode.errors import ModelError
from dicomnode.lab.train_segmentation import TrainConfig, read_case, synth_cases, train
from dicomnode.segment.bundle import load_bundle
from dicomnode.segment.unet import UNetBackend, resample_to_spacing

TINY = TrainConfig(spacing_mm=(4.0, 4.0, 5.0), roi_size_zyx=(16, 32, 32), filters=(4, 8, 16),
                   epochs=2, iterations_per_epoch=2, batch_size=1, device="cpu")


def volume_of(image: sitk.Image) -> CTVolume:
    return CTVolume(series_instance_uid="1.2.3", study_instance_uid="1.2", image=image,
                    slices=(), orientation=(1, 0, 0, 0, 1, 0), pixel_spacing_mm=(1.0, 1.0),
                    rows=image.GetSize()[1], columns=image.GetSize()[0])


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unet")
    cases = synth_cases(root / "cases", 3, matrix=64)
    train(cases, root / "bundle", TINY, data_description="3 tiny phantoms")
    return root / "bundle"


def test_training_writes_a_self_describing_bundle(bundle_dir: Path) -> None:
    meta = json.loads((bundle_dir / "model.json").read_text())
    assert meta["labels"] == {"1": "ICH", "2": "IVH", "3": "oedema"}
    assert meta["synthetic_training"] is True and "synthetic" in meta["intended_use"]
    assert meta["spacing_mm"] == [4.0, 4.0, 5.0] and meta["training"]["cases"] >= 2
    assert meta["antialias"] is True  # inference must smooth as the training data were
    assert load_bundle(bundle_dir, backend="unet").name == "bundle"


def test_backend_segments_on_the_volume_grid(bundle_dir: Path, tmp_path: Path) -> None:
    case = synth_cases(tmp_path, 1, seed=900001, matrix=64)[0]
    image, _ = read_case(case)
    backend = UNetBackend(bundle_dir, device="cpu")
    labels = backend.segment(volume_of(image))
    assert labels.image.GetSize() == image.GetSize()
    assert labels.image.GetOrigin() == pytest.approx(image.GetOrigin())
    values = set(np.unique(sitk.GetArrayViewFromImage(labels.image)).tolist())
    assert values <= {0, 1, 2, 3}
    assert labels.backend == "unet" and labels.synthetic_training
    assert labels.labels[ICH] == "ICH"


def test_tampered_or_mismatched_bundles_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    weights = copy / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(ModelError, match="SHA-256"):
        UNetBackend(copy, device="cpu")
    with pytest.raises(ModelError, match="backend"):
        load_bundle(bundle_dir, backend="blast_ct")
    with pytest.raises(ModelError, match="not found"):
        UNetBackend(tmp_path / "nowhere", device="cpu")


def test_antialiased_downsampling_keeps_geometry_and_removes_voxel_noise() -> None:
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.normal(40.0, 20.0, (40, 128, 128)).astype(np.float32))
    noise.SetSpacing((0.5, 0.5, 1.0))
    noise.SetOrigin((-32.0, -32.0, 10.0))
    plain = resample_to_spacing(noise, (2.0, 2.0, 2.5))
    smooth = resample_to_spacing(noise, (2.0, 2.0, 2.5), antialias=True)
    assert smooth.GetSize() == plain.GetSize() == (32, 32, 16)
    assert smooth.GetOrigin() == plain.GetOrigin() and smooth.GetSpacing() == (2.0, 2.0, 2.5)
    sd_plain = float(sitk.GetArrayViewFromImage(plain).std())
    sd_smooth = float(sitk.GetArrayViewFromImage(smooth).std())
    # Linear interpolation keeps most of the per-voxel noise; the Gaussian removes most of it.
    assert sd_plain > 10.0 and sd_smooth < sd_plain / 3
    assert float(sitk.GetArrayViewFromImage(smooth).mean()) == pytest.approx(40.0, abs=1.0)


def test_labels_outside_the_skull_are_cleared(tmp_path: Path) -> None:
    from dicomnode.segment.unet import keep_intracranial

    image, _ = read_case(synth_cases(tmp_path, 1, seed=900002, matrix=64)[0])
    hu = sitk.GetArrayFromImage(image)
    everywhere = np.full(hu.shape, ICH, np.uint8)
    kept = keep_intracranial(everywhere, volume_of(image))
    # cortical bone and air go; calcifications (pineal, a few hundred HU) are intracranial
    assert not kept[hu > 1000].any() and not kept[hu < -500].any()
    z = hu.shape[0] // 2
    assert kept[z, 32, 32] == ICH  # the middle of the brain stays
    assert 0.05 < kept.mean() / ICH < 0.9


def test_validation_prefers_large_haematomas_and_some_negatives() -> None:
    from dicomnode.lab.train_segmentation import split_validation

    cfg = TrainConfig(max_validation_cases=8)
    volumes = [0, 1.0, 20.0, 0, 0.5, 30.0, 0, 8.0, 6.0, 0] * 6
    cases = [Path(f"c{i}") for i in range(len(volumes))]
    ml = dict(zip(cases, volumes, strict=True))
    val, fit = split_validation(cases, volumes, cfg)
    assert len(val) == 8 and not set(val) & set(fit) and len(fit) == len(cases) - 8
    # two negatives (a quarter), then haematomas >= 5 mL only; 1 and 0.5 mL clots never
    assert sorted(ml[p] for p in val) == [0, 0, 6.0, 8.0, 20.0, 20.0, 30.0, 30.0]
    assert split_validation(cases[:3], volumes[:3], cfg) == ([], cases[:3])
