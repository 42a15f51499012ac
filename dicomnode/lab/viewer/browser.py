"""Debian's headless Chromium, driven over the DevTools protocol (a WebSocket, no other driver).

The browser can reach loopback only: every other host resolves to nothing
(``--host-resolver-rules``) and any other address goes to a closed local proxy port, and the
background services that phone home are off. Every request the page makes is recorded
(``requests``, failures in ``failed``), as are console messages, log entries and uncaught
exceptions (``console``).
WebGL runs on the CPU through SwiftShader.
"""

from __future__ import annotations

import atexit
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websocket  # websocket-client

__all__ = ["Browser", "ConsoleEntry", "chromium_binary"]

FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
    "--mute-audio", "--hide-scrollbars",
    # Loopback only: names other than localhost do not resolve, other addresses go to a closed
    # port (Chromium sends loopback direct, everything else through this proxy).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
)


def chromium_binary() -> str | None:
    """Debian's Chromium (package ``chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class ConsoleEntry:
    level: str  # "error", "warning", "info", "debug", "log", "exception"
    text: str
    source: str = ""


class Browser:
    """One Chromium process with one page; ``call`` sends a DevTools command and waits."""

    def __init__(self, *, width: int = 1280, height: int = 800, timeout_s: float = 60.0) -> None:
        exe = chromium_binary()
        if exe is None:
            raise FileNotFoundError("chromium not installed (Debian package chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="dicomnode-chromium-"))
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.log = open(self.profile.parent / f"{self.profile.name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"], stdout=self.log, stderr=subprocess.STDOUT)
        atexit.register(self.close)  # an exception or sys.exit in the caller leaves no browser
        self.console: list[ConsoleEntry] = []
        self.requests: list[str] = []
        self.failed: list[str] = []  # HTTP errors and failed loads
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.ws = websocket.create_connection(self._page_ws(), timeout=timeout_s, suppress_origin=True,
                                              enable_multithread=True)
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _page_ws(self) -> str:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if port_file.is_file() and port_file.read_text().strip():
                port = int(port_file.read_text().split()[0])
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                        pages = [t for t in json.load(r) if t.get("type") == "page"]
                    if pages:
                        return str(pages[0]["webSocketDebuggerUrl"])
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("chromium's DevTools endpoint did not come up")

    def _read(self) -> None:
        while not self._closed:
            try:
                msg = json.loads(self.ws.recv())
            except (websocket.WebSocketException, OSError, ValueError):
                break
            if "id" in msg:
                with self._cond:
                    self._replies[msg["id"]] = msg
                    self._cond.notify_all()
            else:
                self._event(msg.get("method", ""), msg.get("params", {}))
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(ConsoleEntry(params.get("type", "log"), text))
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            self.console.append(ConsoleEntry("exception", str(text), d.get("url", "")))
        elif method == "Log.entryAdded":
            e = params.get("entry", {})
            self.console.append(ConsoleEntry(e.get("level", "info"), e.get("text", ""), e.get("url", "")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.responseReceived":
            rsp = params.get("response", {})
            if int(rsp.get("status", 0)) >= 400:
                self.failed.append(f"HTTP {rsp.get('status')} {rsp.get('url', '')}")
        elif method == "Network.loadingFailed":
            self.failed.append(f"{params.get('errorText', 'failed')} (request {params.get('requestId')})")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command; its result, or RuntimeError with the protocol's error."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while msg_id not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise RuntimeError(f"no answer to {method}")
                self._cond.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str, *, await_promise: bool = True) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=await_promise)
        if "exceptionDetails" in out:
            d = out["exceptionDetails"]
            raise RuntimeError(d.get("exception", {}).get("description") or d.get("text"))
        return out.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout_s: float = 60.0, interval_s: float = 0.25,
                 what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value, or TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what or expression}")
            time.sleep(interval_s)

    def screenshot(self, path: Path | None = None) -> bytes:
        """A PNG of the page (and written to ``path`` when given)."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        return data

    def close(self) -> None:
        atexit.unregister(self.close)
        self._closed = True
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
