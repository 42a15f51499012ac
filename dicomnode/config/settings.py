"""Configuration: one TOML file -> frozen settings, validated once at start-up.

Lookup order: ``--config F``, then ``$DICOMNODE_CONFIG``, then ``./config/dicomnode.toml``, then
``/etc/dicomnode/dicomnode.toml``. Relative paths in the file resolve against the file's folder.
Every problem is reported at once, with the file path (:class:`~dicomnode.errors.ConfigError`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/dicomnode/dicomnode.toml")
LOCAL_CONFIG = Path("config/dicomnode.toml")
ENV_VAR = "DICOMNODE_CONFIG"


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


DESTINATION_KINDS = ("dimse", "dicomweb")


@dataclass(frozen=True)
class Destination:
    """A PACS to send results to (used by the send stage).

    ``kind`` ``"dimse"``: C-STORE to ``ae_title`` at ``host``:``port`` (DICOM TLS with ``tls``).
    ``kind`` ``"dicomweb"``: STOW-RS to ``url`` (the service root, e.g. ``https://pacs/dicom-web``),
    optionally with ``auth`` ``"basic"`` (``username`` and the password in ``secret_file``) or
    ``"bearer"`` (the token in ``secret_file``); the secret is read at each delivery and never
    kept in the settings. ``tls_ca_certificates`` verifies the peer's certificate for both kinds.
    """

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    outputs: tuple[str, ...] = ("seg", "sr", "overlay")
    tls: bool = False
    tls_ca_certificates: Path | None = None
    kind: str = "dimse"
    url: str = ""
    auth: str = ""
    username: str = ""
    secret_file: Path | None = None

    @property
    def address(self) -> str:
        """Where it sends, for logs and messages (never a secret)."""
        return self.url if self.kind == "dicomweb" else f"{self.ae_title}@{self.host}:{self.port}"


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
    from dicomnode.config.validate import Validator  # it needs the classes above

    v = Validator(label, base)
    settings = v.build(raw, found.resolve() if found else None)
    if overrides:
        settings = v.apply_overrides(settings, overrides)
    v.raise_if_problems()
    return settings


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    import ipaddress

    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_peer(text: str) -> tuple[str, str, int]:
    """Parse ``AET@HOST:PORT`` into its parts; raises ValueError with a clear message."""
    m = re.fullmatch(r"(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})", text)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"peer {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    return m["aet"], m["host"].strip("[]"), int(m["port"])
