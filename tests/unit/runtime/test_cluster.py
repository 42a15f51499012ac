"""Start-up checks for shared storage, node names and per-node temporary folders."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dicomnode.receive.reconcile import node_tmp_name
from dicomnode.runtime.cluster import StorageUnsuitable, check_sharing, filesystem_type, probe_folder
from tests.conftest import make_settings


def test_sqlite_on_a_shared_folder_is_refused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "s", **{"storage.shared": True})
    with pytest.raises(StorageUnsuitable, match="SQLite cannot be shared"):
        check_sharing(settings)


def test_a_shared_folder_with_postgresql_is_probed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "s", **{"storage.shared": True,
                                                 "database.url": "postgresql+psycopg://x@h/db"})
    check_sharing(settings)  # fsync, rename over, locks: all work on a local disk
    assert list((tmp_path / "s").iterdir()) == []  # the probe cleans up


def test_a_probe_failure_names_the_step(tmp_path: Path) -> None:
    missing = tmp_path / "file"
    missing.write_text("not a folder")
    with pytest.raises(StorageUnsuitable, match="cannot write and fsync"):
        probe_folder(missing)


def test_network_file_systems_are_found_in_the_mount_table(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nnas:/export /srv/dicom nfs4 rw 0 0\n")
    assert filesystem_type(Path("/srv/dicom/x"), mounts) == "nfs4"
    assert filesystem_type(Path("/srv/dicomx"), mounts) == "ext4"


def test_the_node_name_defaults_to_host_and_port(tmp_path: Path) -> None:
    assert make_settings(tmp_path, **{"node.port": 11112}).node_name == \
        f"{socket.gethostname()}:11112"
    assert make_settings(tmp_path, **{"node.name": "site-a"}).node_name == "site-a"
    assert node_tmp_name("ct-host:11112/worker") == "ct-host_11112_worker"
