"""Validation of the raw TOML tables into the frozen settings of :mod:`dicomnode.config`.

Every problem is collected (with its dotted key) and raised at once as a ``ConfigError``. The
typed getters are in :mod:`dicomnode.config.fields`, the outbound sections in
:mod:`dicomnode.config.outbound`; the names they define are importable from here as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from dicomnode.config.fields import FieldReader
from dicomnode.config.outbound import DICOMWEB_KEYS, DIMSE_KEYS, OutboundSections
from dicomnode.config.settings import (
    QA_CHECK_NAMES,
    AccessSettings,
    AssemblySettings,
    DatabaseSettings,
    EligibilitySettings,
    LoggingSettings,
    NodeSettings,
    PredictionSettings,
    QASettings,
    SegmentationSettings,
    Settings,
    StorageSettings,
    TLSSettings,
    WorkerSettings,
    redact_url,
)

__all__ = ["DICOMWEB_KEYS", "DIMSE_KEYS", "REPO_ROOT", "FieldReader", "Validator"]

#: The checkout (or install prefix) that holds models/ beside the package: defaults point there.
REPO_ROOT = Path(__file__).resolve().parents[2]


class Validator(OutboundSections):
    """Builds :class:`Settings` from the raw tables, one method per section.

    The typed getters are in :class:`FieldReader`, the outbound sections (destinations,
    delivery, web, follow-up) in :class:`OutboundSections`; every problem is collected.
    """

    # -- sections ------------------------------------------------------------------------
    def build(self, raw: Mapping[str, Any], source: Path | None) -> Settings:
        """Every section of ``raw`` (defaults for those left out), problems in section order."""
        sections = {"node", "access", "tls", "storage", "database", "assembly", "eligibility",
                    "segmentation", "prediction", "logging", "destinations", "delivery",
                    "worker", "qa", "web", "followup"}
        for key in sorted(set(raw) - sections):
            self.problems.append(f"unknown section or key {key!r}")
        d = Settings()
        node = self._node(raw, d.node)
        access = self._access(raw, d.access)
        tls = self._tls(raw)
        storage = self._storage(raw, d.storage)
        database = self._database(raw)
        assembly = self._assembly(raw)
        eligibility = self._eligibility(raw, d.eligibility)
        segmentation = self._segmentation(raw)
        logging_ = self._logging(raw)
        self._check_tls(tls)
        return Settings(source=source, node=node, access=access, tls=tls, storage=storage,
                        database=database, assembly=assembly, eligibility=eligibility,
                        segmentation=segmentation, prediction=self._prediction(raw), qa=self._qa(raw),
                        followup=self._followup(raw), logging=logging_, destinations=self._destinations(raw),
                        delivery=self._delivery(raw), worker=self._worker(raw),
                        web=self._web(raw))

    def _node(self, raw: Mapping[str, Any], d: NodeSettings) -> NodeSettings:
        t = self._table(raw, "node", set(NodeSettings.__dataclass_fields__))
        node = NodeSettings(
            ae_title=self.ae_title(self._str(t, "node", "ae_title", d.ae_title),
                                   "[node] ae_title"),
            bind_address=self._str(t, "node", "bind_address", d.bind_address),
            port=self._int(t, "node", "port", d.port, 0, 65535),
            max_associations=self._int(t, "node", "max_associations", 10, 1, 1000),
            receiver_processes=self._int(t, "node", "receiver_processes", 1, 1, 64),
            acse_timeout_s=self._num(t, "node", "acse_timeout_s", 30.0, 1, 3600),
            dimse_timeout_s=self._num(t, "node", "dimse_timeout_s", 60.0, 1, 3600),
            network_timeout_s=self._num(t, "node", "network_timeout_s", 60.0, 1, 3600),
            maximum_pdu_bytes=self._int(t, "node", "maximum_pdu_bytes", 0, 0, 2**31 - 1),
            name=self._str(t, "node", "name", ""),
        )
        if len(node.name) > 100:
            self.problems.append("[node] name: at most 100 characters")
        return node

    def _access(self, raw: Mapping[str, Any], d: AccessSettings) -> AccessSettings:
        t = self._table(raw, "access", set(AccessSettings.__dataclass_fields__))
        return AccessSettings(
            allowed_calling_aets=tuple(self.ae_title(a, "[access] allowed_calling_aets")
                                       for a in self._strs(t, "access", "allowed_calling_aets",
                                                           ())),
            allowed_networks=self._networks(self._strs(t, "access", "allowed_networks",
                                                       d.allowed_networks)),
            require_called_aet=self._bool(t, "access", "require_called_aet", True),
        )

    def _tls(self, raw: Mapping[str, Any]) -> TLSSettings:
        t = self._table(raw, "tls", set(TLSSettings.__dataclass_fields__))
        return TLSSettings(
            enabled=self._bool(t, "tls", "enabled", False),
            certificate=self._path(t, "tls", "certificate", None),
            private_key=self._path(t, "tls", "private_key", None),
            ca_certificates=self._path(t, "tls", "ca_certificates", None),
            require_client_certificate=self._bool(t, "tls", "require_client_certificate", False),
        )

    def _check_tls(self, tls: TLSSettings) -> None:
        """With TLS enabled, its files must exist (checked after the other sections' problems)."""
        if not tls.enabled:
            return
        for key in ("certificate", "private_key"):
            p = getattr(tls, key)
            if p is None or not p.is_file():
                self.problems.append(f"[tls] {key}: file required when TLS is enabled ({p})")
        if tls.ca_certificates is not None and not tls.ca_certificates.is_file():
            self.problems.append(f"[tls] ca_certificates: file not found "
                                 f"({tls.ca_certificates})")
        if tls.require_client_certificate and tls.ca_certificates is None:
            self.problems.append("[tls] require_client_certificate needs ca_certificates")

    def _storage(self, raw: Mapping[str, Any], d: StorageSettings) -> StorageSettings:
        t = self._table(raw, "storage", set(StorageSettings.__dataclass_fields__))
        storage_path = self._path(t, "storage", "path", None)
        return StorageSettings(
            path=storage_path or self.resolve(d.path, Path.cwd()),
            min_free_disk_mb=self._int(t, "storage", "min_free_disk_mb", 1024, 0, 10**9),
            keep_non_ct=self._bool(t, "storage", "keep_non_ct", False),
            retention_days=self._int(t, "storage", "retention_days", 0, 0, 36500),
            fsync=self._bool(t, "storage", "fsync", True),
            shared=self._bool(t, "storage", "shared", False),
        )

    def _database(self, raw: Mapping[str, Any]) -> DatabaseSettings:
        t = self._table(raw, "database", set(DatabaseSettings.__dataclass_fields__))
        return DatabaseSettings(
            url=self._database_url(self._str(t, "database", "url", "")),
            sqlite_synchronous=self._get(t, "database", "sqlite_synchronous", "FULL",
                                         lambda x: x in ("FULL", "NORMAL", "EXTRA"),
                                         "FULL, NORMAL or EXTRA"),
            auto_upgrade=self._bool(t, "database", "auto_upgrade", False),
        )

    def _assembly(self, raw: Mapping[str, Any]) -> AssemblySettings:
        t = self._table(raw, "assembly", set(AssemblySettings.__dataclass_fields__))
        return AssemblySettings(
            settle_s=self._num(t, "assembly", "settle_s", 10.0, 0, 86400),
            max_wait_incomplete_s=self._num(t, "assembly", "max_wait_incomplete_s", 120.0, 0,
                                            86400 * 7),
            sweep_interval_s=self._num(t, "assembly", "sweep_interval_s", 2.0, 0.05, 3600),
        )

    def _logging(self, raw: Mapping[str, Any]) -> LoggingSettings:
        t = self._table(raw, "logging", {"level"})
        return LoggingSettings(level=self._get(
            t, "logging", "level", "INFO",
            lambda x: x in ("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR"))

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
            contrast_absent_values=self._strs(t, s, "contrast_absent_values",
                                              d.contrast_absent_values),
            non_contrast_regex=self._regex(t, s, "non_contrast_regex", d.non_contrast_regex),
            contrast_description_regex=self._regex(t, s, "contrast_description_regex",
                                                   d.contrast_description_regex),
            vnc_regex=self._regex(t, s, "vnc_regex", d.vnc_regex),
            reject_time_resolved=self._bool(t, s, "reject_time_resolved", True),
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

    def _qa(self, raw: Mapping[str, Any]) -> QASettings:
        t = self._table(raw, "qa", set(QASettings.__dataclass_fields__))
        s, d = "qa", QASettings()
        num = lambda k, lo, hi: self._num(t, s, k, getattr(d, k), lo, hi)  # noqa: E731
        rng = lambda k: self._range(t, s, k, getattr(d, k))  # noqa: E731
        warn_only = self._strs(t, s, "warn_only", d.warn_only)
        for name in warn_only:
            if name not in QA_CHECK_NAMES:
                self.problems.append(f"[qa] warn_only: unknown check {name!r} "
                                     f"(known: {', '.join(QA_CHECK_NAMES)})")
        reader = self._get(t, s, "second_reader", d.second_reader,
                           lambda x: x in ("none", "blast_ct", "unet", "nnunet", "threshold"),
                           "none, blast_ct, unet, nnunet or threshold")
        return QASettings(
            enabled=self._bool(t, s, "enabled", d.enabled), warn_only=warn_only,
            air_hu=rng("air_hu"), min_air_fraction=num("min_air_fraction", 0, 1),
            brain_hu=rng("brain_hu"), csf_hu=rng("csf_hu"),
            min_skull_fraction=num("min_skull_fraction", 0, 1),
            min_brain_extent_mm=num("min_brain_extent_mm", 0, 300),
            max_edge_area_fraction=num("max_edge_area_fraction", 0, 1),
            max_noise_hu=num("max_noise_hu", 0, 1000), metal_hu=num("metal_hu", 500, 40000),
            max_metal_ml=num("max_metal_ml", 0, 1000),
            min_age_y=self._int(t, s, "min_age_y", d.min_age_y, 0, 150),
            validated_thickness_mm=rng("validated_thickness_mm"),
            brain_volume_ml=rng("brain_volume_ml"), blood_mean_hu=rng("blood_mean_hu"),
            blood_hu_range=rng("blood_hu_range"),
            min_blood_hu_fraction=num("min_blood_hu_fraction", 0, 1),
            min_blood_ml=num("min_blood_ml", 0, 1000),
            max_hemorrhage_fraction=num("max_hemorrhage_fraction", 0, 1),
            max_outside_fraction=num("max_outside_fraction", 0, 1),
            max_components=self._int(t, s, "max_components", d.max_components, 1, 100000),
            abc2_ratio=rng("abc2_ratio"), min_abc2_ml=num("min_abc2_ml", 0, 1000),
            second_reader=reader,
            second_reader_ensemble_size=self._int(t, s, "second_reader_ensemble_size",
                                                  d.second_reader_ensemble_size, 1, 12),
            second_reader_on_cpu=self._bool(t, s, "second_reader_on_cpu", d.second_reader_on_cpu),
            second_reader_abs_ml=num("second_reader_abs_ml", 0, 10000),
            second_reader_rel=num("second_reader_rel", 0, 100),
        )

    def _networks(self, values: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for value in values:
            try:
                out.append(str(ipaddress.ip_network(value, strict=False)))
            except ValueError:
                self.problems.append(f"[access] allowed_networks: {value!r} is not an IP network")
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
        worker = WorkerSettings(enabled=self._bool(t, "worker", "enabled", True),
                                poll_interval_s=self._num(t, "worker", "poll_interval_s", 1.0,
                                                          0.05, 60),
                                lease_s=self._num(t, "worker", "lease_s", 60.0, 1, 3600),
                                renew_s=self._num(t, "worker", "renew_s", 20.0, 0.1, 1200))
        if worker.renew_s * 2 > worker.lease_s:
            self.problems.append(f"[worker] renew_s ({worker.renew_s:g}) must be at most half of "
                                 f"lease_s ({worker.lease_s:g}), so one late renewal loses nothing")
        return worker

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
                for d in value:
                    self.check_destination(d, f"--forward {d.address}")
                settings = replace(settings, destinations=settings.destinations + tuple(value))
                continue
            if section == "storage" and key == "path":
                value = self.resolve(value, Path.cwd())
            elif section == "node" and key == "ae_title":
                value = self.ae_title(value, "--ae-title")
            elif section == "node" and key == "port" and not 0 <= int(value) <= 65535:
                self.problems.append(f"--port {value}: expected 0 to 65535")
                continue
            elif section == "web" and key == "port" and not 0 <= int(value) <= 65535:
                self.problems.append(f"--web-port {value}: expected 0 to 65535")
                continue
            elif section == "assembly" and key == "settle_s" and float(value) < 0:
                self.problems.append(f"--settle-s {value}: expected >= 0")
                continue
            settings = replace(settings, **{section: replace(current, **{key: value})})
        return settings
