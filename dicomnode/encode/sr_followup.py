"""A follow-up's comparison with its baseline as coded findings in its SR (``build_sr``'s output).

One CONTAINER "Follow-up comparison" (private scheme ``99DCMNODE``) in the report's root: the
prior series (UIDREF), the interval, ICH volume change (mL, %), IVH change, new IVH and
haematoma expansion (coded Yes/No), the definition used, and whether the registration is
trusted (with why not). Side effects: appends to the SR dataset given.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    NumContentItem,
    TextContentItem,
    UIDRefContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code

from dicomnode.domain import Comparison
from dicomnode.encode.codes import UNIT_ML, private

FOLLOWUP = private("FOLLOWUP", "Follow-up comparison")
PRIOR_SERIES = private("PRIOR_SERIES", "Prior series compared with")
INTERVAL = private("INTERVAL", "Interval since prior scan")
ICH_CHANGE = private("ICH_CHANGE", "ICH volume change")
ICH_CHANGE_PCT = private("ICH_CHANGE_PCT", "ICH volume relative change")
IVH_CHANGE = private("IVH_CHANGE", "IVH volume change")
NEW_IVH = private("NEW_IVH", "New intraventricular haemorrhage")
EXPANSION = private("HE_OBSERVED", "Haematoma expansion")
DEFINITION = private("HE_DEFINITION", "Haematoma expansion definition")
REGISTRATION_OK = private("REG_TRUSTED", "Registration trusted")
REGISTRATION_NOTE = private("REG_NOTE", "Registration note")
UNIT_HOUR = Code("h", "UCUM", "hour")
UNIT_PERCENT = Code("%", "UCUM", "percent")


def _yes_no(name: Code, value: bool) -> CodeContentItem:
    return CodeContentItem(name=name, value=pydicom_codes.SCT.Yes if value else pydicom_codes.SCT.No,
                           relationship_type="CONTAINS")


def _num(name: Code, value: float, unit: Code) -> NumContentItem:
    return NumContentItem(name=name, value=float(value), unit=unit, relationship_type="CONTAINS")


def comparison_container(c: Comparison) -> ContainerContentItem:
    """The comparison as one SR CONTAINER of coded findings and numbers."""
    items: list[hd.sr.ContentItem] = [
        UIDRefContentItem(name=PRIOR_SERIES, value=c.prior_series_instance_uid,
                          relationship_type="CONTAINS")]
    if c.interval_h is not None:
        items.append(_num(INTERVAL, c.interval_h, UNIT_HOUR))
    items.append(_num(ICH_CHANGE, c.ich_change_ml, UNIT_ML))
    if c.ich_change_pct is not None:
        items.append(_num(ICH_CHANGE_PCT, c.ich_change_pct, UNIT_PERCENT))
    items += [_num(IVH_CHANGE, c.ivh_change_ml, UNIT_ML), _yes_no(NEW_IVH, c.new_ivh),
              _yes_no(EXPANSION, c.expansion),
              TextContentItem(name=DEFINITION, value=c.definition[:1024], relationship_type="CONTAINS"),
              _yes_no(REGISTRATION_OK, c.registration.trusted)]
    if c.registration.message:
        items.append(TextContentItem(name=REGISTRATION_NOTE, value=c.registration.message[:1024],
                                     relationship_type="CONTAINS"))
    container = ContainerContentItem(name=FOLLOWUP, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def add_comparison(sr: Dataset, comparison: Comparison) -> None:
    """Append the comparison container to the root of ``sr`` (a built TID 1500 report)."""
    sr.ContentSequence.append(comparison_container(comparison))
