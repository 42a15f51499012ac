"""``make viewer``: Orthanc, OHIF and the node on loopback, a synthetic haemorrhage study sent
through the node, and the URLs a person opens to see the result. Ctrl-C stops everything."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from dicomnode.lab.synth import make_study

from . import ohif
from .rig import ViewerRig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dicomnode.lab.viewer", description=__doc__)
    p.add_argument("--backend", default="unet", help="segmentation backend of the node (default unet)")
    p.add_argument("--matrix", type=int, default=256, help="phantom matrix (default 256)")
    p.add_argument("--thickness-mm", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--root", type=Path, help="working folder (default: a new temporary one)")
    args = p.parse_args(argv)
    try:
        ohif.fetch()
    except RuntimeError as exc:
        print(f"cannot fetch OHIF: {exc}", file=sys.stderr)
        return 1
    root = args.root or Path(tempfile.mkdtemp(prefix="dicomnode-viewer-"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"working folder {root}; starting Orthanc (DICOMweb), OHIF and the node on 127.0.0.1 ...")
    with ViewerRig(root / "rig", backend=args.backend) as rig:
        study = make_study(root / "study", seed=args.seed, hemorrhage_ml=25.0, site="lobar",
                           matrix=args.matrix, thickness_mm=args.thickness_mm)
        print(f"sending a synthetic haemorrhage study ({study.n_slices} slices, "
              f"ICH {study.ich_volume_ml:.1f} mL) to the node, backend {args.backend} ...")
        acked = rig.send(study.dicom_dir)
        res = rig.wait_results(study.series_instance_uid, acked, timeout_s=900)
        print(f"results delivered to Orthanc by STOW-RS {res.delivered_s:.1f} s after the last "
              "instance was acknowledged. Open in a browser on this machine:\n")
        print(f"  study, SEG loaded:   {rig.viewer_url(res.study_instance_uid, res.seg_series_uid)}")
        print(f"  study, SR loaded:    {rig.viewer_url(res.study_instance_uid, res.sr_series_uid)}")
        print(f"  study list:          {rig.url}/")
        print(f"  Orthanc (REST):      http://127.0.0.1:{rig.orthanc.http_port}/app/explorer.html\n")
        print("Ctrl-C stops Orthanc, OHIF and the node.", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
