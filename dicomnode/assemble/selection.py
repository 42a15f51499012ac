"""Declarative head-CT eligibility: rules are data (``[eligibility]`` in the TOML).

``evaluate`` returns None for an eligible series, or the first reason it is not; every rejected
series records that reason. The reconstruction kernel is a preference, not a filter: a bone-kernel
series is passed over only when its study also has a soft-tissue series.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dicomnode.assemble.contrast import contrast_reason
from dicomnode.config import EligibilitySettings


@dataclass(frozen=True)
class Sibling:
    """Another series of the same study, as far as kernel preference needs it."""

    series_instance_uid: str
    kernel: str
    state: str


def _is_head(attrs: dict[str, Any], geometry: dict[str, Any], rules: EligibilitySettings) -> bool:
    if attrs.get("body_part", "").upper() in rules.head_body_parts:
        return True
    text = " ".join(str(attrs.get(k, "")) for k in
                    ("series_description", "study_description", "protocol_name"))
    if re.search(rules.head_description_regex, text):
        return True
    extent = geometry.get("extent_mm")
    spacing = attrs.get("pixel_spacing_mm") or [0.0, 0.0]
    fov = float(attrs.get("columns") or 0) * float(spacing[1])
    lo_e, hi_e = rules.head_extent_mm
    lo_f, hi_f = rules.head_fov_mm
    return extent is not None and lo_e <= extent <= hi_e and lo_f <= fov <= hi_f


def _image_type_reason(image_type: list[str], rules: EligibilitySettings) -> str | None:
    prefix = [v.upper() for v in rules.image_type_prefix]
    if image_type[: len(prefix)] != prefix:
        return f"image type {'/'.join(image_type) or 'missing'} does not start with " \
               f"{'/'.join(prefix)}"
    excluded = set(v.upper() for v in rules.excluded_image_type_values) & set(image_type)
    if excluded:
        return f"image type marks a {sorted(excluded)[0].lower()} (not a diagnostic series)"
    if rules.require_axial_when_present and len(image_type) > 2 and image_type[2] != "AXIAL":
        return f"image type value 3 is {image_type[2]}, not AXIAL"
    return None


def _text_reason(attrs: dict[str, Any], rules: EligibilitySettings) -> str | None:
    """The series description and the nominal slice thickness."""
    description = attrs.get("series_description", "")
    if re.search(rules.excluded_description_regex, description):
        return f"series description {description!r} matches the excluded pattern"
    thickness = attrs.get("slice_thickness_mm")
    if thickness is not None and not (rules.min_slice_thickness_mm <= thickness
                                      <= rules.max_slice_thickness_mm):
        return (f"slice thickness {thickness:g} mm outside {rules.min_slice_thickness_mm:g} to "
                f"{rules.max_slice_thickness_mm:g} mm")
    return None


def _kernel_reason(attrs: dict[str, Any], rules: EligibilitySettings,
                   siblings: Iterable[Sibling]) -> str | None:
    kernel = attrs.get("kernel", "")
    if kernel and re.search(rules.bone_kernel_regex, kernel):
        for s in siblings:
            if s.state != "rejected" and s.kernel and not re.search(rules.bone_kernel_regex,
                                                                    s.kernel):
                return (f"bone kernel {kernel!r}; soft-tissue series {s.series_instance_uid} "
                        "of the same study is preferred")
    return None


def evaluate(attrs: dict[str, Any], geometry: dict[str, Any], n_instances: int,
             rules: EligibilitySettings, siblings: Iterable[Sibling] = ()) -> str | None:
    """Return None when the series is an eligible axial head CT, else the reason it is not."""
    modality = attrs.get("modality", "")
    if modality not in rules.modalities:
        return f"modality {modality or 'missing'} not in {list(rules.modalities)}"
    image_type = [str(v).upper() for v in attrs.get("image_type") or []]
    reason = _image_type_reason(image_type, rules) or _text_reason(attrs, rules)
    if reason:
        return reason
    if n_instances < rules.min_instances and geometry.get("n_frames", 0) < rules.min_instances:
        return f"{n_instances} instances, fewer than {rules.min_instances}"
    if geometry.get("mixed"):
        return f"mixed series: {' and '.join(geometry['mixed'])} in one series"
    spacing = attrs.get("pixel_spacing_mm")
    if spacing is not None and min(spacing) <= 0:
        return f"pixel spacing {spacing} mm is not positive"
    if geometry.get("missing_geometry"):
        return f"{geometry['missing_geometry']} frames lack position or orientation"
    if not geometry.get("orientation_consistent", False):
        return "mixed or invalid image orientations in one series"
    if geometry.get("axial_angle_deg", 90.0) > 45.0:
        return f"not axial (slice normal {geometry['axial_angle_deg']:.0f} degrees from head-foot)"
    contrast = contrast_reason(attrs, geometry, rules)
    if contrast:
        return contrast
    if not _is_head(attrs, geometry, rules):
        return "not recognised as head CT (body part, descriptions and extent)"
    return _kernel_reason(attrs, rules, siblings)


def query_reason(attrs: dict[str, Any], n_instances: int | None, rules: EligibilitySettings,
                 siblings: Iterable[Sibling] = ()) -> str | None:
    """The rules a PACS's series-level C-FIND answer can be held to before the series is
    retrieved (a follow-up's prior, PS3.4 C.6.2.1).

    A PACS may leave optional keys out of its answer: a value that is missing is not held
    against the series (``evaluate`` judges it in full once it has been received).
    """
    modality = attrs.get("modality", "")
    if modality not in rules.modalities:
        return f"modality {modality or 'missing'} not in {list(rules.modalities)}"
    image_type = [str(v).upper() for v in attrs.get("image_type") or []]
    reason = (_image_type_reason(image_type, rules) if image_type else None) \
        or _text_reason(attrs, rules)
    if reason:
        return reason
    if n_instances is not None and n_instances < rules.min_instances:
        return f"{n_instances} instances, fewer than {rules.min_instances}"
    contrast = contrast_reason(attrs, {}, rules)
    if contrast:
        return contrast
    body = str(attrs.get("body_part", "")).upper()
    text = " ".join(str(attrs.get(k, "")) for k in
                    ("series_description", "study_description", "protocol_name"))
    if body and body not in rules.head_body_parts and \
            not re.search(rules.head_description_regex, text):
        return f"body part {body} and descriptions do not name a head"
    return _kernel_reason(attrs, rules, siblings)
