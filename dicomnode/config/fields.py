"""Typed reading of raw TOML tables: the getters every settings section uses.

Each getter returns the key's value, or the default when the key is absent or has the wrong type
or range; a wrong value is recorded (with its section and key) in ``problems`` rather than
raised, so that one ``ConfigError`` can list every problem at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no controls


class FieldReader:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, label: str, base: Path) -> None:
        self.label = label
        self.base = base
        self.problems: list[str] = []

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.label, self.problems)

    # -- typed getters -------------------------------------------------------------------
    def _get(self, table: Mapping[str, Any], section: str, key: str, default: Any,
             check: Callable[[Any], bool], expected: str) -> Any:
        if key not in table:
            return default
        value = table[key]
        if not check(value):
            self.problems.append(f"[{section}] {key} = {value!r}: expected {expected}")
            return default
        return value

    def _int(self, t: Mapping[str, Any], s: str, k: str, d: int, lo: int, hi: int) -> int:
        return self._get(t, s, k, d, lambda x: type(x) is int and lo <= x <= hi,
                         f"an integer from {lo} to {hi}")

    def _num(self, t: Mapping[str, Any], s: str, k: str, d: float, lo: float, hi: float) -> float:
        ok = lambda x: type(x) in (int, float) and lo <= x <= hi  # noqa: E731
        return float(self._get(t, s, k, d, ok, f"a number from {lo} to {hi}"))

    def _bool(self, t: Mapping[str, Any], s: str, k: str, d: bool) -> bool:
        return self._get(t, s, k, d, lambda x: isinstance(x, bool), "true or false")

    def _str(self, t: Mapping[str, Any], s: str, k: str, d: str) -> str:
        return self._get(t, s, k, d, lambda x: isinstance(x, str), "a string")

    def _strs(self, t: Mapping[str, Any], s: str, k: str, d: tuple[str, ...]) -> tuple[str, ...]:
        ok = lambda x: isinstance(x, list) and all(isinstance(i, str) for i in x)  # noqa: E731
        return tuple(self._get(t, s, k, list(d), ok, "a list of strings"))

    def _range(self, t: Mapping[str, Any], s: str, k: str,
               d: tuple[float, float]) -> tuple[float, float]:
        ok = lambda x: (isinstance(x, list) and len(x) == 2  # noqa: E731
                        and all(type(i) in (int, float) for i in x) and x[0] <= x[1])
        lo, hi = self._get(t, s, k, list(d), ok, "[low, high] numbers")
        return (float(lo), float(hi))

    def _path(self, t: Mapping[str, Any], s: str, k: str, d: Path | None) -> Path | None:
        value = self._str(t, s, k, "" if d is None else str(d))
        return self.resolve(value) if value else None

    def resolve(self, value: str | Path, base: Path | None = None) -> Path:
        p = Path(value).expanduser()
        return (p if p.is_absolute() else (base or self.base) / p).resolve()

    def _regex(self, t: Mapping[str, Any], s: str, k: str, d: str) -> str:
        value = self._str(t, s, k, d)
        try:
            re.compile(value)
        except re.error as exc:
            self.problems.append(f"[{s}] {k}: invalid regular expression: {exc}")
            return d
        return value

    def _table(self, raw: Mapping[str, Any], name: str, known: set[str]) -> Mapping[str, Any]:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            self.problems.append(f"[{name}] must be a table")
            return {}
        for key in sorted(set(table) - known):
            self.problems.append(f"[{name}] unknown key {key!r}")
        return table

    def ae_title(self, value: str, where: str) -> str:
        if not _AE_RE.match(value) or not value.strip():
            self.problems.append(f"{where} = {value!r}: an AE title is 1 to 16 printable "
                                 "characters without backslash")
        return value

