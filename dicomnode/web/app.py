"""The console's Starlette application: pages, actions, metrics and probes.

Page handlers are plain functions, so Starlette runs them in its thread pool; they read through
read-only sessions. Actions need a POST with the session's CSRF token and go to the audit log.
"""

from __future__ import annotations

import logging
import secrets
import socket
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory
from dicomnode.web import actions, data
from dicomnode.web.auth import LoginLimiter, csrf_ok, csrf_token, read_users, verify
from dicomnode.web.metrics import DatabaseCollector

log = logging.getLogger(__name__)
LOCAL_USER = "local"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _when(value: datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") + " UTC" if value else ""


class Console:
    """The pages and actions, bound to the settings and the two session factories."""

    def __init__(self, settings: Settings, read: SessionFactory, write: SessionFactory) -> None:
        self.settings, self.read, self.write = settings, read, write
        self.users = read_users(settings.web.users_file)
        self.limiter = LoginLimiter(settings.web.login_attempts, settings.web.login_window_s)
        env = Environment(loader=PackageLoader("dicomnode.web", "templates"),
                          autoescape=select_autoescape(default=True))
        env.filters["bytes"] = _bytes
        env.filters["when"] = _when
        self.templates = Jinja2Templates(env=env)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DatabaseCollector(read, settings))

    # -- helpers ---------------------------------------------------------------------------
    def user(self, request: Request) -> str | None:
        """Who is asking: the logged-in user, ``local`` without users, else None."""
        if not self.users:
            return LOCAL_USER
        name = request.session.get("user")
        return name if isinstance(name, str) and name in self.users else None

    @staticmethod
    def peer(request: Request) -> str:
        return request.client.host if request.client else ""

    def page(self, request: Request, name: str, **context: Any) -> Response:
        user = self.user(request)
        if user is None:
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        flash = request.session.pop("flash", None)
        return self.templates.TemplateResponse(request, name, {
            "user": user, "logins": bool(self.users), "csrf": csrf_token(request.session),
            "flash": flash, "settings": self.settings, "version": __version__,
            "show_ids": self.settings.web.show_patient_identifiers, **context})

    # -- pages -----------------------------------------------------------------------------
    def overview(self, request: Request) -> Response:
        return self.page(request, "overview.html", o=data.overview(self.read, self.settings))

    def series(self, request: Request) -> Response:
        q = request.query_params
        day = q.get("day", "")
        try:
            datetime.fromisoformat(day) if day else None
        except ValueError:
            day = ""
        rows = data.series_list(self.read, day=day, state=q.get("state", ""),
                                reason=q.get("reason", ""),
                                show_identifiers=self.settings.web.show_patient_identifiers)
        return self.page(request, "series.html", rows=rows, states=data.series_states(self.read),
                         day=day, state=q.get("state", ""), reason=q.get("reason", ""))

    def job(self, request: Request) -> Response:
        detail = data.job_detail(self.read, self.settings, int(request.path_params["job_id"]),
                                 show_identifiers=self.settings.web.show_patient_identifiers)
        if detail is None:
            return PlainTextResponse("no such job", status_code=404)
        return self.page(request, "job.html", d=detail)

    def preview(self, request: Request) -> Response:
        if self.user(request) is None:
            return PlainTextResponse("login required", status_code=401)
        path = data.preview_path(self.read, self.settings, int(request.path_params["job_id"]),
                                 request.path_params["name"])
        if path is None:
            return PlainTextResponse("no such preview", status_code=404)
        return FileResponse(path, media_type="image/png")

    def destinations(self, request: Request) -> Response:
        return self.page(request, "destinations.html",
                         rows=data.destinations(self.read, self.settings))

    def audit(self, request: Request) -> Response:
        return self.page(request, "audit.html", rows=data.audit(self.read))

    def model_card(self, request: Request) -> Response:
        if self.user(request) is None:
            return PlainTextResponse("login required", status_code=401)
        key = request.path_params["key"]
        found = next((m for m in data.models(self.settings) if m.key == key), None)
        if found is None or found.card is None:
            return PlainTextResponse("no model card", status_code=404)
        return PlainTextResponse(found.card.read_text(encoding="utf-8"),
                                 media_type="text/markdown; charset=utf-8")

    # -- login -----------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.templates.TemplateResponse(request, "login.html", {
                "csrf": csrf_token(request.session), "error": "", "user": None,
                "next": request.query_params.get("next", "/"), "logins": True})
        form = await request.form()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        peer, target = self.peer(request), str(form.get("next", "/"))
        if not csrf_ok(request.session, form.get("csrf")):
            return PlainTextResponse("CSRF token missing or wrong", status_code=403)
        if self.limiter.blocked(peer, name):
            log.warning("console: login for %r from %s refused: too many failures", name, peer)
            return PlainTextResponse("too many failed logins; try again later", status_code=429)
        if not verify(self.users, name, password):
            self.limiter.failed(peer, name)
            log.warning("console: failed login for %r from %s", name, peer)
            actions.record(self.write, name or "?", "login_failed", "", "", peer)
            return self.templates.TemplateResponse(request, "login.html", {
                "csrf": csrf_token(request.session), "error": "wrong user name or password",
                "next": target, "user": None, "logins": True}, status_code=401)
        self.limiter.succeeded(peer, name)
        request.session.clear()  # a new session (and token) after login: no fixation
        request.session["user"] = name
        actions.record(self.write, name, "login", "", "", peer)
        return RedirectResponse(target if target.startswith("/") and not target.startswith("//")
                                else "/", status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request.session, form.get("csrf")):
            return PlainTextResponse("CSRF token missing or wrong", status_code=403)
        user = self.user(request)
        if user and self.users:
            actions.record(self.write, user, "logout", "", "", self.peer(request))
        request.session.clear()
        return RedirectResponse("/login" if self.users else "/", status_code=303)

    # -- actions ---------------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        user = self.user(request)
        if user is None:
            return PlainTextResponse("login required", status_code=401)
        form = await request.form()
        if not csrf_ok(request.session, form.get("csrf")):
            log.warning("console: action without a valid CSRF token from %s", self.peer(request))
            return PlainTextResponse("CSRF token missing or wrong", status_code=403)
        p, peer = request.path_params, self.peer(request)
        what, back = p["action"], str(form.get("back", "/"))
        try:
            if what == "resend":
                message = actions.resend_job(self.write, user, int(p["id"]), peer)
            elif what == "reprocess":
                message = actions.reprocess_series(self.write, user, int(p["id"]), peer)
            elif what in ("pause", "resume"):
                if p["id"] not in {d.name for d in self.settings.destinations}:
                    return PlainTextResponse("no such destination", status_code=404)
                message = getattr(actions, what)(self.write, user, p["id"], peer)
            else:
                return PlainTextResponse("no such action", status_code=404)
        except KeyError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        except ValueError as exc:
            message = str(exc)
        request.session["flash"] = message
        return RedirectResponse(back if back.startswith("/") and not back.startswith("//")
                                else "/", status_code=303)

    # -- metrics and probes ----------------------------------------------------------------
    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    @staticmethod
    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    def readyz(self, request: Request) -> Response:
        checks = {"listening": self._listening(), "database": self._database(),
                  "worker": bool(data.alive_workers(self.read, self.settings)),
                  "disk": self._disk()}
        return JSONResponse({"ready": all(checks.values()), **checks},
                            status_code=200 if all(checks.values()) else 503)

    def _listening(self) -> bool:
        host = self.settings.node.bind_address
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        try:
            socket.create_connection((host, self.settings.node.port), timeout=1.0).close()
            return True
        except OSError:
            return False

    def _database(self) -> bool:
        try:
            with self.read() as session:
                session.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means not ready
            log.warning("readyz: database not reachable", exc_info=True)
            return False

    def _disk(self) -> bool:
        try:
            free = data.free_disk_bytes(self.settings)
        except OSError:
            return False
        return free >= self.settings.storage.min_free_disk_mb * 1024 * 1024


def create_app(settings: Settings, read: SessionFactory, write: SessionFactory) -> Starlette:
    """The console as an ASGI application."""
    c = Console(settings, read, write)
    secure = settings.web.tls or settings.web.behind_tls_proxy
    routes = [
        Route("/", c.overview), Route("/series", c.series),
        Route("/jobs/{job_id:int}", c.job),
        Route("/jobs/{job_id:int}/previews/{name}", c.preview),
        Route("/destinations", c.destinations), Route("/audit", c.audit),
        Route("/models/{key}", c.model_card),
        Route("/login", c.login, methods=["GET", "POST"]),
        Route("/logout", c.logout, methods=["POST"]),
        Route("/jobs/{id:int}/{action:str}", c.action, methods=["POST"]),
        Route("/series/{id:int}/{action:str}", c.action, methods=["POST"]),
        Route("/destinations/{id:str}/{action:str}", c.action, methods=["POST"]),
        Route("/metrics", c.metrics), Route("/healthz", c.healthz), Route("/readyz", c.readyz),
        Mount("/static", StaticFiles(packages=[("dicomnode.web", "static")]), name="static"),
    ]
    # Signed session cookie: HttpOnly always, SameSite=strict, Secure whenever served over TLS.
    middleware = [Middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32),
                             session_cookie="dicomnode_console", max_age=8 * 3600,
                             same_site="strict", https_only=secure)]
    return Starlette(routes=routes, middleware=middleware)
