"""BLAST-CT backend: strict weight loading, network shapes, preprocessing quirks (fast); Dice on
synthetic phantoms and the SPEC section 8 reference figures on the GE series (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

MODEL_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "models" / "blast-ct-v1"
GE_DIR = MODEL_DIR.parents[1] / "data" / "ge-head-ct-tilt"

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "weights" / "model_1.pt").is_file(),
                                reason=f"BLAST-CT weights not in {MODEL_DIR / 'weights'}")

torch = pytest.importorskip("torch")

from dicomnode.domain import EXTRA_AXIAL, ICH, IVH, OEDEMA, CTVolume  # noqa: E402
from dicomnode.errors import ModelError  # noqa: E402
from dicomnode.segment import blast_ct_net as net_mod  # noqa: E402
from dicomnode.segment.blast_ct import (  # noqa: E402
    TO_CANONICAL,
    BlastCTBackend,
    as_reference_pixel_type,
    crop_around,
    normalise,
    preprocess,
    reorient,
    resample_1mm,
    run_model_on_crop,
)

WEIGHTS_1 = MODEL_DIR / "weights" / "model_1.pt"


@pytest.fixture(scope="module")
def state() -> dict:
    return torch.load(WEIGHTS_1, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def net():
    return net_mod.load_deepmedic(WEIGHTS_1)


# --- loading -------------------------------------------------------------------------------------

def test_every_key_and_shape_maps(state, net) -> None:
    ours = net.state_dict()
    assert len(state) == len(ours) == 189
    for k, v in ours.items():
        up = net_mod.upstream_key(k)
        assert tuple(state[up].shape) == tuple(v.shape)
        assert torch.equal(state[up], v)
    assert net_mod.upstream_key("pathways.0.blocks.0.conv.weight") == "path(5, 5, 5)0.path.1.conv.weight"
    assert net_mod.upstream_key("pathways.2.blocks.7.prelu.weight") == "path(1, 1, 1)2.path.8.prelu.weight"
    assert net_mod.upstream_key("head.2.bn.running_var") == "fully_connected.2.bn.running_var"
    assert sum(p.numel() for p in net.parameters()) == 1_030_033
    assert not net.training


@pytest.mark.parametrize("damage", ["missing", "shape", "extra", "dtype"])
def test_damaged_state_dict_is_refused(state, damage: str) -> None:
    bad = dict(state)
    key = "path(3, 3, 3)1.path.4.conv.weight"
    if damage == "missing":
        del bad[key]
    elif damage == "shape":
        bad[key] = torch.zeros(40, 40, 3, 3, 2)
    elif damage == "extra":
        bad["path(3, 3, 3)1.path.9.conv.weight"] = torch.zeros(1)
    else:
        bad[key] = bad[key].double()
    with pytest.raises(ModelError, match=r"bad\.pt.*path\(3, 3, 3\)1\.path\.(4|9)"):
        net_mod.map_state_dict(bad, net_mod.DeepMedic(), "bad.pt")


def test_unreadable_or_missing_file_is_refused(tmp_path: Path, state) -> None:
    with pytest.raises(ModelError, match="not found"):
        net_mod.load_deepmedic(tmp_path / "model_1.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="junk.pt.*cannot be read"):
        net_mod.load_deepmedic(junk)
    partial = dict(state)
    partial.pop("fully_connected.1.prelu.weight")
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ModelError, match=r"partial\.pt.*1 missing key.*fully_connected\.1\.prelu\.weight"):
        net_mod.load_deepmedic(tmp_path / "partial.pt")


# --- network -------------------------------------------------------------------------------------

def test_patch_shapes(net) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        y = net(torch.randn(1, 1, 110, 110, 110, generator=g))
        assert tuple(y.shape) == (1, 5, 30, 30, 30)
        assert torch.isfinite(y).all()
        y = net(torch.randn(1, 1, 135, 120, 110, generator=g))
        assert tuple(y.shape) == (1, 5, 55, 40, 30)
    with pytest.raises(ValueError, match="5 \\* \\(k \\+ 16\\)"):
        net_mod.DeepMedic.output_size((111, 110, 110))


def test_uniform_patch_gives_a_constant_output(net) -> None:
    """Basis of the exact 'uniform patch' shortcut: constant input -> spatially constant logits."""
    with torch.inference_mode():
        y = net(torch.full((1, 1, 110, 110, 110), -1.0))
    assert torch.allclose(y, y[:, :, :1, :1, :1].expand_as(y), atol=1e-4)


def test_predict_array_tiles_uniform_and_empty_patches() -> None:
    """Every voxel labelled once; uniform tiles need no run; empty tiles are skipped on request."""
    backend = BlastCTBackend(MODEL_DIR, ensemble_size=1, device="cpu", batch_size=2)
    arr = np.full((61, 20, 25), -1.0, np.float32)
    arr[0:10, 5:15, 5:20] = 0.2  # tile z0 holds it, z1 (output all air) sees it, z2 sees only air
    out = backend.predict_array(arr)
    stats = backend.last_stats
    assert out.shape == arr.shape and out.dtype == np.uint8
    assert (stats["patches"], stats["run"], stats["uniform"], stats["empty_run"]) == (3, 2, 1, 1)
    assert stats["empty_labelled_voxels"] == np.count_nonzero(out[30:60])
    skipping = BlastCTBackend(MODEL_DIR, ensemble_size=1, device="cpu", skip_empty_patches=True)
    fast = skipping.predict_array(arr)
    assert (skipping.last_stats["run"], skipping.last_stats["skipped"]) == (1, 1)
    assert np.array_equal(fast[:30], out[:30]) and np.array_equal(fast[60:], out[60:])
    assert not fast[30:60].any()
    empty = backend.predict_array(np.full((40, 40, 40), -1.0, np.float32))
    assert backend.last_stats["uniform"] == 8 and backend.last_stats["run"] == 0
    assert (empty == empty.flat[0]).all()


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="ensemble_size"):
        BlastCTBackend(MODEL_DIR, ensemble_size=13)
    with pytest.raises(ValueError, match="batch_size"):
        BlastCTBackend(MODEL_DIR, ensemble_size=1, batch_size=0)
    with pytest.raises(ValueError, match="device"):
        BlastCTBackend(MODEL_DIR, ensemble_size=1, device="tpu")
    with pytest.raises(ModelError, match="model_1.pt.*not found"):
        BlastCTBackend(MODEL_DIR / "nowhere", ensemble_size=1)
    b = BlastCTBackend(MODEL_DIR / "weights", ensemble_size=2, device="cpu")
    assert len(b.nets) == 2 and b.model_version == "1 (ensemble of 2)" and b.autocast_dtype is None


def test_class_mapping_is_canonical() -> None:
    assert TO_CANONICAL.tolist() == [0, ICH, EXTRA_AXIAL, OEDEMA, IVH]


# --- preprocessing -------------------------------------------------------------------------------

def _image(size=(6, 5, 4), spacing=(0.5, 0.7, 2.5), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1),
           origin=(10.0, 20.0, -30.0)) -> sitk.Image:
    arr = (np.arange(np.prod(size)).reshape(size[::-1]) * 3 - 40).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    return img


def test_flip_quirk_shifts_by_the_full_extent() -> None:
    img = _image()
    out = reorient(img)
    n_y, s_y = img.GetSize()[1], img.GetSpacing()[1]
    assert out.GetOrigin() == pytest.approx((10.0, 20.0 - n_y * s_y, -30.0))
    assert out.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert out.GetSize() == img.GetSize() and out.GetPixelID() == sitk.sitkInt16
    src, new = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(out)
    # new y index j lies at source y index n - j: index 0 is outside (minimum), source 0 is lost
    assert (new[:, 0, :] == src.min()).all()
    # linear interpolation at grid points, truncated back to int16: exact up to 1 unit
    assert np.abs(new[:, 1:, :].astype(int) - src[:, :0:-1, :]).max() <= 1
    as_float = sitk.GetArrayFromImage(reorient(sitk.Cast(img, sitk.sitkFloat32)))
    assert np.allclose(as_float[:, 1:, :], src[:, :0:-1, :], atol=1e-3)


def test_axis_permutation_and_oblique_direction() -> None:
    perm = _image(size=(6, 5, 4), direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    out = reorient(perm)
    assert out.GetSize() == (5, 6, 4) and out.GetSpacing() == pytest.approx((0.7, 0.5, 2.5))
    c, s = np.cos(0.3), np.sin(0.3)
    tilted = _image(direction=(1, 0, 0, 0, c, s, 0, -s, c))
    out = reorient(tilted)  # positive diagonal: grid unchanged, obliquity kept
    assert out.GetOrigin() == pytest.approx(tilted.GetOrigin())
    assert out.GetDirection() == pytest.approx(tilted.GetDirection())
    diff = sitk.GetArrayFromImage(out).astype(int) - sitk.GetArrayFromImage(tilted)
    assert np.abs(diff).max() <= 1  # linear interpolation at grid points, truncated to int16


def test_1mm_size_rule_rounds_half_to_even_and_keeps_pixel_type() -> None:
    # extents (n - 1) * spacing: 5 * 0.5 = 2.5 -> round(3.5) = 4; 4 * 0.625 = 2.5 -> 4;
    # 3 * 2.5 = 7.5 -> round(8.5) = 8
    img = _image(size=(6, 5, 4), spacing=(0.5, 0.625, 2.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = resample_1mm(img)
    assert out.GetSize() == (4, 4, 8)
    assert out.GetSpacing() == (1.0, 1.0, 1.0) and out.GetOrigin() == img.GetOrigin()
    assert out.GetPixelID() == sitk.sitkInt16
    half = _image(size=(4, 4, 4), spacing=(1.5, 0.5, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert resample_1mm(half).GetSize() == (6, 2, 4)  # 4.5 + 1 = 5.5 -> 6; 1.5 + 1 = 2.5 -> 2


def test_float_volume_is_cast_to_int16_when_integral() -> None:
    img = _image()
    as_float = sitk.Cast(img, sitk.sitkFloat32)
    assert as_reference_pixel_type(as_float).GetPixelID() == sitk.sitkInt16
    frac = sitk.Cast(img, sitk.sitkFloat32) + 0.25
    assert as_reference_pixel_type(frac).GetPixelID() == sitk.sitkFloat32
    a, _ = preprocess(as_float)
    b, _ = preprocess(img)
    assert np.array_equal(a, b)


def test_intensity_window() -> None:
    x = np.array([-1000, -15, -14, 42.5, 100, 3000], np.float32)
    y = normalise(x)
    assert y.dtype == np.float32
    assert y[0] == y[1] == -1.0 and y[-1] == y[-2] == 1.0
    assert y[3] == pytest.approx(0.0) and y[2] == ((np.float32(-28) + 15) - 100) / np.float32(115)


def test_crop_around_is_120mm_in_index_space() -> None:
    img = sitk.Image(512, 512, 33, sitk.sitkInt16)
    img.SetSpacing((0.4609375, 0.4609375, 5.0))
    crop = crop_around(img, img.TransformIndexToPhysicalPoint((300, 200, 16)))
    assert crop.GetSize() == (260, 260, 24)
    edge = crop_around(img, img.TransformIndexToPhysicalPoint((5, 5, 1)))
    assert edge.GetSize() == (260, 260, 24)
    assert edge.GetOrigin() == img.GetOrigin()


def test_segment_returns_a_labelmap_on_the_input_grid() -> None:
    """A small uniform-water volume: exercises the whole path cheaply (uniform tiles only)."""
    img = sitk.Image(24, 24, 6, sitk.sitkFloat32)
    img.SetSpacing((2.0, 2.0, 5.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    img += -1000.0
    vol = CTVolume("1.2.3", "1.2", img, (), (1, 0, 0, 0, -1, 0), (2.0, 2.0), 24, 24)
    backend = BlastCTBackend(MODEL_DIR, ensemble_size=1, device="cpu", skip_empty_patches=True)
    lm = backend.segment(vol)
    assert lm.backend == "blast_ct" and lm.model == "blast-ct-v1" and not lm.synthetic_training
    assert lm.model_version == "1 (ensemble of 1)"
    assert lm.image.GetSize() == img.GetSize() and lm.image.GetPixelID() == sitk.sitkUInt8
    assert lm.image.GetOrigin() == img.GetOrigin() and lm.image.GetDirection() == img.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(lm.image))) <= {0, ICH, IVH, OEDEMA, EXTRA_AXIAL}


# --- slow: phantoms and reference figures ----------------------------------------------------------

def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


PHANTOMS = [(1, 30.0, "lobar"), (2, 25.0, "basal_ganglia"), (3, 40.0, "lobar_subcortical")]


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize(("seed", "volume_ml", "site"), PHANTOMS)
def test_model_1_finds_the_phantom_haematoma(tmp_path: Path, seed: int, volume_ml: float, site: str) -> None:
    from dicomnode.lab.synth import make_study

    truth = make_study(tmp_path, seed=seed, hemorrhage_ml=volume_ml, site=site, matrix=512,
                       thickness_mm=5.0)
    centre = json.loads(truth.truth_path.read_text())["lesion"]["centre_lps_mm"]
    image = sitk.Cast(_read_series(truth.dicom_dir), sitk.sitkFloat32)
    t0 = time.perf_counter()
    crop, labels = run_model_on_crop(MODEL_DIR, image, centre, model=1, device="cpu")
    seconds = time.perf_counter() - t0
    ref = sitk.Resample(sitk.ReadImage(str(truth.label_path)), crop, sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    pred, gold = sitk.GetArrayFromImage(labels) == ICH, sitk.GetArrayFromImage(ref) == 1
    assert gold.sum() > 0
    dice = 2 * (pred & gold).sum() / (pred.sum() + gold.sum())
    print(f"phantom seed={seed} {site} {truth.ich_volume_ml:.1f} mL: ICH Dice {dice:.3f}, "
          f"crop {crop.GetSize()} in {seconds:.0f} s")
    assert dice >= 0.5


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not GE_DIR.is_dir(), reason=f"{GE_DIR} absent")
def test_reference_figures_on_the_ge_series(tmp_path: Path) -> None:
    """SPEC section 8: ImageSeriesReader (GDCM order) -> NIfTI -> model 1 -> native counts."""
    nifti = tmp_path / "ge.nii.gz"
    sitk.WriteImage(_read_series(GE_DIR), str(nifti))  # the reference ran on this NIfTI
    image = sitk.Cast(sitk.ReadImage(str(nifti)), sitk.sitkFloat32)  # our volumes are float32 HU
    vol = CTVolume("1.2.3", "1.2", image, (), (1, 0, 0, 0, 1, 0), (0.488, 0.488), 512, 512)
    backend = BlastCTBackend(MODEL_DIR, ensemble_size=1, device="cpu", batch_size=4)
    t0 = time.perf_counter()
    labels = sitk.GetArrayFromImage(backend.segment(vol).image)
    print(f"GE model 1: {backend.last_stats} total {time.perf_counter() - t0:.0f} s")
    counts = {k: int((labels == k).sum()) for k in (ICH, EXTRA_AXIAL, OEDEMA, IVH)}
    print("GE native counts (canonical labels):", counts)
    # BLAST-CT class 1 IPH -> ICH 12, 2 EAH -> EXTRA_AXIAL 318, 3 oedema 2212, 4 IVH 0
    assert counts == {ICH: 12, EXTRA_AXIAL: 318, OEDEMA: 2212, IVH: 0}
