"""Validation of the raw TOML tables into the frozen settings of :mod:`dicomnode.config`.

Every problem is collected (with its dotted key) and raised at once as a ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from dicomnode.config.settings import (
    AccessSettings,
    AssemblySettings,
    DatabaseSettings,
    DeliverySettings,
    Destination,
    EligibilitySettings,
    LoggingSettings,
    NodeSettings,
    PredictionSettings,
    SegmentationSettings,
    Settings,
    StorageSettings,
    TLSSettings,
    WorkerSettings,
    redact_url,
)
from dicomnode.errors import ConfigError

#: The checkout (or install prefix) that holds models/ beside the package: defaults point there.
REPO_ROOT = Path(__file__).resolve().parents[2]

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no controls


class Validator:
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

    # -- sections ------------------------------------------------------------------------
    def build(self, raw: Mapping[str, Any], source: Path | None) -> Settings:
        sections = {"node", "access", "tls", "storage", "database", "assembly", "eligibility",
                    "segmentation", "prediction", "logging", "destinations", "delivery",
                    "worker"}
        for key in sorted(set(raw) - sections):
            self.problems.append(f"unknown section or key {key!r}")
        d = Settings()
        t = self._table(raw, "node", set(NodeSettings.__dataclass_fields__))
        node = NodeSettings(
            ae_title=self.ae_title(self._str(t, "node", "ae_title", d.node.ae_title),
                                   "[node] ae_title"),
            bind_address=self._str(t, "node", "bind_address", d.node.bind_address),
            port=self._int(t, "node", "port", d.node.port, 0, 65535),
            max_associations=self._int(t, "node", "max_associations", 10, 1, 1000),
            receiver_processes=self._int(t, "node", "receiver_processes", 1, 1, 64),
            acse_timeout_s=self._num(t, "node", "acse_timeout_s", 30.0, 1, 3600),
            dimse_timeout_s=self._num(t, "node", "dimse_timeout_s", 60.0, 1, 3600),
            network_timeout_s=self._num(t, "node", "network_timeout_s", 60.0, 1, 3600),
            maximum_pdu_bytes=self._int(t, "node", "maximum_pdu_bytes", 0, 0, 2**31 - 1),
        )
        t = self._table(raw, "access", set(AccessSettings.__dataclass_fields__))
        access = AccessSettings(
            allowed_calling_aets=tuple(self.ae_title(a, "[access] allowed_calling_aets")
                                       for a in self._strs(t, "access", "allowed_calling_aets",
                                                           ())),
            allowed_networks=self._networks(self._strs(t, "access", "allowed_networks",
                                                       d.access.allowed_networks)),
            require_called_aet=self._bool(t, "access", "require_called_aet", True),
        )
        t = self._table(raw, "tls", set(TLSSettings.__dataclass_fields__))
        tls = TLSSettings(
            enabled=self._bool(t, "tls", "enabled", False),
            certificate=self._path(t, "tls", "certificate", None),
            private_key=self._path(t, "tls", "private_key", None),
            ca_certificates=self._path(t, "tls", "ca_certificates", None),
            require_client_certificate=self._bool(t, "tls", "require_client_certificate", False),
        )
        t = self._table(raw, "storage", set(StorageSettings.__dataclass_fields__))
        storage_path = self._path(t, "storage", "path", None)
        storage = StorageSettings(
            path=storage_path or self.resolve(d.storage.path, Path.cwd()),
            min_free_disk_mb=self._int(t, "storage", "min_free_disk_mb", 1024, 0, 10**9),
            keep_non_ct=self._bool(t, "storage", "keep_non_ct", False),
            retention_days=self._int(t, "storage", "retention_days", 0, 0, 36500),
            fsync=self._bool(t, "storage", "fsync", True),
        )
        t = self._table(raw, "database", set(DatabaseSettings.__dataclass_fields__))
        database = DatabaseSettings(
            url=self._database_url(self._str(t, "database", "url", "")),
            sqlite_synchronous=self._get(t, "database", "sqlite_synchronous", "FULL",
                                         lambda x: x in ("FULL", "NORMAL", "EXTRA"),
                                         "FULL, NORMAL or EXTRA"),
        )
        t = self._table(raw, "assembly", set(AssemblySettings.__dataclass_fields__))
        assembly = AssemblySettings(
            settle_s=self._num(t, "assembly", "settle_s", 10.0, 0, 86400),
            max_wait_incomplete_s=self._num(t, "assembly", "max_wait_incomplete_s", 120.0, 0,
                                            86400 * 7),
            sweep_interval_s=self._num(t, "assembly", "sweep_interval_s", 2.0, 0.05, 3600),
        )
        eligibility = self._eligibility(raw, d.eligibility)
        segmentation = self._segmentation(raw)
        t = self._table(raw, "logging", {"level"})
        logging_ = LoggingSettings(level=self._get(
            t, "logging", "level", "INFO",
            lambda x: x in ("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR"))
        if tls.enabled:
            for key in ("certificate", "private_key"):
                p = getattr(tls, key)
                if p is None or not p.is_file():
                    self.problems.append(f"[tls] {key}: file required when TLS is enabled ({p})")
            if tls.ca_certificates is not None and not tls.ca_certificates.is_file():
                self.problems.append(f"[tls] ca_certificates: file not found "
                                     f"({tls.ca_certificates})")
            if tls.require_client_certificate and tls.ca_certificates is None:
                self.problems.append("[tls] require_client_certificate needs ca_certificates")
        return Settings(source=source, node=node, access=access, tls=tls, storage=storage,
                        database=database, assembly=assembly, eligibility=eligibility,
                        segmentation=segmentation, prediction=self._prediction(raw),
                        logging=logging_, destinations=self._destinations(raw),
                        delivery=self._delivery(raw), worker=self._worker(raw))

    def _database_url(self, url: str) -> str:
        """Check that the URL parses and its driver is installed; never echo the password."""
        if not url:
            return url
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            dialect = make_url(url).get_dialect()
            dialect.import_dbapi()
        except NoSuchModuleError:  # a subclass of ArgumentError: first
            self.problems.append(f"[database] url {redact_url(url)}: unknown database dialect")
        except (ArgumentError, ValueError):
            self.problems.append("[database] url: not a database URL (value not shown: it may "
                                 "hold a password)")
        except ImportError as exc:
            self.problems.append(f"[database] url {redact_url(url)}: database driver "
                                 f"{exc.name!r} not installed (PostgreSQL: pip install "
                                 "'.[postgres]')")
        return url

    def _eligibility(self, raw: Mapping[str, Any], d: EligibilitySettings) -> EligibilitySettings:
        t = self._table(raw, "eligibility", set(EligibilitySettings.__dataclass_fields__))
        s = "eligibility"
        return EligibilitySettings(
            modalities=self._strs(t, s, "modalities", d.modalities),
            image_type_prefix=self._strs(t, s, "image_type_prefix", d.image_type_prefix),
            require_axial_when_present=self._bool(t, s, "require_axial_when_present", True),
            excluded_image_type_values=self._strs(t, s, "excluded_image_type_values",
                                                  d.excluded_image_type_values),
            excluded_description_regex=self._regex(t, s, "excluded_description_regex",
                                                   d.excluded_description_regex),
            min_slice_thickness_mm=self._num(t, s, "min_slice_thickness_mm", 0.5, 0, 100),
            max_slice_thickness_mm=self._num(t, s, "max_slice_thickness_mm", 6.0, 0, 100),
            min_instances=self._int(t, s, "min_instances", 10, 1, 100000),
            head_body_parts=self._strs(t, s, "head_body_parts", d.head_body_parts),
            head_description_regex=self._regex(t, s, "head_description_regex",
                                               d.head_description_regex),
            head_extent_mm=self._range(t, s, "head_extent_mm", d.head_extent_mm),
            head_fov_mm=self._range(t, s, "head_fov_mm", d.head_fov_mm),
            bone_kernel_regex=self._regex(t, s, "bone_kernel_regex", d.bone_kernel_regex),
        )

    def _segmentation(self, raw: Mapping[str, Any]) -> SegmentationSettings:
        t = self._table(raw, "segmentation", set(SegmentationSettings.__dataclass_fields__))
        s = "segmentation"
        d = SegmentationSettings()
        # Keys left out default to the repository's own folders (models/, ../shared/models/).
        repo = REPO_ROOT
        backend = self._get(t, s, "backend", d.backend,
                            lambda x: x in ("unet", "blast_ct", "nnunet", "threshold"),
                            "unet, blast_ct, nnunet or threshold")
        folds = self._get(t, s, "nnunet_folds", list(d.nnunet_folds),
                          lambda x: isinstance(x, list) and all(type(i) is int for i in x),
                          "a list of fold numbers")
        return SegmentationSettings(
            backend=backend,
            unet_model=(self._path(t, s, "unet_model", None)
                        or self.resolve(d.unet_model, repo)),
            unet_mirror=self._bool(t, s, "unet_mirror", False),
            blast_ct_model=(self._path(t, s, "blast_ct_model", None)
                            or self.resolve(d.blast_ct_model, repo)),
            blast_ct_ensemble_size=self._int(t, s, "blast_ct_ensemble_size", 12, 1, 12),
            nnunet_model=self._path(t, s, "nnunet_model", None),
            nnunet_folds=tuple(folds),
            device=self._get(t, s, "device", "auto", lambda x: x in ("auto", "cpu", "cuda"),
                             "auto, cpu or cuda"),
        )

    def _networks(self, values: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for value in values:
            try:
                out.append(str(ipaddress.ip_network(value, strict=False)))
            except ValueError:
                self.problems.append(f"[access] allowed_networks: {value!r} is not an IP network")
        return tuple(out)

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
            for key in ("ae_title", "host", "port"):
                if key not in t:
                    self.problems.append(f"[{s}] {key} is required")
            outputs = self._strs(t, s, "outputs", ("seg", "sr", "overlay"))
            for o in outputs:
                if o not in ("seg", "sr", "overlay"):
                    self.problems.append(f"[{s}] outputs: unknown output {o!r}")
            out.append(Destination(
                name=self._str(t, s, "name", f"destination-{i + 1}"),
                ae_title=self.ae_title(self._str(t, s, "ae_title", "ANY-SCP"), f"[{s}] ae_title"),
                host=self._str(t, s, "host", "127.0.0.1"),
                port=self._int(t, s, "port", 104, 1, 65535),
                outputs=outputs, tls=self._bool(t, s, "tls", False),
                tls_ca_certificates=self._path(t, s, "tls_ca_certificates", None)))
        names = [d.name for d in out]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.problems.append(f"[[destinations]] name {name!r} is used twice")
        return tuple(out)

    def _prediction(self, raw: Mapping[str, Any]) -> PredictionSettings:
        t = self._table(raw, "prediction", set(PredictionSettings.__dataclass_fields__))
        s = "prediction"
        repo = REPO_ROOT
        # Keys left out: the reference models shipped in models/, when present.
        defaults = {"he_model": ("he-hybrid-kbest-svm", "he-multitask-he"),
                    "pse_model": ("pse-psenet",)}
        paths: dict[str, Path | None] = {}
        for key, names in defaults.items():
            if key in t:
                paths[key] = self._path(t, s, key, None)
            else:
                found = [repo / "models" / n for n in names
                         if (repo / "models" / n / "model.json").is_file()]
                paths[key] = found[0] if found else None
        for key, p in paths.items():
            if p is not None and not (p / "model.json").is_file():
                self.problems.append(f"[prediction] {key}: no model.json in {p}")
        sidecar = self._path(t, s, "clinical_sidecar", None)
        if sidecar is not None and not sidecar.is_file():
            self.problems.append(f"[prediction] clinical_sidecar: file not found ({sidecar})")
        return PredictionSettings(enabled=self._bool(t, s, "enabled", True),
                                  he_model=paths["he_model"], pse_model=paths["pse_model"],
                                  clinical_sidecar=sidecar)

    def _worker(self, raw: Mapping[str, Any]) -> WorkerSettings:
        t = self._table(raw, "worker", set(WorkerSettings.__dataclass_fields__))
        return WorkerSettings(enabled=self._bool(t, "worker", "enabled", True),
                              poll_interval_s=self._num(t, "worker", "poll_interval_s", 1.0,
                                                        0.05, 60))

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

    # -- command-line overrides ----------------------------------------------------------
    def apply_overrides(self, settings: Settings, overrides: Mapping[str, Any]) -> Settings:
        """Apply ``section.key`` overrides (from CLI flags) to frozen settings."""
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, key = dotted.split(".", 1)
            current = getattr(settings, section)
            if section != "destinations" and key not in current.__dataclass_fields__:
                self.problems.append(f"override {dotted}: unknown key")
                continue
            if section == "destinations":
                settings = replace(settings, destinations=settings.destinations + tuple(value))
                continue
            if section == "storage" and key == "path":
                value = self.resolve(value, Path.cwd())
            elif section == "node" and key == "ae_title":
                value = self.ae_title(value, "--ae-title")
            elif section == "node" and key == "port" and not 0 <= int(value) <= 65535:
                self.problems.append(f"--port {value}: expected 0 to 65535")
                continue
            elif section == "assembly" and key == "settle_s" and float(value) < 0:
                self.problems.append(f"--settle-s {value}: expected >= 0")
                continue
            settings = replace(settings, **{section: replace(current, **{key: value})})
        return settings
