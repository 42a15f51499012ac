"""Configuration: frozen settings (:mod:`.settings`) validated once at start-up (:mod:`.validate`).

Everything else imports from here: ``from dicomnode.config import Settings, load_settings``.
"""

from dicomnode.config.settings import (
    ENV_VAR,
    LOCAL_CONFIG,
    SYSTEM_CONFIG,
    AccessSettings,
    AssemblySettings,
    DatabaseSettings,
    DeliverySettings,
    Destination,
    EligibilitySettings,
    FollowupSettings,
    LoggingSettings,
    NodeSettings,
    PredictionSettings,
    QASettings,
    SegmentationSettings,
    Settings,
    StorageSettings,
    TLSSettings,
    WebSettings,
    WorkerSettings,
    find_config,
    load_settings,
    parse_peer,
    redact_url,
)

__all__ = [
    "ENV_VAR", "LOCAL_CONFIG", "SYSTEM_CONFIG", "AccessSettings", "AssemblySettings",
    "DatabaseSettings", "DeliverySettings", "Destination", "EligibilitySettings", "FollowupSettings",
    "LoggingSettings", "NodeSettings", "PredictionSettings", "QASettings", "SegmentationSettings",
    "Settings", "StorageSettings", "TLSSettings", "WebSettings", "WorkerSettings", "find_config",
    "load_settings",
    "parse_peer", "redact_url",
]
