"""Published scores that need no training.

CAVE (Haapaniemi et al., Stroke 2014;45:1971-1976): risk of late seizure (> 7 days) after
intracerebral haemorrhage. One point each for Cortical involvement, Age < 65 years,
Volume > 10 mL and Early seizure within 7 days. Inputs: plain values (from Measurements, the
DICOM header or clinical data). Outputs: :class:`CaveResult`. Side effects: none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CAVE_RISK", "CaveResult", "cave_from_features", "cave_score"]

#: Published risk of late seizure by CAVE score 0..4 (Haapaniemi 2014, derivation cohort).
CAVE_RISK: tuple[float, ...] = (0.006, 0.036, 0.098, 0.348, 0.462)
AGE_LIMIT_Y = 65.0  # "Age < 65 years"
VOLUME_LIMIT_ML = 10.0  # "Volume > 10 mL"


@dataclass(frozen=True)
class CaveResult:
    """A CAVE score.

    ``score`` counts the known components that are present. ``partial`` is True when any
    component is unknown (``components`` value None); the true score then lies between
    ``score`` and ``max_possible``, and ``risk`` is the range (low, high) of the published risks
    over those scores, e.g. E unknown with C, A, V giving 2: (0.098, 0.348). When complete,
    ``risk`` is (r, r) with r the published risk of ``score``; ``risk_point`` is r (None when
    partial).
    """

    score: int
    partial: bool
    components: Mapping[str, bool | None]
    risk: tuple[float, float]
    max_possible: int
    unknown: tuple[str, ...] = field(default=())

    @property
    def risk_point(self) -> float | None:
        return None if self.partial else self.risk[0]

    def describe(self) -> str:
        """One line for a report, e.g. ``CAVE 2-3 (early seizure unknown): late-seizure risk 9.8-34.8 %``."""
        lo, hi = self.risk
        if not self.partial:
            return f"CAVE {self.score}/4: late-seizure risk {100 * lo:.1f} %"
        return (
            f"CAVE {self.score}-{self.max_possible} ({', '.join(self.unknown)} unknown): "
            f"late-seizure risk {100 * lo:.1f}-{100 * hi:.1f} %"
        )


def _known(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def cave_score(
    cortical_involvement: bool | None,
    age_y: float | None,
    ich_volume_ml: float | None,
    early_seizure: bool | None,
) -> CaveResult:
    """The CAVE score; None (or NaN) for any unknown input makes the result partial.

    At admission ``early_seizure`` is unknown: the result is the image-and-age part, partial,
    with the risk range of ``score`` .. ``score + 1``. Raises ``ValueError`` for a negative age
    or volume.
    """
    if _known(age_y) and float(age_y) < 0:  # type: ignore[arg-type]
        raise ValueError(f"age_y must be >= 0, got {age_y}")
    if _known(ich_volume_ml) and float(ich_volume_ml) < 0:  # type: ignore[arg-type]
        raise ValueError(f"ich_volume_ml must be >= 0, got {ich_volume_ml}")
    components: dict[str, bool | None] = {
        "cortical_involvement": bool(cortical_involvement) if _known(cortical_involvement) else None,
        "age_under_65": float(age_y) < AGE_LIMIT_Y if _known(age_y) else None,  # type: ignore[arg-type]
        "volume_over_10ml": float(ich_volume_ml) > VOLUME_LIMIT_ML if _known(ich_volume_ml) else None,  # type: ignore[arg-type]
        "early_seizure": bool(early_seizure) if _known(early_seizure) else None,
    }
    score = sum(1 for v in components.values() if v)
    unknown = tuple(k for k, v in components.items() if v is None)
    max_possible = score + len(unknown)
    return CaveResult(
        score=score,
        partial=bool(unknown),
        components=components,
        risk=(CAVE_RISK[score], CAVE_RISK[max_possible]),
        max_possible=max_possible,
        unknown=unknown,
    )


def _flag(features: Mapping[str, float], key: str) -> bool | None:
    v = features.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return bool(v)


def cave_from_features(features: Mapping[str, float]) -> CaveResult:
    """CAVE from an ``extract_features`` dict: ``m_cortical_involvement``, ``m_ich_volume_ml``,
    age from ``hdr_age_y`` (else ``clin_age_y``) and ``clin_early_seizure`` (NaN -> unknown)."""
    age = features.get("hdr_age_y", math.nan)
    if not _known(age):
        age = features.get("clin_age_y", math.nan)
    return cave_score(
        _flag(features, "m_cortical_involvement"),
        age if _known(age) else None,
        features.get("m_ich_volume_ml") if _known(features.get("m_ich_volume_ml")) else None,
        _flag(features, "clin_early_seizure"),
    )
