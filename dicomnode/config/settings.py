"""Configuration: one TOML file -> frozen settings, validated once at start-up.

Lookup order: ``--config F``, then ``$DICOMNODE_CONFIG``, then ``./config/dicomnode.toml``, then
``/etc/dicomnode/dicomnode.toml``. Relative paths in the file resolve against the file's folder.
Every problem is reported at once, with the file path (:class:`~dicomnode.errors.ConfigError`).
"""

from __future__ import annotations

import os
import re
import ssl
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
    # This node's name in the cluster; empty: "<hostname>:<port>" (see Settings.node_name).
    name: str = ""


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
    # The folder is shared by several hosts (NFS, CephFS, ...): SQLite is refused.
    shared: bool = False


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
    # Upgrade a database at an older schema revision at start instead of refusing to start.
    auto_upgrade: bool = False

    def __repr__(self) -> str:
        url = redact_url(self.url) if self.url else ""
        return (f"DatabaseSettings(url={url!r}, sqlite_synchronous={self.sqlite_synchronous!r}, "
                f"auto_upgrade={self.auto_upgrade!r})")


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
    excluded_description_regex: str = (
        r"(?i)scout|topogram|locali[sz]er|surview"
        r"|\bdose[ _-]*(report|info|page|summary|record)|patient[ _-]*protocol")
    min_slice_thickness_mm: float = 0.5
    max_slice_thickness_mm: float = 6.0
    min_instances: int = 10
    head_body_parts: tuple[str, ...] = ("HEAD", "BRAIN", "SKULL", "HEADNECK", "CEREBRUM")
    head_description_regex: str = r"(?i)head|brain|cerebr|cran|skull|neuro|kopf|sch[aä]del|ich"
    head_extent_mm: tuple[float, float] = (60.0, 260.0)
    head_fov_mm: tuple[float, float] = (150.0, 320.0)
    bone_kernel_regex: str = r"(?i)bone|lung|sharp|edge|detail|h[6-9]\d|j70|br6|yc|yd|fc3[05]"
    # Non-contrast only (assemble/contrast.py): values that mean "no contrast", and text rules.
    contrast_absent_values: tuple[str, ...] = ("", "NONE", "NO", "N/A", "NA", "NIL", "-", "0",
                                               "NOT APPLICABLE", "NO CONTRAST", "WITHOUT")
    non_contrast_regex: str = (
        r"(?i)\bw/?o\b|\bwithout\b|\bnon[- ]?(contrast|enhanced|con)\b|\bno[ -]contrast\b"
        r"|\bunenhanced\b|\bncct\b|\bnc[ -]ct\b|\bnativ\w*|\bplain\b|\bohne\s*(km|kontrast)"
        r"|\bsans\s*(injection|iode|contraste)|\bsin\s*contraste|\bsenza\s*(mdc|contrasto)"
        r"|\bzonder\s*contrast|\bc-(?![a-z0-9])")
    contrast_description_regex: str = (
        r"(?i)\bcta\b|\bctp\b|\bctv\b|angio|perfusion|\bperf\b|venogra|\bc\+"
        r"|\bw/? ?contrast|\bwith\s+contrast|post[- ]?contrast|contrast[- ]enhanced|\bcontrast\b"
        r"|\bkm\b|kontrast|\bavec\s*injection|\bcon\s*contraste|\bcon\s*mdc|\biod")
    vnc_regex: str = r"(?i)\bvnc\b|virtual[ _-]?non[ _-]?contrast|virtual[ _-]?unenhanced"
    reject_time_resolved: bool = True


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


# Every QA check, by the name it has in result.json (docs/qa.md).
QA_CHECK_NAMES: tuple[str, ...] = (
    "air_hu", "brain_hu", "csf_hu", "skull", "coverage_extent", "coverage_edges", "noise",
    "metal", "age", "slice_thickness",
    "brain_volume", "ich_mean_hu", "ich_hu_fraction", "ivh_mean_hu", "ivh_hu_fraction",
    "hemorrhage_fraction", "outside_brain", "component_count", "abc2_consistency",
    "second_reader_ich", "second_reader_ivh")


@dataclass(frozen=True)
class QASettings:
    """Input and output checks of every analysed series (dicomnode/qa, docs/qa.md)."""

    enabled: bool = True
    # Checks whose failure only warns (results sent, with the warning); the others refuse.
    warn_only: tuple[str, ...] = ("noise", "metal", "slice_thickness", "component_count",
                                  "abc2_consistency", "second_reader_ich", "second_reader_ivh")
    # input: HU calibration, skull, coverage, noise, metal, age, slice thickness
    air_hu: tuple[float, float] = (-1100.0, -900.0)
    min_air_fraction: float = 0.05
    brain_hu: tuple[float, float] = (18.0, 50.0)
    csf_hu: tuple[float, float] = (-20.0, 22.0)
    min_skull_fraction: float = 0.5
    min_brain_extent_mm: float = 80.0
    max_edge_area_fraction: float = 0.5
    max_noise_hu: float = 20.0
    metal_hu: float = 2500.0
    max_metal_ml: float = 0.1
    min_age_y: int = 18
    validated_thickness_mm: tuple[float, float] = (0.5, 5.0)
    # output: brain volume, blood HU, haemorrhage fraction, labels outside, components, ABC/2
    brain_volume_ml: tuple[float, float] = (700.0, 2100.0)
    blood_mean_hu: tuple[float, float] = (40.0, 100.0)
    blood_hu_range: tuple[float, float] = (35.0, 110.0)
    min_blood_hu_fraction: float = 0.5
    min_blood_ml: float = 1.0
    max_hemorrhage_fraction: float = 0.2
    max_outside_fraction: float = 0.1
    max_components: int = 15
    abc2_ratio: tuple[float, float] = (0.25, 4.0)
    min_abc2_ml: float = 5.0
    # second reader: another backend run after the primary one ("none" to switch off)
    second_reader: str = "blast_ct"
    second_reader_ensemble_size: int = 3
    second_reader_on_cpu: bool = False
    second_reader_abs_ml: float = 5.0
    second_reader_rel: float = 0.5


@dataclass(frozen=True)
class PredictionSettings:
    enabled: bool = True
    he_model: Path | None = None
    pse_model: Path | None = None
    clinical_sidecar: Path | None = None


@dataclass(frozen=True)
class FollowupSettings:
    """Follow-up scans: which earlier scans they are compared with and what expansion means."""

    enabled: bool = True
    min_interval_h: float = 1.0  # earlier scans this much older at least ...
    max_interval_h: float = 336.0  # ... and at most (14 days) are priors
    expansion_abs_ml: float = 6.0  # expansion: ICH growth > this (mL) ...
    expansion_rel: float = 0.33  # ... or > this fraction of the prior's ICH volume
    new_ivh_ml: float = 1.0  # new IVH: above this at follow-up, below it before
    min_correlation: float = 0.85  # registration trusted from this brain HU correlation
    wait_s: float = 30.0  # serve: a follow-up whose prior is being analysed is retried after
    # Priors from PACS (serve): "" off; a [[destinations]] name (kind "dimse") or AET@HOST:PORT.
    query_pacs: str = ""
    query_max_studies: int = 20  # C-FIND study matches read at most
    query_max_instances: int = 600  # a larger series is not retrieved
    query_wait_max_s: float = 900.0  # the follow-up waits this long at most for a fetched prior


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

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """The DICOM TLS client context for associations we open to it (C-STORE, C-FIND,
        C-MOVE): the peer's certificate verified against ``tls_ca_certificates`` or the system's
        CAs; None without ``tls``."""
        if not self.tls:
            return None
        cafile = str(self.tls_ca_certificates) if self.tls_ca_certificates else None
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool = True
    poll_interval_s: float = 1.0
    # A claimed job's lease; the worker renews it every renew_s while it works.
    lease_s: float = 60.0
    renew_s: float = 20.0


@dataclass(frozen=True)
class DeliverySettings:
    calling_ae_title: str = "DICOMNODE"
    interval_s: float = 2.0
    retry_base_s: float = 5.0
    retry_max_s: float = 600.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class WebSettings:
    """The operations console (``dicomnode.web``): pages, /metrics, /healthz, /readyz."""

    port: int = 0  # 0: no console
    bind_address: str = "127.0.0.1"
    users_file: Path | None = None
    tls: bool = False  # HTTPS with the node's [tls] certificate and key
    behind_tls_proxy: bool = False
    show_patient_identifiers: bool = False
    worker_stale_s: float = 30.0
    login_attempts: int = 5
    login_window_s: float = 300.0


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
    qa: QASettings = field(default_factory=QASettings)
    followup: FollowupSettings = field(default_factory=FollowupSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    destinations: tuple[Destination, ...] = ()
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    web: WebSettings = field(default_factory=WebSettings)

    @property
    def node_name(self) -> str:
        """This node's name: ``[node] name``, or ``<hostname>:<DICOM port>``."""
        if self.node.name:
            return self.node.name
        import socket

        return f"{socket.gethostname()}:{self.node.port}"

    def query_peer(self) -> Destination | None:
        """The PACS ``[followup] query_pacs`` names (None when off, or when it names nothing)."""
        name = self.followup.query_pacs
        if not name:
            return None
        for d in self.destinations:
            if d.name == name and d.kind == "dimse":
                return d
        try:
            aet, host, port = parse_peer(name)
        except ValueError:
            return None
        return Destination(name=name, ae_title=aet, host=host, port=port)

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
    v.check_web(settings)
    v.check_followup(settings)
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
