"""A series QA refused -> a "not analysed" key image and SR, so the radiologist knows the scan
arrived and was not read (docs/qa.md).

Inputs: the source CT instances, the :class:`~dicomnode.domain.CTVolume` and the
:class:`~dicomnode.domain.QAReport`. Outputs: a Secondary Capture key image
(:class:`highdicom.sc.SCImage`, PS3.3 A.8.1) with the reason burned in beside a slice of the
scan, and a Comprehensive 3D SR (PS3.3 A.35.13) holding a TID 1500 Measurement Report without
measurements: its Qualitative Evaluations say, coded, that the haemorrhage analysis was not
performed because quality checks failed, then ``not analysed: <reason>`` and one TEXT item per
failed or warned check. Both are in the source study; the SR lists the source series as its
evidence. No SEG, no volumes, no risks. Side effects: none.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from highdicom.sr.templates import DEFAULT_LANGUAGE
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import generate_uid

from dicomnode.domain import CTVolume, QAReport

from . import codes, uids
from .preview import NOT_FOR_DIAGNOSIS, window
from .text import draw_text, font, line_height

__all__ = ["NOT_ANALYSED_TITLE", "build_not_analysed_image", "build_not_analysed_sr",
           "not_analysed_report"]

NOT_ANALYSED_TITLE = "NOT ANALYSED"
SERIES_DESCRIPTION = "ICH NOT ANALYSED - quality checks failed"
_SOFTWARE = "dicomnode"
SIZE = (512, 1024)  # rows, columns
RED, WHITE, GREY, AMBER = (255, 60, 60), (255, 255, 255), (170, 170, 170), (255, 170, 0)


def _reason(qa: QAReport) -> str:
    fails = qa.reasons("fail")
    if not fails:
        raise ValueError("a not-analysed object needs a QA report with a failed check")
    return fails[0]


def render_not_analysed(volume: CTVolume, qa: QAReport) -> np.ndarray:
    """512 x 1024 RGB: the middle slice (brain window) left, "NOT ANALYSED" and why right."""
    rows, cols = SIZE
    rgb = np.zeros((rows, cols, 3), dtype=np.uint8)
    hu = np.asarray(sitk.GetArrayViewFromImage(volume.image))
    plane = hu[hu.shape[0] // 2]
    grey = window(plane)
    img = Image.fromarray(grey if grey.ndim == 3 else np.stack([grey] * 3, axis=-1))
    sx, sy = volume.image.GetSpacing()[:2]
    h, w = plane.shape[0] * sy, plane.shape[1] * sx
    scale = rows / max(h, w)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))))
    rgb[(rows - img.height) // 2:(rows - img.height) // 2 + img.height,
        (rows - img.width) // 2:(rows - img.width) // 2 + img.width] = np.asarray(img)[..., :3]
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    draw_text(draw, (12, 12), NOT_ANALYSED_TITLE, RED, face="bold", size_px=28)
    x0, y = rows + 16, 12
    draw_text(draw, (x0, y), NOT_ANALYSED_TITLE, RED, face="bold", size_px=40)
    y += line_height(40) + 8
    size = 16
    width = int((cols - x0 - 8) // font("sans", size).getlength("M") * 1.6)
    lines = [("The scan was received. It was NOT analysed:", WHITE),
             ("no haemorrhage volume or risk was computed.", WHITE), ("", WHITE),
             (f"Reason: {_reason(qa)}", AMBER), ("", WHITE), ("Failed checks:", WHITE)]
    lines += [(f"- {c.message or c.name} (limit {c.limit})", GREY)
              for c in qa.checks if c.outcome == "fail"]
    lines += [("", WHITE), ("Read the scan without the tool.", WHITE), (NOT_FOR_DIAGNOSIS, AMBER)]
    for text, colour in lines:
        for part in textwrap.wrap(text, width) or [""]:
            if y + line_height(size) > rows - 8:
                break
            draw_text(draw, (x0, y), part, colour, face="sans", size_px=size)
            y += line_height(size)
    return np.array(canvas)


def build_not_analysed_image(source_datasets: Sequence[Dataset], volume: CTVolume, qa: QAReport,
                             *, version: int, series_number: int = 9904,
                             software_version: str | None = None) -> hd.sc.SCImage:
    """The "not analysed" key image: Secondary Capture in the source study (see module)."""
    if not source_datasets:
        raise ValueError("no source datasets")
    src = source_datasets[0]
    source_series = str(src.SeriesInstanceUID)
    rgb = render_not_analysed(volume, qa)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.series_uid(source_series, version, "not-analysed"),
        series_number=series_number,
        sop_instance_uid=uids.instance_uid(source_series, version, "not-analysed", 0),
        instance_number=1, manufacturer=_SOFTWARE, patient_orientation=("L", "P"),
        series_description=SERIES_DESCRIPTION,
    )
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.Laterality = ""  # Type 2C in General Series: a head is not a paired body part
    image.BurnedInAnnotation = "YES"
    image.SoftwareVersions = software_version or ""
    image.ManufacturerModelName = _SOFTWARE
    image.ImageComments = (f"{NOT_ANALYSED_TITLE}: {_reason(qa)}. The scan was received and not "
                           f"analysed; no haemorrhage volume or risk was computed.")[:10240]
    image.DerivationDescription = (f"Middle slice of the source series with the reason it was "
                                   f"not analysed ({_SOFTWARE} quality checks)")[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = src.SOPClassUID
    ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
    image.SourceImageSequence = [ref]
    return image


def _device_observer() -> hd.sr.ObservationContext:
    # The same device UID as the result SR's (encode/sr.py): one dicomnode, one observer.
    uid = generate_uid(prefix=uids.UID_PREFIX, entropy_srcs=[uids.NAMESPACE, "device", _SOFTWARE])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=pydicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uid, name=_SOFTWARE, manufacturer_name=_SOFTWARE, model_name=_SOFTWARE)))


def not_analysed_report(qa: QAReport) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree of a series not analysed (PS3.16 TID 1500).

    Rows 1-4 as in every report (title, language, observer, procedure reported); no Imaging
    Measurements (row 6), so no number; row 12, Qualitative Evaluations, holds: "Haemorrhage
    analysis performed" = No (SCT), "Reason ... not performed" = "Quality checks failed" (row
    13, CODE), then ``not analysed: <reason>`` and one "Quality check" per failed or warned
    check (row 14, TEXT).
    """
    evaluations: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=codes.ANALYSIS_PERFORMED, value=codes.NO,
                              relationship_type="CONTAINS"),
        hd.sr.CodeContentItem(name=codes.REASON_NOT_ANALYSED, value=codes.QA_FAILED,
                              relationship_type="CONTAINS"),
        hd.sr.TextContentItem(name=codes.NOT_ANALYSED, value=f"not analysed: {_reason(qa)}"[:1024],
                              relationship_type="CONTAINS"),
    ]
    evaluations += [hd.sr.TextContentItem(
        name=codes.QA_CHECK, relationship_type="CONTAINS",
        value=f"{c.name}: {c.outcome}; value {c.value}; limit {c.limit}; {c.message}"[:1024])
        for c in qa.checks if c.outcome != "pass"]
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                           relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(evaluations)
    root = hd.sr.ContainerContentItem(name=codes.IMAGING_MEASUREMENT_REPORT, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence()
    root.ContentSequence.extend(hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))
    root.ContentSequence.extend(_device_observer())
    root.ContentSequence.append(hd.sr.CodeContentItem(
        name=pydicom_codes.DCM.ProcedureReported, value=codes.CT_OF_HEAD,
        relationship_type="HAS CONCEPT MOD"))
    root.ContentSequence.append(container)
    return hd.sr.MeasurementReport.from_sequence([root], copy=False)


def build_not_analysed_sr(source_datasets: Sequence[Dataset], qa: QAReport, *, version: int,
                          series_number: int = 9902,
                          software_version: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The "not analysed" SR: a TID 1500 Measurement Report without measurements (see
    :func:`not_analysed_report`), in the source study, listing the source series as evidence."""
    if not source_datasets:
        raise ValueError("no source datasets")
    source_series = str(source_datasets[0].SeriesInstanceUID)
    charset = source_datasets[0].get("SpecificCharacterSet")
    return hd.sr.Comprehensive3DSR(
        evidence=list(source_datasets), content=not_analysed_report(qa),
        series_instance_uid=uids.series_uid(source_series, version, "sr"),
        series_number=series_number,
        sop_instance_uid=uids.instance_uid(source_series, version, "sr", 0),
        instance_number=1, manufacturer=_SOFTWARE, is_complete=True,
        series_description=SERIES_DESCRIPTION,
        coding_schemes=codes.coding_schemes(), manufacturer_model_name=_SOFTWARE,
        software_versions=software_version or "",
        specific_character_set=list(charset) if charset is not None and not isinstance(charset, str)
        else charset,
    )
