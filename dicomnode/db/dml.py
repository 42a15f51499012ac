"""Typed helpers for data-changing statements (UPDATE, DELETE, INSERT)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CursorResult, Result


def affected_rows(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE executed through a Session.

    ``Session.execute`` is typed to return ``Result``; for a DML statement it returns a
    ``CursorResult``, which carries ``rowcount``. Anything else is a programming error.
    """
    if not isinstance(result, CursorResult):
        raise TypeError(f"expected the result of an UPDATE or DELETE, got {type(result).__name__}")
    return int(result.rowcount or 0)
