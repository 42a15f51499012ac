"""``dicomnode demo``: the whole product in one command, on loopback.

Starts the node (with its worker) on temporary storage, a loopback PACS (Orthanc when installed,
else a small built-in storage SCP), sends a synthetic haemorrhage study, waits for the SEG, SR
and overlays to arrive in the PACS, prints the numbers and writes the PNG previews.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dicomnode.config import Destination, Settings
from dicomnode.lab.orthanc import Orthanc, free_port
from dicomnode.storage import results_dir


class BuiltinPacs:
    """A minimal pynetdicom storage SCP that keeps what it receives (when Orthanc is absent)."""

    AE_TITLE = "DEMOPACS"

    def __init__(self, folder: Path) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        ae = AE(ae_title=self.AE_TITLE)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:  # always set in pynetdicom's list; typed Optional
                ae.add_supported_context(cx.abstract_syntax)
        self.server = ae.start_server(("127.0.0.1", self.dicom_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        path = self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
        path.write_bytes(event.encoded_dataset())
        return 0

    def count(self) -> int:
        return len(list(self.folder.glob("*.dcm")))

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def run_demo(settings: Settings, out: Path, *, matrix: int = 256, timeout_s: float = 600,
             work: Path | None = None) -> int:
    """Run the loop once; 0 when the result was delivered. ``work``: where node storage, the
    PACS and the study go (default: a new temporary folder, kept for inspection)."""
    from rich.console import Console
    from rich.table import Table

    from dicomnode.db.queries import series_status
    from dicomnode.lab.synth import make_study
    from dicomnode.runtime.service import Node
    from dicomnode.send.scu import iter_files, send_files

    console = Console()
    work = work or Path(tempfile.mkdtemp(prefix="dicomnode-demo-"))
    pacs: Any
    if shutil.which("Orthanc"):
        pacs = Orthanc(work / "orthanc").start()
        ae_title, name = Orthanc.AE_TITLE, "Orthanc"
    else:
        pacs = BuiltinPacs(work / "pacs")
        ae_title, name = BuiltinPacs.AE_TITLE, "built-in storage SCP"
    dest = Destination(name="demo-pacs", ae_title=ae_title, host="127.0.0.1",
                       port=pacs.dicom_port)
    settings = replace(settings, destinations=(dest,),
                       storage=replace(settings.storage, path=work / "storage",
                                       min_free_disk_mb=0),
                       node=replace(settings.node, port=0, receiver_processes=1),
                       assembly=replace(settings.assembly, settle_s=2.0, sweep_interval_s=0.5),
                       delivery=replace(settings.delivery, interval_s=0.5))
    node = Node(settings, start_worker=True).start()
    try:
        console.print(f"node listening on port {node.port}; PACS: {name} on port "
                      f"{pacs.dicom_port}")
        truth = make_study(work / "study", seed=7, hemorrhage_ml=30.0, site="lobar", ivh=True,
                           matrix=matrix)
        console.print(f"synthetic study: {truth.n_slices} slices, true ICH "
                      f"{truth.ich_volume_ml:.1f} mL, IVH {truth.ivh_volume_ml:.1f} mL")
        report = send_files(list(iter_files([truth.dicom_dir])), "DICOMNODE", "127.0.0.1",
                            node.port)
        console.print(f"sent {report.sent} instances; waiting for results ...")
        deadline = time.monotonic() + timeout_s
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            rows = series_status(node.sessions)
            row = rows[0] if rows else {}
            delivery = row.get("delivery") or {}
            if row.get("state") in ("failed", "not_analysed") or (row.get("state") == "done" and delivery
                                                 and not delivery.get("pending")):
                break
            time.sleep(1.0)
        if row.get("state") != "done":
            console.print(f"[red]no result: {row.get('state')} {row.get('reason')}")
            return 1
        results = results_dir(settings.storage.path, row["series_instance_uid"], 1)
        record = json.loads((results / "result.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        for png in (results / "previews").glob("*.png"):
            shutil.copy(png, out / png.name)
        table = Table(title="dicomnode demo: result")
        table.add_column("quantity")
        table.add_column("measured")
        table.add_column("truth (phantom)")
        table.add_row("ICH volume (mL)", f"{record['ich_volume_ml']:.1f}",
                      f"{truth.ich_volume_ml:.1f}")
        table.add_row("IVH volume (mL)", f"{record['ivh_volume_ml']:.1f}",
                      f"{truth.ivh_volume_ml:.1f}")
        table.add_row("ABC/2 (mL)", f"{record['abc2_volume_ml']:.1f}", "")
        table.add_row("site", record["site"], truth.site)
        table.add_row("cortical involvement", str(record["cortical_involvement"]),
                      str(truth.cortical_involvement))
        table.add_row("model", f"{record['model']} {record['model_version']} "
                      f"({record['backend']})", "")
        table.add_row("delivered to PACS", json.dumps(row.get("delivery")), "")
        table.add_row("timings (s)", json.dumps(record["timings_s"]), "")
        console.print(table)
        console.print(f"PNG previews written to {out}/; working files in {work}")
        return 0
    finally:
        node.stop()
        pacs.stop()
