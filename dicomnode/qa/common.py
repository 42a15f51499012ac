"""What every check shares: the outcome of a value against its limit, under the policy."""

from __future__ import annotations

from dicomnode.config import QASettings
from dicomnode.domain import QACheck


def fmt_range(lo: float, hi: float) -> str:
    return f"{lo:g}..{hi:g}"


def check(name: str, value: float | str | None, limit: str, ok: bool, message: str,
          cfg: QASettings) -> QACheck:
    """``pass`` when ``ok``; otherwise ``warn`` for a check in ``warn_only``, else ``fail``.

    ``message`` says what was found; on a pass it is kept short.
    """
    if isinstance(value, float):
        value = round(value, 3)
    if ok:
        return QACheck(name, value, limit, "pass", message)
    return QACheck(name, value, limit, "warn" if name in cfg.warn_only else "fail", message)


def not_measured(name: str, limit: str, why: str) -> QACheck:
    """A check that could not be measured on this series: it passes, and says why."""
    return QACheck(name, None, limit, "pass", f"not measured: {why}")
