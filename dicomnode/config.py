"""Configuration: one TOML file -> frozen settings, validated once at start-up.

Lookup order: ``--config F``, then ``$DICOMNODE_CONFIG``, then ``./config/dicomnode.toml``, then
``/etc/dicomnode/dicomnode.toml``. Relative paths in the file resolve against the file's folder.
Every problem is reported at once, with the file path (:class:`~dicomnode.errors.ConfigError`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/dicomnode/dicomnode.toml")
LOCAL_CONFIG = Path("config/dicomnode.toml")
ENV_VAR = "DICOMNODE_CONFIG"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no controls


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "DICOMNODE"
    bind_address: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 10
    receiver_processes: int = 1
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    maximum_pdu_bytes: int = 0


@dataclass(frozen=True)
class AccessSettings:
    allowed_calling_aets: tuple[str, ...] = ()
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    require_called_aet: bool = True


@dataclass(frozen=True)
class TLSSettings:
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


@dataclass(frozen=True)
class StorageSettings:
    path: Path = Path("var/dicomnode")
    min_free_disk_mb: int = 1024
    keep_non_ct: bool = False
    retention_days: int = 0
    fsync: bool = True


def redact_url(url: str) -> str:
    """The database URL with its password replaced by ``***``, for logs and messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<not a database URL>"


@dataclass(frozen=True)
class DatabaseSettings:
    # Excluded from repr: a PostgreSQL URL carries the password (see __repr__).
    url: str = field(default="", repr=False)
    sqlite_synchronous: str = "FULL"

    def __repr__(self) -> str:
        url = redact_url(self.url) if self.url else ""
        return f"DatabaseSettings(url={url!r}, sqlite_synchronous={self.sqlite_synchronous!r})"


@dataclass(frozen=True)
class AssemblySettings:
    settle_s: float = 10.0
    max_wait_incomplete_s: float = 120.0
    sweep_interval_s: float = 2.0


@dataclass(frozen=True)
class EligibilitySettings:
    modalities: tuple[str, ...] = ("CT",)
    image_type_prefix: tuple[str, ...] = ("ORIGINAL", "PRIMARY")
    require_axial_when_present: bool = True
    excluded_image_type_values: tuple[str, ...] = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCREEN SAVE")
    excluded_description_regex: str = r"(?i)scout|topogram|locali[sz]er|surview|dose"
    min_slice_thickness_mm: float = 0.5
    max_slice_thickness_mm: float = 6.0
    min_instances: int = 10
    head_body_parts: tuple[str, ...] = ("HEAD", "BRAIN", "SKULL", "HEADNECK", "CEREBRUM")
    head_description_regex: str = r"(?i)head|brain|cerebr|cran|skull|neuro|kopf|sch[aä]del|ich"
    head_extent_mm: tuple[float, float] = (60.0, 260.0)
    head_fov_mm: tuple[float, float] = (150.0, 320.0)
    bone_kernel_regex: str = r"(?i)bone|lung|sharp|edge|detail|h[6-9]\d|j70|br6|yc|yd|fc3[05]"


@dataclass(frozen=True)
class SegmentationSettings:
    backend: str = "unet"
    unet_model: Path = Path("models/ich-unet-synth")
    unet_mirror: bool = False
    blast_ct_model: Path = Path("../shared/models/blast-ct-v1")
    blast_ct_ensemble_size: int = 12
    nnunet_model: Path | None = None
    nnunet_folds: tuple[int, ...] = (0,)
    device: str = "auto"


@dataclass(frozen=True)
class PredictionSettings:
    enabled: bool = True
    he_model: Path | None = None
    pse_model: Path | None = None
    clinical_sidecar: Path | None = None


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"


@dataclass(frozen=True)
class Destination:
    """A PACS to send results to (used by the send stage)."""

    name: str
    ae_title: str
    host: str
    port: int
    outputs: tuple[str, ...] = ("seg", "sr", "overlay")
    tls: bool = False
    tls_ca_certificates: Path | None = None


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool = True
    poll_interval_s: float = 1.0


@dataclass(frozen=True)
class DeliverySettings:
    calling_ae_title: str = "DICOMNODE"
    interval_s: float = 2.0
    retry_base_s: float = 5.0
    retry_max_s: float = 600.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Settings:
    source: Path | None = None
    node: NodeSettings = field(default_factory=NodeSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    assembly: AssemblySettings = field(default_factory=AssemblySettings)
    eligibility: EligibilitySettings = field(default_factory=EligibilitySettings)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    prediction: PredictionSettings = field(default_factory=PredictionSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    destinations: tuple[Destination, ...] = ()
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)

    @property
    def database_url(self) -> str:
        """The configured URL, or SQLite under the storage folder."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.storage.path / 'dicomnode.db'}"


def find_config(explicit: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Path | None:
    """Return the first config file in the lookup order, or None to use embedded defaults."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    for candidate in (LOCAL_CONFIG, SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_settings(path: str | os.PathLike[str] | None = None, *,
                  overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and freeze the configuration.

    Parameters
    ----------
    path
        Explicit file (``--config``); otherwise the lookup order applies.
    overrides
        Dotted keys from the command line, e.g. ``{"node.port": 0, "storage.path": "/tmp/x"}``;
        they are validated like file values, relative paths resolve against the working folder.
    """
    found = find_config(path, environ)
    raw: dict[str, Any] = {}
    label = "<embedded defaults>"
    base = Path.cwd()
    if found is not None:
        label = str(found)
        if not found.is_file():
            raise ConfigError(label, ["file not found"])
        try:
            raw = tomllib.loads(found.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(label, [f"not valid TOML: {exc}"]) from exc
        base = found.resolve().parent
    v = _Validator(label, base)
    settings = v.build(raw, found.resolve() if found else None)
    if overrides:
        settings = v.apply_overrides(settings, overrides)
    v.raise_if_problems()
    return settings


class _Validator:
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
        repo = Path(__file__).resolve().parents[1]
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
        repo = Path(__file__).resolve().parents[1]
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


def parse_peer(text: str) -> tuple[str, str, int]:
    """Parse ``AET@HOST:PORT`` into its parts; raises ValueError with a clear message."""
    m = re.fullmatch(r"(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})", text)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"peer {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    return m["aet"], m["host"].strip("[]"), int(m["port"])
