"""Burned-in overlay images: an RGB Secondary Capture series any PACS viewer can show.

Inputs: the source CT instances (headers; pixel data only when the volume was resampled), the
:class:`~dicomnode.domain.CTVolume`, its :class:`~dicomnode.domain.LabelMap`, the
:class:`~dicomnode.domain.Measurements` and optional predictions. Outputs: pydicom datasets of
two new series in the source study: one image per source slice that contains blood (ICH, IVH or
extra-axial), in the source's slice order, on that slice's plane geometry (Series Number
``series_number``), and the summary key image in a series of its own (``series_number + 1``,
Modality OT: it has no plane geometry). Side effects: none.

Colour needs the Secondary Capture Image IOD (PS3.3 A.8.1): the CT Image IOD is monochrome.
That IOD has no Frame of Reference or Image Plane module, so Frame of Reference UID, Image
Position and Image Orientation (Patient) are added as Standard Extended attributes (PS3.4
B.1.3; viewers use them for cross-reference lines), Pixel Spacing is the SC Image module's own
(C.8.6.2), and the source position is also written in Image Comments. Every image is marked
derived (Image Type DERIVED\\SECONDARY, Burned In Annotation YES, Conversion Type WSD, a
Derivation Description, Source Image Sequence) and not for diagnosis (Series Description and
Image Comments, and burned into the pixels).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pydicom.valuerep import format_number_as_ds

import dicomnode
from dicomnode.domain import CTVolume, LabelMap, Measurements, Prediction
from dicomnode.geometry.source_grid import to_source_grid

from .preview import (
    BLOOD_LABELS,
    BRAIN_WINDOW_HU,
    NOT_FOR_DIAGNOSIS,
    STYLE,
    render_slice,
    render_summary,
    summary_lines,
    write_previews,
)
from .uids import instance_uid, series_uid

__all__ = ["build_overlays", "write_previews"]

_SOFTWARE = "dicomnode"

# Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial Study modules
# (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1, C.7.2.2, C.7.2.3): copied from the source when present.
_COPIED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "QualityControlSubject", "StrainDescription",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "ConsentForClinicalTrialUseSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingService", "ReferencedStudySequence",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientSizeCodeSequence", "Occupation", "AdditionalPatientHistory",
    "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "PregnancyStatus",
    "SpecificCharacterSet", "TimezoneOffsetFromUTC",
)
# Type 2 attributes of those modules: present, empty when the source lacks them.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def build_overlays(source_datasets: Sequence[Dataset], volume: CTVolume, labels: LabelMap,
                   measurements: Measurements, *, version: int, series_number: int = 9903,
                   prediction: Prediction | None = None,
                   created: dt.datetime | None = None,
                   warnings: Sequence[str] = ()) -> list[Dataset]:
    """The summary key image (its own series), then one image per source slice with blood.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        Instances of the source series, for the patient, study and frame of reference. Pixel
        data is used only when ``volume.resampled`` (else the planes come from ``volume.image``);
        without it those planes are resampled from ``volume.image``.
    volume, labels, measurements
        The analysed series; ``labels`` on the grid of ``volume.image``.
    version : int
        Result version; with the source series UID it determines every UID.
    series_number : int
        Series Number of the slices' series; the summary's is the next one.
    prediction : Prediction, optional
        Expansion and epilepsy risk and CAVE, shown on the summary (see ``prediction_lines``).
    warnings : sequence of str
        QA warnings (docs/qa.md), burned into every image and written in Image Comments.
    created : datetime, optional
        Content and creation date/time (default: now).

    Returns
    -------
    list of pydicom.Dataset
        Secondary Capture Image Storage, Explicit VR Little Endian: the summary first, then the
        slices (Instance Numbers from 1) in the source's instance order.

    Raises
    ------
    ValueError
        No source datasets, a source of another study, or a version below 1.
    """
    if not source_datasets:
        raise ValueError("build_overlays needs the source datasets")
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_datasets}
    first = by_uid.get(volume.slices[0].sop_instance_uid, source_datasets[0])
    if str(first.StudyInstanceUID) != volume.study_instance_uid:
        raise ValueError(f"source study {first.StudyInstanceUID} is not the volume's "
                         f"{volume.study_instance_uid}")
    images = _Images(first, volume, labels, version, series_number, created or dt.datetime.now(),
                     tuple(warnings))
    lab = to_source_grid(labels.image, volume)  # (n_slices, rows, cols) in volume.slices order
    blood = np.flatnonzero(np.isin(lab, BLOOD_LABELS).any(axis=(1, 2)))
    order = [int(i) for i in blood]
    if _descending(volume, by_uid):
        order.reverse()
    hu = _source_planes(volume, by_uid, order)
    out = [images.summary(measurements, prediction, _key_source_slice(volume, lab, blood))]
    for number, i in enumerate(order, start=1):
        out.append(images.slice_image(i, hu[i], lab[i], number))
    return out


@dataclass(frozen=True)
class _Images:
    """Makes the images of one result: what they share (source, UIDs, series, texts)."""

    first: Dataset  # the source dataset of the first plane: patient, study, frame of reference
    volume: CTVolume
    labels: LabelMap
    version: int
    series_number: int
    now: dt.datetime
    warnings: tuple[str, ...]

    @property
    def model(self) -> str:
        return f"{self.labels.model} {self.labels.model_version}".strip()

    @property
    def legend(self) -> str:
        return ", ".join(f"{STYLE[v][0]} {_colour_name(STYLE[v][1])}" for v in reversed(STYLE))

    @property
    def warning(self) -> str:
        """Image Comments' opening: not for diagnosis, synthetic model, QA warnings."""
        synthetic = self.labels.synthetic_training
        return (f"{NOT_FOR_DIAGNOSIS}." + (" Model fit on synthetic data only." if synthetic else "")
                + "".join(f" {w}." for w in self.warnings))

    def new(self, kind: str, index: int, rgb: np.ndarray, number: int) -> Dataset:
        """An image of the slices' series ("overlay") or of the summary's ("overlay-summary")."""
        src_series, version = self.volume.series_instance_uid, self.version
        synthetic = " synthetic model" if self.labels.synthetic_training else ""
        ds = _base(self.first, rgb, self.now)
        ds.SOPInstanceUID = instance_uid(src_series, version, kind, index)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if kind == "overlay-summary":
            # A series of its own: a page without plane geometry, in a series of images with it,
            # made OHIF drop the whole series (its sort by position threw), and it is not a CT
            # image but a rendered report, so Modality OT.
            ds.SeriesInstanceUID = series_uid(src_series, version, kind)
            ds.SeriesNumber = self.series_number + 1
            ds.SeriesDescription = f"ICH summary v{version}{synthetic} - {NOT_FOR_DIAGNOSIS}"[:64]
            ds.Modality = "OT"
        else:
            ds.SeriesInstanceUID = series_uid(src_series, version, "overlay")
            ds.SeriesNumber = self.series_number
            ds.SeriesDescription = f"ICH overlay v{version}{synthetic} - {NOT_FOR_DIAGNOSIS}"[:64]
        ds.InstanceNumber = number
        ds.SecondaryCaptureDeviceSoftwareVersions = [str(dicomnode.__version__), self.model or "unknown"]
        return ds

    def summary(self, measurements: Measurements, prediction: Prediction | None,
                key: int | None) -> Dataset:
        """The summary key image; it references the key source slice when there is one."""
        w, lvl = BRAIN_WINDOW_HU
        rgb = render_summary(self.volume, self.labels, measurements, prediction,
                             footer=[f"Result version {self.version}"], warnings=self.warnings)
        summary_text = "; ".join(t for t, _ in summary_lines(self.labels, measurements, prediction)[1:] if t)
        ds = self.new("overlay-summary", 0, rgb, 1)
        ds.DerivationDescription = (f"Summary key image of {_SOFTWARE} haemorrhage analysis: key slice in "
                                    f"brain window W{w:g} L{lvl:g} with outlines ({self.legend}) and "
                                    f"the measurements as text")[:1024]
        ds.ImageComments = f"{self.warning} Summary: {summary_text}"[:10240]
        ds.PatientOrientation = ""
        if key is not None:
            _reference(ds, self.volume, [key])
        return ds

    def slice_image(self, i: int, hu: np.ndarray, lab: np.ndarray, number: int) -> Dataset:
        """The overlay of source plane ``i`` (index into ``volume.slices``), on its geometry."""
        volume, s = self.volume, self.volume.slices[i]
        synthetic = self.labels.synthetic_training
        ds = self.new("overlay", i, render_slice(hu, lab, synthetic=synthetic, warnings=self.warnings),
                      number)
        if "FrameOfReferenceUID" in self.first:
            ds.FrameOfReferenceUID = self.first.FrameOfReferenceUID
        ds.ImagePositionPatient = [_ds_decimal(v) for v in s.position_mm]
        ds.ImageOrientationPatient = [_ds_decimal(v) for v in volume.orientation]
        ds.PixelSpacing = [_ds_decimal(v) for v in volume.pixel_spacing_mm]
        ds.PatientOrientation = _patient_orientation(volume.orientation)
        w, lvl = BRAIN_WINDOW_HU
        ds.DerivationDescription = (
            f"Brain window W{w:g} L{lvl:g} of the source CT slice with haemorrhage segmentation "
            f"outlines burned in ({self.legend}); {_SOFTWARE} {self.labels.backend} {self.model}"
            + (", model fit on synthetic data only" if synthetic else ""))[:1024]
        pos = ", ".join(f"{v:.2f}" for v in s.position_mm)
        frame = f" frame {s.frame_number}" if s.frame_number else ""
        ds.ImageComments = (f"{self.warning} Overlay of source slice {i + 1} of {len(volume.slices)} "
                            f"(SOP Instance {s.sop_instance_uid}{frame}) at Image Position (Patient) "
                            f"({pos}) mm.")
        _reference(ds, volume, [i])
        return ds


def _base(src: Dataset, rgb: np.ndarray, now: dt.datetime) -> Dataset:
    """A Secondary Capture dataset with the source's patient and study, and ``rgb`` as pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in _COPIED:
        if keyword in src:
            ds[keyword] = copy.deepcopy(src[keyword])
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # General Series (C.7.3.1); SC Equipment (C.8.6.1) overrides Modality: the source equipment.
    ds.Modality = src.get("Modality", "CT") or "CT"
    ds.SeriesDate, ds.SeriesTime = date, time
    if "BodyPartExamined" in src:
        ds.BodyPartExamined = src.BodyPartExamined
    ds.Manufacturer = _SOFTWARE
    ds.ManufacturerModelName = _SOFTWARE
    ds.SoftwareVersions = str(dicomnode.__version__)
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = _SOFTWARE
    ds.SecondaryCaptureDeviceManufacturerModelName = _SOFTWARE
    # General Image (C.7.6.1) and SC Image (C.8.6.2)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate, ds.ContentTime = date, time
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    lossy = str(src.get("LossyImageCompression", "00")) == "01"
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in src:
                ds[keyword] = src[keyword]
    # Image Pixel (C.7.6.3)
    rows, cols = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    return ds


def _reference(ds: Dataset, volume: CTVolume, indices: Sequence[int]) -> None:
    """Source Image Sequence (General Reference, C.12.4) and Common Instance Reference (C.12.2)."""
    items, instances = [], []
    for i in indices:
        s = volume.slices[i]
        item = Dataset()
        item.ReferencedSOPClassUID = s.sop_class_uid
        item.ReferencedSOPInstanceUID = s.sop_instance_uid
        if s.frame_number is not None:
            item.ReferencedFrameNumber = s.frame_number
        items.append(item)
        ref = Dataset()
        ref.ReferencedSOPClassUID = s.sop_class_uid
        ref.ReferencedSOPInstanceUID = s.sop_instance_uid
        instances.append(ref)
    ds.SourceImageSequence = DicomSequence(items)
    series = Dataset()
    series.SeriesInstanceUID = volume.series_instance_uid
    series.ReferencedInstanceSequence = DicomSequence(instances)
    ds.ReferencedSeriesSequence = DicomSequence([series])


def _descending(volume: CTVolume, by_uid: Mapping[str, Dataset]) -> bool:
    """True when the source's Instance Numbers fall along ``volume.slices`` (keep its scroll order)."""
    ends = [by_uid.get(volume.slices[i].sop_instance_uid) for i in (0, -1)]
    if any(ds is None or ds.get("InstanceNumber") in (None, "") for ds in ends):
        return False
    if volume.slices[0].sop_instance_uid == volume.slices[-1].sop_instance_uid:
        return False  # one multi-frame instance: frames are in order already
    return int(ends[0].InstanceNumber) > int(ends[-1].InstanceNumber)  # type: ignore[union-attr]


def _source_planes(volume: CTVolume, by_uid: Mapping[str, Dataset], needed: Sequence[int]) -> dict[
        int, np.ndarray]:
    """HU of the source planes ``needed`` (by index into ``volume.slices``).

    Unresampled: the planes of ``volume.image``. Resampled: the source pixel data when the
    dataset carries it (exact), else ``volume.image`` resampled onto the plane (linear).
    """
    if not volume.resampled and volume.image.GetSize()[2] == len(volume.slices):
        arr = sitk.GetArrayViewFromImage(volume.image)
        return {i: np.asarray(arr[i]) for i in needed}
    out: dict[int, np.ndarray] = {}
    for i in needed:
        s = volume.slices[i]
        ds = by_uid.get(s.sop_instance_uid)
        if ds is not None and "PixelData" in ds:
            out[i] = _plane_hu(ds, s.frame_number)
        else:
            out[i] = _resample_plane(volume, i)
    return out


def _resample_plane(volume: CTVolume, index: int) -> np.ndarray:
    """``volume.image`` on source plane ``index`` (linear; -1024 HU outside)."""
    ori = np.asarray(volume.orientation, dtype=np.float64)
    normal = np.cross(ori[:3], ori[3:])
    row_mm, col_mm = volume.pixel_spacing_mm
    ref = sitk.Image(volume.columns, volume.rows, 1, sitk.sitkFloat32)
    ref.SetOrigin(volume.slices[index].position_mm)
    ref.SetSpacing((col_mm, row_mm, 1.0))
    ref.SetDirection(np.stack([ori[:3], ori[3:], normal], axis=1).ravel().tolist())
    plane = sitk.Resample(volume.image, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(plane)[0]


def _plane_hu(ds: Dataset, frame_number: int | None) -> np.ndarray:
    from pydicom.pixels import apply_rescale

    if frame_number is None:
        return np.asarray(apply_rescale(ds.pixel_array, ds), dtype=np.float32)
    frame = ds.pixel_array[frame_number - 1] if int(ds.get("NumberOfFrames", 1)) > 1 else ds.pixel_array
    slope, intercept = 1.0, 0.0
    groups = []
    if "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame_number - 1])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if "PixelValueTransformationSequence" in group:
            item = group.PixelValueTransformationSequence[0]
            slope, intercept = float(item.RescaleSlope), float(item.RescaleIntercept)
            break
    else:
        slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    return frame.astype(np.float32) * slope + intercept


def _key_source_slice(volume: CTVolume, lab: np.ndarray, blood: np.ndarray) -> int | None:
    """Source slice with the largest blood area (referenced by the summary), None without blood."""
    if blood.size == 0:
        return None
    area = np.isin(lab[blood], BLOOD_LABELS).sum(axis=(1, 2))
    return int(blood[int(np.argmax(area))])


def _patient_orientation(orientation: Sequence[float]) -> list[str]:
    """Patient Orientation (0020,0020) from the row and column cosines (PS3.3 C.7.6.1.1.1)."""
    def letters(v: Sequence[float]) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))  # LPS: +x left, +y posterior, +z head
        ranked = sorted(range(3), key=lambda k: -abs(v[k]))
        return "".join(names[k][0 if v[k] > 0 else 1] for k in ranked if abs(v[k]) > 0.25)[:3]

    return [letters(orientation[:3]), letters(orientation[3:])]


def _ds_decimal(v: float) -> str:
    """A DS value of at most 16 characters, as precise as that allows."""
    return format_number_as_ds(float(v))


def _colour_name(rgb: tuple[int, int, int]) -> str:
    return {(255, 40, 40): "red", (0, 220, 255): "cyan", (255, 220, 0): "yellow",
            (40, 200, 80): "faint green"}.get(rgb, "colour")

