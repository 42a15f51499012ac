"""Validation of the outbound sections: [[destinations]], [delivery], [web] and [followup].

Part of :class:`dicomnode.config.validate.Validator` (a base class of it); problems are
collected as in :class:`dicomnode.config.fields.FieldReader`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from dicomnode.config.fields import FieldReader
from dicomnode.config.settings import (
    DESTINATION_KINDS,
    DeliverySettings,
    Destination,
    FollowupSettings,
    Settings,
    WebSettings,
    is_loopback_host,
)

DIMSE_KEYS = {"ae_title", "host", "port", "tls"}
DICOMWEB_KEYS = {"url", "auth", "username", "secret_file"}


class OutboundSections(FieldReader):
    """Destinations, delivery, web console and follow-up settings, and their cross-checks."""

    def _destinations(self, raw: Mapping[str, Any]) -> tuple[Destination, ...]:
        items = raw.get("destinations", [])
        if not isinstance(items, list):
            self.problems.append("[[destinations]] must be an array of tables")
            return ()
        out = []
        for i, t in enumerate(items):
            s = f"destinations[{i}]"
            if not isinstance(t, dict):
                self.problems.append(f"[{s}] must be a table")
                continue
            for key in sorted(set(t) - set(Destination.__dataclass_fields__)):
                self.problems.append(f"[{s}] unknown key {key!r}")
            kind = self._str(t, s, "kind", "dimse")
            own = DIMSE_KEYS if kind == "dicomweb" else DICOMWEB_KEYS
            for key in sorted(own & set(t)):
                self.problems.append(f"[{s}] {key} does not apply to kind = {kind!r}")
            for key in ("ae_title", "host", "port") if kind == "dimse" else ("url",):
                if key not in t:
                    self.problems.append(f"[{s}] {key} is required")
            outputs = self._strs(t, s, "outputs", ("seg", "sr", "overlay"))
            for o in outputs:
                if o not in ("seg", "sr", "overlay"):
                    self.problems.append(f"[{s}] outputs: unknown output {o!r}")
            dest = Destination(
                name=self._str(t, s, "name", f"destination-{i + 1}"), kind=kind,
                ae_title=self._str(t, s, "ae_title", "ANY-SCP" if kind == "dimse" else ""),
                host=self._str(t, s, "host", "127.0.0.1" if kind == "dimse" else ""),
                port=self._int(t, s, "port", 104 if kind == "dimse" else 0, 1, 65535),
                outputs=outputs, tls=self._bool(t, s, "tls", False),
                tls_ca_certificates=self._path(t, s, "tls_ca_certificates", None),
                url=self._str(t, s, "url", ""), auth=self._str(t, s, "auth", ""),
                username=self._str(t, s, "username", ""),
                secret_file=self._path(t, s, "secret_file", None))
            out.append(self.check_destination(dest, f"[{s}]"))
        names = [d.name for d in out]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.problems.append(f"[[destinations]] name {name!r} is used twice")
        return tuple(out)

    def check_destination(self, d: Destination, where: str) -> Destination:
        """Problems of one destination (kind, AE title, DICOMweb URL and authentication)."""
        if d.kind not in DESTINATION_KINDS:
            self.problems.append(f"{where} kind = {d.kind!r}: expected one of {', '.join(DESTINATION_KINDS)}")
            return d
        if d.tls_ca_certificates is not None and not d.tls_ca_certificates.is_file():
            self.problems.append(f"{where} tls_ca_certificates: {d.tls_ca_certificates} is not a file")
        if d.kind == "dimse":
            self.ae_title(d.ae_title, f"{where} ae_title")
            return d
        url = urlsplit(d.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            self.problems.append(f"{where} url = {d.url!r}: expected http(s)://host[:port]/path")
            return d
        if url.username or url.password or url.query or url.fragment:
            self.problems.append(f"{where} url: no credentials, query or fragment in the URL "
                                 "(put a secret in secret_file)")
        if d.auth not in ("", "basic", "bearer"):
            self.problems.append(f"{where} auth = {d.auth!r}: expected \"basic\", \"bearer\" or none")
        if d.auth == "basic" and not d.username:
            self.problems.append(f"{where} auth = \"basic\" needs a username")
        if d.auth and (d.secret_file is None or not d.secret_file.is_file()):
            self.problems.append(f"{where} auth = {d.auth!r} needs secret_file, a readable file "
                                 f"(got {d.secret_file})")
        if not d.auth and (d.secret_file or d.username):
            self.problems.append(f"{where} username and secret_file need auth = \"basic\" or \"bearer\"")
        if d.auth and url.scheme == "http" and not is_loopback_host(url.hostname):
            self.problems.append(f"{where} url: a secret is never sent over plain http except to "
                                 "loopback; use https")
        return d

    def _followup(self, raw: Mapping[str, Any]) -> FollowupSettings:
        t = self._table(raw, "followup", set(FollowupSettings.__dataclass_fields__))
        s, d = "followup", FollowupSettings()
        f = FollowupSettings(
            enabled=self._bool(t, s, "enabled", d.enabled),
            min_interval_h=self._num(t, s, "min_interval_h", d.min_interval_h, 0.0, 24 * 365),
            max_interval_h=self._num(t, s, "max_interval_h", d.max_interval_h, 0.0, 24 * 365),
            expansion_abs_ml=self._num(t, s, "expansion_abs_ml", d.expansion_abs_ml, 0.0, 1000.0),
            expansion_rel=self._num(t, s, "expansion_rel", d.expansion_rel, 0.0, 10.0),
            new_ivh_ml=self._num(t, s, "new_ivh_ml", d.new_ivh_ml, 0.0, 100.0),
            min_correlation=self._num(t, s, "min_correlation", d.min_correlation, -1.0, 1.0),
            wait_s=self._num(t, s, "wait_s", d.wait_s, 0.1, 3600.0),
            query_pacs=self._str(t, s, "query_pacs", d.query_pacs),
            query_max_studies=self._int(t, s, "query_max_studies", d.query_max_studies, 1, 1000),
            query_max_instances=self._int(t, s, "query_max_instances", d.query_max_instances,
                                          1, 100_000),
            query_wait_max_s=self._num(t, s, "query_wait_max_s", d.query_wait_max_s, 1.0, 86400))
        if f.min_interval_h >= f.max_interval_h:
            self.problems.append(f"[followup] min_interval_h ({f.min_interval_h:g}) must be "
                                 f"below max_interval_h ({f.max_interval_h:g})")
        return f

    def _web(self, raw: Mapping[str, Any]) -> WebSettings:
        t = self._table(raw, "web", set(WebSettings.__dataclass_fields__))
        s = "web"
        return WebSettings(
            port=self._int(t, s, "port", 0, 0, 65535),
            bind_address=self._str(t, s, "bind_address", "127.0.0.1"),
            users_file=self._path(t, s, "users_file", None),
            tls=self._bool(t, s, "tls", False),
            behind_tls_proxy=self._bool(t, s, "behind_tls_proxy", False),
            show_patient_identifiers=self._bool(t, s, "show_patient_identifiers", False),
            worker_stale_s=self._num(t, s, "worker_stale_s", 30.0, 1, 86400),
            login_attempts=self._int(t, s, "login_attempts", 5, 1, 1000),
            login_window_s=self._num(t, s, "login_window_s", 300.0, 1, 86400))

    def check_web(self, settings: Settings) -> None:
        """Off loopback the console needs users and TLS (its own or a proxy's)."""
        web = settings.web
        if web.port == 0:
            return
        try:
            loopback = ipaddress.ip_address(web.bind_address).is_loopback
        except ValueError:
            loopback = web.bind_address == "localhost"
        if web.users_file is not None and not web.users_file.is_file():
            self.problems.append(f"[web] users_file: file not found ({web.users_file})")
        if web.tls:
            for key in ("certificate", "private_key"):
                p = getattr(settings.tls, key)
                if p is None or not p.is_file():
                    self.problems.append(f"[web] tls = true needs the file [tls] {key} ({p})")
        if not loopback:
            where = f"[web] bind_address = {web.bind_address!r}"
            if web.users_file is None:
                self.problems.append(f"{where} is not loopback: users_file is required "
                                     "(logins)")
            if not (web.tls or web.behind_tls_proxy):
                self.problems.append(f"{where} is not loopback: set tls = true (the node's "
                                     "certificate) or behind_tls_proxy = true")

    def check_followup(self, settings: Settings) -> None:
        """``[followup] query_pacs`` names a DIMSE destination or is AET@HOST:PORT."""
        name = settings.followup.query_pacs
        if name and settings.query_peer() is None:
            self.problems.append(f"[followup] query_pacs = {name!r}: expected the name of a "
                                 "[[destinations]] entry of kind \"dimse\" or AET@HOST:PORT")

    def _delivery(self, raw: Mapping[str, Any]) -> DeliverySettings:
        t = self._table(raw, "delivery", set(DeliverySettings.__dataclass_fields__))
        s = "delivery"
        return DeliverySettings(
            calling_ae_title=self.ae_title(self._str(t, s, "calling_ae_title", "DICOMNODE"),
                                           "[delivery] calling_ae_title"),
            interval_s=self._num(t, s, "interval_s", 2.0, 0.1, 3600),
            retry_base_s=self._num(t, s, "retry_base_s", 5.0, 0.1, 3600),
            retry_max_s=self._num(t, s, "retry_max_s", 600.0, 1, 86400),
            timeout_s=self._num(t, s, "timeout_s", 30.0, 1, 3600))

