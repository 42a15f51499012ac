"""Console users (salted Argon2 hashes in a file), failed-login limits and CSRF tokens."""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger(__name__)
_hasher = PasswordHasher()
# Compared against when the user is unknown, so both cases take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(8))


def hash_password(password: str) -> str:
    """An Argon2id hash with its own random salt (argon2-cffi)."""
    return _hasher.hash(password)


def read_users(path: Path | None) -> dict[str, str]:
    """``name:hash`` lines (``#`` comments and blank lines skipped); no file: no users."""
    if path is None:
        return {}
    users = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, _, hashed = line.partition(":")
            users[name.strip()] = hashed.strip()
    return users


def add_user(path: Path, name: str, password: str) -> None:
    """Add or replace ``name`` in the users file (created with mode 0600)."""
    if not name or ":" in name or len(name) > 64:
        raise ValueError(f"user name {name!r}: 1 to 64 characters, no colon")
    users = read_users(path) if path.is_file() else {}
    users[name] = hash_password(password)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("".join(f"{n}:{h}\n" for n, h in users.items()), encoding="utf-8")


def verify(users: dict[str, str], name: str, password: str) -> bool:
    """True when ``name`` exists and ``password`` matches its hash."""
    hashed = users.get(name)
    try:
        return _hasher.verify(hashed or _DUMMY_HASH, password) and hashed is not None
    except (VerificationError, InvalidHashError):
        return False


class LoginLimiter:
    """At most ``attempts`` failed logins per (address, user) within ``window_s`` seconds."""

    def __init__(self, attempts: int, window_s: float) -> None:
        self.attempts, self.window_s = attempts, window_s
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures[key]
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, address: str, user: str) -> bool:
        with self._lock:
            return len(self._recent((address, user), time.monotonic())) >= self.attempts

    def failed(self, address: str, user: str) -> None:
        with self._lock:
            self._recent((address, user), time.monotonic()).append(time.monotonic())

    def succeeded(self, address: str, user: str) -> None:
        with self._lock:
            self._failures.pop((address, user), None)


def csrf_token(session: dict[str, object]) -> str:
    """The session's CSRF token (synchroniser token kept in the signed session cookie)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(session: dict[str, object], sent: object) -> bool:
    """True when the form's token equals the session's (constant-time)."""
    token = session.get("csrf")
    return (isinstance(token, str) and isinstance(sent, str) and bool(sent)
            and hmac.compare_digest(token, sent))
