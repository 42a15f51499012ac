"""What the serve -> Orthanc end-to-end tests share: the node's configuration with Orthanc as its
one destination, and DCMTK storescu as the sending modality."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dicomnode.lab.orthanc import Orthanc

T = TypeVar("T")


def node_config(tmp_path: Path, pacs: Orthanc, *, db_url: str = "", predict: bool = True,
                extra: str = "") -> Path:
    """A node.toml for quick end-to-end runs: threshold backend, fast sweeps and retries,
    ``extra`` TOML sections, and ``pacs`` as the destination named "orthanc"."""
    config = tmp_path / "node.toml"
    config.write_text(
        (f'[database]\nurl = "{db_url}"\n' if db_url else "")
        + "[segmentation]\nbackend = \"threshold\"\n"
        + ("" if predict else "[prediction]\nenabled = false\n")
        + "[assembly]\nsweep_interval_s = 0.3\n"
        "[delivery]\ninterval_s = 0.5\nretry_base_s = 0.5\nretry_max_s = 2\n"
        "[storage]\nmin_free_disk_mb = 0\n"
        + extra
        + f"[[destinations]]\nname = \"orthanc\"\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\n"
        f"port = {pacs.dicom_port}\n")
    return config


def storescu(folder: Path, port: int) -> None:
    """Send every .dcm under ``folder`` to the node on loopback (TCP_NODELAY: no Nagle delay)."""
    subprocess.run(["storescu", "-R", "+sd", "+sp", "*.dcm", "-aec", "DICOMNODE", "127.0.0.1",
                    str(port), f"{folder}/"], env={**os.environ, "TCP_NODELAY": "1"},
                   check=True, capture_output=True, timeout=120)


def wait_for(pred: Callable[[], T | None], timeout_s: float = 180, what: str = "condition") -> T:
    """``pred()``'s first truthy value, polled every 0.5 s; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
