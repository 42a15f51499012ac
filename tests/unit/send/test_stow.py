"""STOW-RS sender against a scripted loopback HTTP(S) server: status split, store results per
instance, authentication headers, secrets kept out of logs and off plain http, TLS with a CA."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomnode.config import Destination
from dicomnode.send.stow import stow_items
from tests.ct_series import make_series


class Peer:
    """A DICOMweb stand-in: answers each POST with the next scripted (status, JSON body)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.script: list[tuple[int, dict[str, Any] | None]] = []
        self.requests: list[dict[str, Any]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) \
                    if "chunked" not in self.headers.get("Transfer-Encoding", "") else b""
                peer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = peer.script.pop(0) if peer.script else (200, None)
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        host, port = self.server.server_address[:2]
        self.url = f"{scheme}://{'localhost' if tls else host}:{port}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


@pytest.fixture
def items(tmp_path: Path, ct_template: Dataset) -> list[tuple[str, Path, str]]:
    out = []
    for ds in make_series(ct_template, 3):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((str(ds.SOPInstanceUID), path, str(ds.SOPClassUID)))
    return out


def _dest(url: str, **kw: Any) -> Destination:
    return Destination(name="web", kind="dicomweb", url=url, **kw)


def _ref(uid: str, tag: str, **extra: Any) -> dict[str, Any]:
    item = {"00081155": {"vr": "UI", "Value": [uid]}}
    for key, (vr, value) in extra.items():
        item[key] = {"vr": vr, "Value": [value]}
    return item


def _result(sent: list[str] = (), failed: dict[str, int] | None = None) -> dict[str, Any]:  # type: ignore[assignment]
    body: dict[str, Any] = {}
    if sent:
        body["00081199"] = {"vr": "SQ", "Value": [_ref(u, "") for u in sent]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_ref(u, "", **{"00081197": ("US", r)})
                                                   for u, r in failed.items()]}
    return body


def test_one_multipart_post_and_every_instance_sent(peer: Peer, items: list) -> None:
    out = stow_items(items, _dest(peer.url))
    assert {o.result for o in out.values()} == {"sent"} and len(out) == 3
    (req,) = peer.requests
    assert req["path"] == "/dicom-web/studies"
    ctype = req["headers"]["Content-Type"]
    assert ctype.startswith("multipart/related") and 'type="application/dicom"' in ctype
    assert req["body"].count(b"Content-Type: application/dicom") == 3
    assert "Authorization" not in req["headers"]


@pytest.mark.parametrize(("status", "expected"), [
    (503, "transient"), (500, "transient"), (408, "transient"), (429, "transient"),
    (400, "permanent"), (403, "permanent"), (404, "permanent"), (415, "permanent"),
])
def test_http_status_split(peer: Peer, items: list, status: int, expected: str) -> None:
    peer.script.append((status, None))
    out = stow_items(items, _dest(peer.url))
    assert {o.result for o in out.values()} == {expected}
    assert all(o.detail.startswith(f"HTTP {status}") for o in out.values())


def test_store_result_is_honoured_per_instance(peer: Peer, items: list) -> None:
    (a, *_), (b, *_), (c, *_) = items
    # 202: some stored, one out of resources (retry), one SOP class not supported (never)
    peer.script.append((202, _result(sent=[a], failed={b: 0xA700, c: 0x0122})))
    out = stow_items(items, _dest(peer.url))
    assert (out[a].result, out[b].result, out[c].result) == ("sent", "transient", "permanent")
    assert out[c].detail == "failure reason 0x0122"
    # 409: all failed, the body still says why, per instance
    peer.script.append((409, _result(failed={a: 0xC000, b: 0x0110, c: 0xA900})))
    out = stow_items(items, _dest(peer.url))
    assert (out[a].result, out[b].result, out[c].result) == ("permanent", "transient", "permanent")
    # 200 whose result leaves one out: not confirmed, so it is tried again
    peer.script.append((200, _result(sent=[a, b])))
    out = stow_items(items, _dest(peer.url))
    assert (out[a].result, out[b].result, out[c].result) == ("sent", "sent", "transient")


def test_connection_refused_is_transient(items: list) -> None:
    p = Peer()
    url = p.url
    p.close()
    out = stow_items(items, _dest(url))
    assert {o.result for o in out.values()} == {"transient"}


def test_unreadable_output_is_permanent_and_not_sent(peer: Peer, items: list) -> None:
    uid, path, cls = items[0]
    path.write_bytes(b"not dicom")
    out = stow_items(items, _dest(peer.url))
    assert out[uid].result == "permanent" and "cannot read output" in out[uid].detail
    assert peer.requests[0]["body"].count(b"Content-Type: application/dicom") == 2


def test_bearer_and_basic_secrets_from_file_never_logged(peer: Peer, items: list, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123-secret\n")
    caplog.set_level(logging.DEBUG)
    stow_items(items, _dest(peer.url, auth="bearer", secret_file=token))
    assert peer.requests[-1]["headers"]["Authorization"] == "Bearer tok-123-secret"
    stow_items(items, _dest(peer.url, auth="basic", username="node", secret_file=token))
    assert peer.requests[-1]["headers"]["Authorization"].startswith("Basic ")
    assert "tok-123-secret" not in caplog.text
    missing = stow_items(items, _dest(peer.url, auth="bearer", secret_file=tmp_path / "gone"))
    assert {o.result for o in missing.values()} == {"transient"}


def test_secret_never_goes_over_plain_http_to_another_host(items: list, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok")
    # 192.0.2.1 (TEST-NET-1) is refused before any connection is attempted
    out = stow_items(items, _dest("http://192.0.2.1/dicom-web", auth="bearer", secret_file=token))
    assert {o.result for o in out.values()} == {"permanent"}
    assert all("plain http" in o.detail for o in out.values())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls_is_verified_against_the_configured_ca(items: list, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    peer = Peer(tls=(cert, key))
    try:
        out = stow_items(items, _dest(peer.url))  # system CAs do not know this certificate
        assert {o.result for o in out.values()} == {"transient"}
        assert all("SSL" in o.detail for o in out.values())
        out = stow_items(items, _dest(peer.url, tls_ca_certificates=cert))
        assert {o.result for o in out.values()} == {"sent"}
    finally:
        peer.close()
