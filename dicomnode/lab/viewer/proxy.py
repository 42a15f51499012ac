"""One loopback origin for the viewer: OHIF's static ``dist/`` and Orthanc's DICOMweb behind it.

Every path that is not a file of ``dist/`` falls back to ``index.html`` (OHIF routes in the
page); ``/dicom-web/...`` and ``/wado...`` are forwarded to Orthanc; ``/app-config.js`` is the
rig's configuration, never cached. Responses carry the cross-origin isolation headers OHIF
uses for shared memory. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["ViewerProxy"]

_FORWARDED = ("/dicom-web", "/wado")
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "content-length", "host"}
_TYPES = {".js": "application/javascript", ".mjs": "application/javascript", ".wasm": "application/wasm",
          ".json": "application/json", ".css": "text/css", ".html": "text/html; charset=utf-8",
          ".svg": "image/svg+xml", ".map": "application/json"}
_ISOLATION = (("Cross-Origin-Opener-Policy", "same-origin"),
              ("Cross-Origin-Embedder-Policy", "require-corp"),
              ("Cross-Origin-Resource-Policy", "same-origin"))


class ViewerProxy:
    """Serve ``dist`` with ``config_js`` and forward DICOMweb to ``127.0.0.1:upstream_port``."""

    def __init__(self, dist: Path, config_js: str, upstream_port: int, port: int = 0) -> None:
        self.dist = Path(dist).resolve()
        if not (self.dist / "index.html").is_file():
            raise FileNotFoundError(f"{self.dist}: no index.html (make ohif fetches the viewer)")
        rig = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                rig.handle(self)

            do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_GET  # noqa: N815

            def log_message(self, *_: object) -> None:
                pass

        self.config_js = config_js.encode()
        self.upstream_port = upstream_port
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="viewer-proxy",
                                       daemon=True)

    def start(self) -> ViewerProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> ViewerProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- requests -------------------------------------------------------------------------
    def handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path.startswith(_FORWARDED):
            self._forward(req)
        elif path == "/app-config.js":
            self._send(req, 200, self.config_js, "application/javascript", cache="no-store")
        else:
            self._static(req, path)

    def _send(self, req: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, *,
              cache: str = "no-cache", headers: list[tuple[str, str]] | None = None) -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Cache-Control", cache)
        for name, value in (*_ISOLATION, *(headers or [])):
            req.send_header(name, value)
        req.end_headers()
        if req.command != "HEAD":
            try:
                req.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the page went away (navigation, closed browser): nothing to answer

    def _static(self, req: BaseHTTPRequestHandler, path: str) -> None:
        file = (self.dist / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.dist) or not file.is_file():
            file = self.dist / "index.html"  # the page routes /viewer, /, ...
        ctype = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._send(req, 200, file.read_bytes(), ctype)

    def _forward(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length", 0) or 0)
        body = req.rfile.read(length) if length else None
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP}
        headers["Host"] = req.headers.get("Host", f"127.0.0.1:{self.port}")  # links come back to us
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        try:
            conn.request(req.command, req.path, body=body, headers=headers)
            rsp = conn.getresponse()
            data = rsp.read()
            kept = [(k, v) for k, v in rsp.getheaders() if k.lower() not in _HOP
                    and k.lower() not in ("content-type", "cache-control")]
            self._send(req, rsp.status, data, rsp.getheader("Content-Type", "application/octet-stream"),
                       cache=rsp.getheader("Cache-Control", "no-cache"), headers=kept)
        except OSError as exc:
            self._send(req, 502, f"upstream: {exc}".encode(), "text/plain")
        finally:
            conn.close()
