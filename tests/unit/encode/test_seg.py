"""SEG: valid (dciodvfy), exact round trip, derivation references, codes, UIDs, tilt."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID

from dicomnode.domain import EXTRA_AXIAL, ICH, IVH, LABELS, OEDEMA, LabelMap
from dicomnode.encode import build_seg, codes, read_seg_mask, uids
from tests.unit.encode.cases import Case, dciodvfy

SOFTWARE = "0.1.0-test"


def _seg(case: Case, labels: LabelMap | None = None, version: int = 1):
    return build_seg(case.datasets, case.volume, labels or case.labels, version=version,
                     software_version=SOFTWARE)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_seg_is_valid_and_round_trips_exactly(plain_case: Case, save) -> None:
    path = save(_seg(plain_case), "seg.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    assert warnings == [], "\n".join(warnings)  # none today; a new one deserves a look
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "BINARY" and ds.Modality == "SEG"
    masks = read_seg_mask(ds)
    assert sorted(masks) == ["ICH", "IVH", "oedema"]
    for value in (ICH, IVH, OEDEMA):
        expected = plain_case.truth == value
        assert expected.any()
        got = masks[LABELS[value]]
        assert got.shape == expected.shape == (len(plain_case.volume.slices), 64, 64)
        assert np.array_equal(got, expected), LABELS[value]


def test_every_frame_derives_from_its_source_plane(plain_case: Case) -> None:
    seg = _seg(plain_case)
    position = {str(d.SOPInstanceUID): [float(v) for v in d.ImagePositionPatient]
                for d in plain_case.datasets}
    index = {s.sop_instance_uid: i for i, s in enumerate(plain_case.volume.slices)}
    segment_value = {int(s.SegmentNumber): v
                     for v, s in zip((ICH, IVH, OEDEMA), seg.SegmentSequence, strict=True)}
    assert len(seg.PerFrameFunctionalGroupsSequence) == int(seg.NumberOfFrames) > 0
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = frame.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        uid = str(source.ReferencedSOPInstanceUID)
        assert source.ReferencedSOPClassUID == plain_case.datasets[0].SOPClassUID
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           position[uid], atol=1e-3)
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        # frames of empty planes are left out: each frame's plane holds its segment
        assert (plain_case.truth[index[uid]] == segment_value[number]).any()
    referenced = [str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence]
    assert referenced == [s.sop_instance_uid for s in plain_case.volume.slices]


def test_segments_carry_codes_colours_and_algorithm(plain_case: Case) -> None:
    seg = _seg(plain_case)
    src = plain_case.datasets[0]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    for value, segment in zip((ICH, IVH, OEDEMA), seg.SegmentSequence, strict=True):
        concept = codes.SEGMENTS[value]
        assert segment.SegmentLabel == concept.label
        assert codes.as_tuple(segment.SegmentedPropertyCategoryCodeSequence[0]) == ("49755003", "SCT")
        prop = segment.SegmentedPropertyTypeCodeSequence[0]
        assert codes.as_tuple(prop) == codes.as_tuple(concept.property_type)
        assert codes.as_tuple(segment.AnatomicRegionSequence[0]) == codes.as_tuple(concept.anatomic_region)
        assert tuple(segment.RecommendedDisplayCIELabValue) == concept.cielab.value
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algo = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == "ich-unet-test" and algo.AlgorithmVersion == "0.3.1"
        assert codes.as_tuple(algo.AlgorithmFamilyCodeSequence[0]) == ("123110", "DCM")
        assert "backend" in algo.AlgorithmParameters and "threshold" in algo.AlgorithmParameters
        assert segment.TrackingUID == uids.tracking_uid(plain_case.volume.series_instance_uid, 1, value)
    assert codes.as_tuple(seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]) == ("50960005", "SCT")
    assert codes.as_tuple(seg.SegmentSequence[1].AnatomicRegionSequence[0]) == ("35764002", "SCT")
    assert codes.as_tuple(seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0]) == ("79654002", "SCT")
    # series, equipment, character set, synthetic caveat
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.PatientID == src.PatientID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.SpecificCharacterSet == src.SpecificCharacterSet
    assert len(seg.SeriesDescription) <= 64
    assert "NOT FOR DIAGNOSTIC USE" in seg.SeriesDescription
    assert "fit on synthetic data" in seg.SeriesDescription
    assert "NOT FOR DIAGNOSTIC USE" in seg.ContentDescription
    assert seg.SeriesNumber == 9901 and seg.SoftwareVersions == SOFTWARE and seg.Manufacturer == "dicomnode"
    ours = [e for e in seg.ContributingEquipmentSequence
            if "ich-unet-test" in str(e.get("ManufacturerModelName", ""))]
    assert len(ours) == 1 and ours[0].Manufacturer == "dicomnode"
    assert codes.as_tuple(ours[0].PurposeOfReferenceCodeSequence[0]) == ("109102", "DCM")
    assert any("Highdicom" in str(e.Manufacturer) for e in seg.ContributingEquipmentSequence)


def test_series_description_without_synthetic_training(plain_case: Case) -> None:
    labels = dataclasses.replace(plain_case.labels, synthetic_training=False)
    seg = _seg(plain_case, labels)
    assert "NOT FOR DIAGNOSTIC USE" not in seg.SeriesDescription
    assert "ich-unet-test" in seg.SeriesDescription and len(seg.SeriesDescription) <= 64
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "synthetic" not in algo.AlgorithmParameters


def test_provided_label_with_empty_mask_still_encodes(plain_case: Case, save) -> None:
    labels = dataclasses.replace(plain_case.labels, labels=dict(LABELS))  # adds extra-axial, absent
    path = save(_seg(plain_case, labels), "seg-empty-segment.dcm")
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    ds = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in ds.SegmentSequence][-1] == codes.SEGMENTS[EXTRA_AXIAL].label
    masks = read_seg_mask(ds)
    assert not masks["extra-axial"].any()
    assert np.array_equal(masks["ICH"], plain_case.truth == ICH)


def test_all_empty_label_map_encodes(plain_case: Case, save) -> None:
    empty = sitk.Image(plain_case.labels.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(plain_case.labels.image)
    labels = dataclasses.replace(plain_case.labels, image=empty, labels={ICH: "ICH"})
    path = save(_seg(plain_case, labels), "seg-empty.dcm")
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    masks = read_seg_mask(pydicom.dcmread(path))
    assert list(masks) == ["ICH"] and not masks["ICH"].any()


def test_uids_are_deterministic_per_version(plain_case: Case) -> None:
    a, b, c = _seg(plain_case), _seg(plain_case), _seg(plain_case, version=2)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.SeriesInstanceUID != c.SeriesInstanceUID and a.SOPInstanceUID != c.SOPInstanceUID
    src = plain_case.volume.series_instance_uid
    assert a.SeriesInstanceUID == uids.series_uid(src, 1, "seg")
    assert a.SOPInstanceUID == uids.instance_uid(src, 1, "seg", 0)
    assert a.SegmentSequence[0].TrackingUID != c.SegmentSequence[0].TrackingUID


def test_uid_helpers() -> None:
    src = "1.2.3.4.5"
    made = {uids.series_uid(src, 1, k) for k in uids.KINDS}
    made |= {uids.instance_uid(src, 1, k) for k in uids.KINDS}
    made |= {uids.instance_uid(src, 1, "overlay", i) for i in range(5)} | {uids.series_uid(src, 2, "seg")}
    made |= {uids.series_uid("1.2.3.4.6", 1, "seg")}
    assert len(made) == 2 * len(uids.KINDS) + 4 + 1 + 1  # all different
    for uid in made:
        assert UID(uid).is_valid and len(uid) <= 64 and uid.startswith(uids.UID_PREFIX)
    assert uids.instance_uid(src, 3, "sr", 2) == uids.instance_uid(src, 3, "sr", 2)
    for bad in ({"kind": "rt"}, {"version": 0}, {"version": True}, {"index": -1}):
        args = {"source_series_uid": src, "version": 1, "kind": "seg", "index": 0} | bad
        with pytest.raises(ValueError):
            uids.instance_uid(**args)  # type: ignore[arg-type]


def test_rejects_undeclared_labels_and_missing_sources(plain_case: Case) -> None:
    labels = dataclasses.replace(plain_case.labels, labels={ICH: "ICH"})  # IVH and oedema in the map
    with pytest.raises(ValueError, match="not in LabelMap.labels"):
        _seg(plain_case, labels)
    with pytest.raises(ValueError, match="no dataset"):
        build_seg(plain_case.datasets[1:], plain_case.volume, plain_case.labels, version=1,
                  software_version=SOFTWARE)
    with pytest.raises(ValueError, match="no segment concept"):
        _seg(plain_case, dataclasses.replace(plain_case.labels, labels={7: "other"}))


def test_tilted_study_goes_back_to_the_source_planes(tilted_case: Case, save) -> None:
    from dicomnode.geometry.source_grid import to_source_grid

    assert tilted_case.volume.resampled
    path = save(_seg(tilted_case), "seg-tilted.dcm")
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    ds = pydicom.dcmread(path)
    masks = read_seg_mask(ds)
    expected = to_source_grid(tilted_case.labels.image, tilted_case.volume)
    for value in (ICH, IVH, OEDEMA):
        assert np.array_equal(masks[LABELS[value]], expected == value)
    assert _dice(masks["ICH"], tilted_case.truth == ICH) >= 0.95
    # frames lie in the tilted source planes (orientation and positions of the source images)
    src = tilted_case.datasets[0]
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in orientation], [float(v) for v in src.ImageOrientationPatient])


def test_read_accepts_explicit_source_order(plain_case: Case, tmp_path: Path) -> None:
    seg = _seg(plain_case)
    order = [s.sop_instance_uid for s in plain_case.volume.slices][::-1]
    masks = read_seg_mask(seg, order)
    assert np.array_equal(masks["ICH"], (plain_case.truth == ICH)[::-1])


def test_multiframe_source_frames_in_frame_order(plain_case: Case, tmp_path: Path, save) -> None:
    load = pytest.importorskip("dicomnode.load.volume")
    import highdicom as hd
    from pydicom.uid import generate_uid

    full = [pydicom.dcmread(p) for p in sorted(Path(plain_case.study.dicom_dir).glob("*.dcm"))]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        full, series_instance_uid=generate_uid(), series_number=5, sop_instance_uid=generate_uid(),
        instance_number=1)
    mf_path = save(enhanced, "legacy-enhanced.dcm")
    volume = load.load_series([mf_path])
    assert all(s.frame_number is not None for s in volume.slices)
    header = pydicom.dcmread(mf_path, stop_before_pixels=True)
    labels = dataclasses.replace(plain_case.labels, image=sitk.Image(plain_case.labels.image))
    labels.image.CopyInformation(volume.image)
    seg = build_seg([header], volume, labels, version=1, software_version=SOFTWARE)
    errors, _ = dciodvfy(save(seg, "seg-mf.dcm"))
    assert errors == [], "\n".join(errors)
    n = int(header.NumberOfFrames)
    pixels = seg.get_pixels_by_source_frame(header.SOPInstanceUID, list(range(1, n + 1)),
                                            assert_missing_frames_are_empty=True)
    truth = sitk.GetArrayFromImage(labels.image)  # volume.slices order
    by_frame = np.zeros_like(truth)
    for i, s in enumerate(volume.slices):
        by_frame[s.frame_number - 1] = truth[i]  # type: ignore[operator]
    for k, value in enumerate((ICH, IVH, OEDEMA)):
        assert np.array_equal(pixels[..., k], by_frame == value)
