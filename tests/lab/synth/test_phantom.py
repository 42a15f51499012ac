"""Phantom content: volumes, HU per tissue, sites, determinism, speed."""

from __future__ import annotations

import filecmp
import json

import nibabel as nib
import numpy as np
import pytest

from dicomnode.lab.synth import make_study
from dicomnode.lab.synth.anatomy import Tissue
from dicomnode.lab.synth.study import build_case, geometry_for, render_case


def test_truth_volumes_equal_label_map_volumes(small_study):
    img = nib.load(small_study.label_path)
    lab = np.asarray(img.dataobj)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    truth = json.loads(small_study.truth_path.read_text())
    for value, key in ((1, "ich_volume_ml"), (2, "ivh_volume_ml"), (3, "oedema_volume_ml")):
        assert truth[key] == pytest.approx(np.count_nonzero(lab == value) * voxel_ml, rel=1e-9)
    assert small_study.ich_volume_ml == truth["ich_volume_ml"]
    assert small_study.ich_volume_ml == pytest.approx(25.0, rel=0.15)  # design volume
    assert small_study.ivh_volume_ml > 0.1
    assert set(np.unique(lab)) <= {0, 1, 2, 3}


@pytest.fixture(scope="module")
def clean_phantom():
    case = build_case(5, hemorrhage_ml=30.0, site="basal_ganglia")
    geom = geometry_for(128, 2.5, 0.0, None)
    return case, render_case(
        case, geom, lesion=case.lesion, scan=0, noise_sd_hu=0.0, artefacts=False, want_tissue=True
    )


@pytest.mark.parametrize(
    "tissue, lo, hi",
    [
        (Tissue.CORTEX, 35, 45),
        (Tissue.DEEP_GREY, 35, 45),
        (Tissue.WHITE_MATTER, 22, 30),
        (Tissue.CSF, 0, 15),
        (Tissue.VENTRICLE, 0, 15),
        (Tissue.DIPLOE, 700, 1800),
        (Tissue.VENOUS_SINUS, 40, 64),  # thin tubes: partial volume with bone and brain
    ],
)
def test_tissue_hu_in_stated_ranges(clean_phantom, tissue, lo, hi):
    _, ph = clean_phantom
    values = ph.hu[(ph.tissue == tissue) & (ph.labels == 0)]
    assert values.size > 20
    assert lo <= np.median(values) <= hi


def test_venous_sinuses_are_blood_dense_and_never_labelled(clean_phantom):
    case, ph = clean_phantom
    sinus = ph.tissue == Tissue.VENOUS_SINUS
    assert 44.0 <= case.anatomy.venous_hu <= 64.0
    assert sinus.sum() * 2.5 * (250 / 128) ** 2 / 1000 > 2.0  # mL: sagittal, transverse, straight
    assert not (ph.labels[sinus] > 0).any()  # a mimic, not a haemorrhage


def test_bone_calcification_and_lesion_densities(clean_phantom):
    case, ph = clean_phantom
    bone = ph.hu[ph.tissue == Tissue.CORTICAL_BONE]
    assert 1400 <= np.percentile(bone, 95) <= 1900
    if case.anatomy.calcifications:
        assert ph.hu.max() > 100
    assert 50 <= np.median(ph.hu[ph.labels == 1]) <= 90
    assert 15 <= np.median(ph.hu[ph.labels == 3]) <= 30  # oedema, partly mixed with tissue


def test_noise_sd_is_configurable():
    case = build_case(3, hemorrhage_ml=None, site="lobar")
    geom = geometry_for(128, 5.0, 0.0, 8)
    clean = render_case(case, geom, lesion=None, scan=0, noise_sd_hu=0.0, artefacts=False)
    noisy = render_case(case, geom, lesion=None, scan=0, noise_sd_hu=6.0, artefacts=False)
    assert np.std(noisy.hu - clean.hu) == pytest.approx(6.0, rel=0.05)


def test_negative_class_has_no_labels(tmp_path):
    t = make_study(tmp_path, seed=2, matrix=64, n_slices=16, hemorrhage_ml=None)
    assert t.site == "none" and t.ich_volume_ml == 0.0
    assert not np.asarray(nib.load(t.label_path).dataobj).any()


@pytest.mark.parametrize(
    "site, cortical",
    [("lobar", True), ("lobar_subcortical", False), ("basal_ganglia", False), ("thalamus", False)],
)
def test_cortical_involvement_follows_site(tmp_path, site, cortical):
    t = make_study(tmp_path, seed=4, matrix=128, n_slices=32, hemorrhage_ml=12.0, site=site)
    assert t.cortical_involvement is cortical
    assert t.ich_volume_ml == pytest.approx(12.0, rel=0.2)


def test_same_seed_gives_identical_bytes(tmp_path):
    a = make_study(tmp_path / "a", seed=9, matrix=64, n_slices=16, compress="jpegls")
    b = make_study(tmp_path / "b", seed=9, matrix=64, n_slices=16, compress="jpegls")
    for name in ("labels.nii.gz", "truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    files = sorted(p.name for p in a.dicom_dir.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a.dicom_dir, b.dicom_dir, files, shallow=False)
    assert len(match) == 16 and not mismatch and not errors
    c = make_study(tmp_path / "c", seed=10, matrix=64, n_slices=16)
    assert c.study_instance_uid != a.study_instance_uid


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="site"):
        make_study(tmp_path, site="kidney", matrix=64, n_slices=4)
    with pytest.raises(ValueError, match="compress"):
        make_study(tmp_path, compress="jpeg", matrix=64, n_slices=4)


@pytest.mark.slow
def test_full_matrix_study(tmp_path):
    """A 512 matrix, 5 mm study has the clinical slice count (speed: bench/synth.py)."""
    t = make_study(tmp_path / "s", seed=1, matrix=512)
    assert t.n_slices == 32
    assert len(list(t.dicom_dir.glob("*.dcm"))) == 32
