"""Who may use the console: logins, rate limits, and the rules for binding off loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.db.models import AuditEntry
from dicomnode.db.session import make_sessions
from dicomnode.errors import ConfigError
from dicomnode.web.auth import add_user, read_users, verify
from tests.conftest import make_settings
from tests.unit.web.console_fixtures import client, console_settings, running_console, seed, token


def test_users_file_holds_salted_argon2_hashes(tmp_path: Path) -> None:
    users = tmp_path / "users"
    add_user(users, "alice", "correct horse")
    add_user(users, "bob", "correct horse")
    hashes = read_users(users)
    assert hashes["alice"].startswith("$argon2id$") and hashes["alice"] != hashes["bob"]
    assert "correct horse" not in users.read_text()
    assert verify(hashes, "alice", "correct horse")
    assert not verify(hashes, "alice", "wrong") and not verify(hashes, "carol", "correct horse")
    assert users.stat().st_mode & 0o077 == 0


def test_with_users_every_page_and_action_needs_a_login(tmp_path: Path, db_url: str) -> None:
    """On SQLite and on PostgreSQL (``db_url``): the audit log is rows."""
    users = tmp_path / "users"
    add_user(users, "alice", "correct horse")
    storage = tmp_path / "storage"
    settings = console_settings(storage, **{"web.users_file": users, "web.login_attempts": 3,
                                            "database.url": db_url})
    sessions = make_sessions(settings.database_url)
    ids = seed(sessions, storage)
    with running_console(settings) as base, client(base) as http:
        for path in ("/", "/series", f"/jobs/{ids['job']}", "/destinations", "/audit"):
            r = http.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
        assert http.post(f"/jobs/{ids['job']}/resend", data={}).status_code == 401
        assert http.get(f"/jobs/{ids['job']}/previews/v1-summary.png").status_code == 401
        assert http.get("/healthz").status_code == 200  # probes and metrics stay open
        csrf = token(http.get("/login").text)
        assert http.post("/login", data={"user": "alice", "password": "correct horse"}
                         ).status_code == 403  # no CSRF token
        for _ in range(3):
            r = http.post("/login", data={"user": "alice", "password": "wrong", "csrf": csrf})
            assert r.status_code == 401
        r = http.post("/login", data={"user": "alice", "password": "correct horse",
                                      "csrf": csrf})
        assert r.status_code == 429  # rate-limited, even with the right password
    with running_console(settings) as base, client(base) as http:  # a fresh limiter
        csrf = token(http.get("/login").text)
        r = http.post("/login", data={"user": "alice", "password": "correct horse",
                                      "csrf": csrf, "next": "/audit"})
        assert r.status_code == 303 and r.headers["location"] == "/audit"
        page = http.get("/audit").text
        assert "alice" in page and "login_failed" in page
        csrf = token(http.get(f"/jobs/{ids['job']}").text)
        assert http.post(f"/jobs/{ids['job']}/resend", data={"csrf": csrf}).status_code == 303
        assert http.post("/logout", data={"csrf": csrf}).status_code == 303
        assert http.get("/").status_code == 303
    with sessions() as s:
        actions = [(a.user, a.action) for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert actions == [("alice", "login_failed")] * 3 + [
        ("alice", "login"), ("alice", "resend"), ("alice", "logout")]


def test_off_loopback_needs_users_and_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path, **{"web.port": 8080, "web.bind_address": "0.0.0.0"})
    text = str(err.value)
    assert "users_file is required" in text and "behind_tls_proxy" in text
    users = tmp_path / "users"
    add_user(users, "alice", "correct horse")
    with pytest.raises(ConfigError, match=r"\[web\] tls = true needs the file \[tls\] certificate"):
        make_settings(tmp_path, **{"web.port": 8080, "web.bind_address": "0.0.0.0",
                                   "web.users_file": users, "web.tls": True})
    ok = make_settings(tmp_path, **{"web.port": 8080, "web.bind_address": "0.0.0.0",
                                    "web.users_file": users, "web.behind_tls_proxy": True})
    assert ok.web.bind_address == "0.0.0.0"
    assert make_settings(tmp_path).web.port == 0  # off by default
    with pytest.raises(ConfigError, match="--web-port"):
        make_settings(tmp_path, **{"web.port": 70000})


def test_secure_cookie_behind_a_tls_proxy(tmp_path: Path) -> None:
    users = tmp_path / "users"
    add_user(users, "alice", "correct horse")
    settings = console_settings(tmp_path / "storage", **{"web.users_file": users,
                                                         "web.behind_tls_proxy": True})
    with running_console(settings) as base, client(base) as http:
        cookie = http.get("/login").headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
