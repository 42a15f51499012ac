"""Deterministic UIDs of the objects dicomnode sends.

A result object's Series and SOP Instance UIDs follow from (source Series Instance UID, result
version, object kind, instance index) through :func:`pydicom.uid.generate_uid` with those values as
entropy sources (a SHA-512 hash, PS3.5 B.2 UUID-derived style, under a fixed root). So a resend of
the same result (a retry, a restart) carries the same UIDs and the PACS replaces the instances
instead of keeping duplicates; a new result version gets new UIDs and becomes a new series.
"""

from __future__ import annotations

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

# pydicom's root (1.2.826.0.1.3680043.8.498.); a site with its own registered root sets it here.
UID_PREFIX = PYDICOM_ROOT_UID
NAMESPACE = "dicomnode.encode"  # keeps these apart from the UIDs of dicomnode.lab.synth
KINDS = ("seg", "sr", "overlay", "overlay-summary", "not-analysed", "comparison")


def _check(source_series_uid: str, version: int, kind: str) -> None:
    if not isinstance(source_series_uid, str) or not source_series_uid:
        raise ValueError(f"source_series_uid must be a non-empty UID string, got {source_series_uid!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def series_uid(source_series_uid: str, version: int, kind: str) -> UID:
    """Series Instance UID of the ``kind`` result of version ``version`` of a source series."""
    _check(source_series_uid, version, kind)
    return generate_uid(
        prefix=UID_PREFIX,
        entropy_srcs=[NAMESPACE, "series", source_series_uid, str(version), kind],
    )


def instance_uid(source_series_uid: str, version: int, kind: str, index: int = 0) -> UID:
    """SOP Instance UID of instance ``index`` (0-based) of that result series."""
    _check(source_series_uid, version, kind)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    return generate_uid(
        prefix=UID_PREFIX,
        entropy_srcs=[NAMESPACE, "instance", source_series_uid, str(version), kind, str(index)],
    )


def tracking_uid(source_series_uid: str, version: int, label_value: int, part: str = "") -> UID:
    """Tracking UID of one finding (label value): the same in the SEG segment and the SR groups.

    ``part`` names a measurement of the finding tracked on its own (``"abc2-a"``, the ABC/2 A
    line); left empty it is the finding itself.
    """
    _check(source_series_uid, version, "seg")
    sources = [NAMESPACE, "tracking", source_series_uid, str(version), str(int(label_value))]
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=sources + ([part] if part else []))
