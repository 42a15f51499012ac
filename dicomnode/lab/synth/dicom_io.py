"""Write a phantom as a CT Image Storage series (PS3.3 A.3) and its label map as NIfTI.

Everything is deterministic: UIDs come from ``generate_uid`` with entropy derived from the seed,
dates from the case, and the gzip header of the NIfTI carries no timestamp, so the same seed
gives byte-identical files.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

from .render import ScanGeometry

log = logging.getLogger(__name__)

COMPRESSIONS = {"none": ExplicitVRLittleEndian, "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}
RESCALE_INTERCEPT = -1024  # stored value 0 is -1024 HU; 12 bits reach 3071 HU
SYNTHETIC_NOTE = "SYNTHETIC phantom from dicomnode.lab.synth - not patient data"


def make_uid(*parts: object) -> UID:
    """A deterministic UID from the given parts (same parts, same UID).

    pydicom's own root with entropy sources (a 2.25 UID, prefix None, would ignore them).
    """
    return generate_uid(entropy_srcs=["dicomnode.lab.synth", *map(str, parts)])


@dataclass(frozen=True)
class SeriesMeta:
    """Header values of one synthetic study/series."""

    patient_name: str
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str  # M or F
    age_y: int
    study_uid: str
    series_uid: str
    frame_uid: str
    acquired: datetime
    accession: str
    study_id: str
    study_description: str
    series_description: str
    series_number: int
    uid_seed: str  # entropy for SOP Instance UIDs


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S")


def _ds(v: float) -> str:
    """Decimal String value within 16 characters."""
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s[:16]


def series_template(meta: SeriesMeta, geom: ScanGeometry) -> Dataset:
    """Attributes shared by every image of the series."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(meta.acquired)
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(meta.acquired)
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(meta.acquired), _tm(meta.acquired)
    ds.AccessionNumber = meta.accession
    ds.Modality = "CT"
    ds.Manufacturer = "dicomnode"
    ds.InstitutionName = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNTH"
    ds.StudyDescription = "SYNTHETIC HEAD CT (phantom)"
    ds.SeriesDescription = meta.series_description
    ds.ManufacturerModelName = "dicomnode.lab.synth phantom"
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = meta.birth_date
    ds.PatientSex = meta.sex
    ds.PatientAge = f"{meta.age_y:03d}Y"
    ds.PatientIdentityRemoved = "NO"  # never real: nothing was removed
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(geom.thickness_mm)
    ds.KVP = "120"
    ds.DataCollectionDiameter = _ds(geom.fov_mm)
    ds.SoftwareVersions = "dicomnode.lab.synth 1"
    ds.ReconstructionDiameter = _ds(geom.fov_mm)
    ds.GantryDetectorTilt = _ds(geom.tilt_deg)
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "1000"
    ds.XRayTubeCurrent = "250"
    ds.Exposure = "250"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = meta.study_uid
    ds.SeriesInstanceUID = meta.series_uid
    ds.StudyID = meta.study_id
    ds.SeriesNumber = meta.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in (*geom.row, *geom.col)]
    ds.FrameOfReferenceUID = meta.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImagesInAcquisition = geom.n_slices
    ds.ImageComments = SYNTHETIC_NOTE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = geom.matrix
    ds.PixelSpacing = [_ds(geom.pixel_spacing_mm)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["40", "600"]
    ds.WindowWidth = ["80", "2800"]
    ds.WindowCenterWidthExplanation = ["BRAIN", "BONE"]
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    return ds


def write_series(
    dicom_dir: Path, hu: np.ndarray, geom: ScanGeometry, meta: SeriesMeta, *, compress: str = "none"
) -> list[Path]:
    """Write one file per slice, ``IM000001.dcm`` upwards (lossless only: the truth is exact)."""
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {sorted(COMPRESSIONS)}, got {compress!r}")
    dicom_dir.mkdir(parents=True, exist_ok=True)
    stored = np.clip(np.rint(hu) - RESCALE_INTERCEPT, 0, 4095).astype(np.uint16)
    template = series_template(meta, geom)
    positions = geom.positions()
    paths = []
    for k in range(geom.n_slices):
        ds = Dataset()
        ds.update(template)
        sop = make_uid(meta.uid_seed, "sop", k)
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(float(positions[k] @ geom.normal))
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CTImageStorage
        fm.MediaStorageSOPInstanceUID = sop
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = fm
        ds.PixelData = stored[k].tobytes()
        if compress != "none":
            ds.compress(COMPRESSIONS[compress], stored[k], generate_instance_uid=False)
        path = dicom_dir / f"IM{k + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def label_affine_ras(geom: ScanGeometry) -> np.ndarray:
    """NIfTI affine (RAS) of the label array stored as (column i, row j, slice k)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ geom.affine_lps()


def write_labels(path: Path, labels: np.ndarray, geom: ScanGeometry) -> None:
    """Write the (slice, row, column) label map as NIfTI with the DICOM stack's exact geometry.

    An untilted stack gets matching qform and sform (SimpleITK reads it back identically);
    a tilted stack is sheared, which only the sform can hold.
    """
    img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), None)
    aff = label_affine_ras(geom)
    img.set_sform(aff, code=1)
    if abs(geom.tilt_deg) < 1e-9:
        img.set_qform(aff, code=1)
    else:
        img.set_qform(None, code=0)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"dicomnode.lab.synth 0=bg 1=ICH 2=IVH 3=oedema"
    data = img.to_bytes()
    path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
