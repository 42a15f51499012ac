"""A 300-slice 512 x 512 series: time and memory of load_series (slow; `pytest -m slow`)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import GE_DIR
from tests.ct_series import write

N_SLICES = 300

# Runs in a fresh interpreter so that the peak RSS is the load's own (plus imports).
_MEASURE = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import dicomnode.load.volume as v

    def hwm_mb():  # VmHWM is reset by exec (ru_maxrss is inherited from the parent)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    base = hwm_mb()
    paths = sorted(Path(sys.argv[1]).glob("*.dcm"))
    t0 = time.perf_counter()
    vol = v.load_series(paths)
    dt = time.perf_counter() - t0
    peak = hwm_mb()
    print(json.dumps({"s": dt, "peak_mb": peak, "imports_mb": base, "size": vol.image.GetSize(),
                      "resampled": vol.resampled}))
""")


def _series(folder: Path, tilt: bool) -> None:
    """300 GE slices (the real pixels, a little noise each), 0.625 mm apart; sheared if tilt."""
    src = dcmread(GE_DIR / "10.dcm")
    iop = [float(x) for x in src.ImageOrientationPatient] if tilt else [1, 0, 0, 0, 1, 0]
    step = 0.625 / iop[4] if tilt else 0.625  # table step along z; 0.625 mm along the normal
    rng = np.random.default_rng(0)
    series = generate_uid()
    dss = []
    for k in range(N_SLICES):
        ds = copy.deepcopy(src)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [-125.0, -123.54, k * step]
        noisy = src.pixel_array + rng.integers(-5, 6, src.pixel_array.shape)
        ds.PixelData = noisy.astype(np.int16).tobytes()
        dss.append(ds)
    write(dss, folder)


@pytest.mark.slow
@pytest.mark.parametrize("tilt", [False, True], ids=["regular", "tilted"])
def test_300_slice_load(tmp_path: Path, tilt: bool) -> None:
    if not (GE_DIR / "10.dcm").exists() or not Path("/proc/self/status").exists():
        pytest.skip("needs the GE head CT and Linux /proc")
    _series(tmp_path, tilt)
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.strip().splitlines()[-1])
    kind = "tilted" if tilt else "regular"
    print(f"\n300 x 512 x 512 {kind}: {m['s']:.2f} s, peak RSS {m['peak_mb']:.0f} MB "
          f"({m['imports_mb']:.0f} MB after imports), output {m['size']}")
    assert m["resampled"] is tilt
    volume_mb = np.prod(m["size"]) * 4 / 2**20
    assert m["peak_mb"] - m["imports_mb"] < volume_mb + 150  # one volume, no second copy
    assert m["s"] < 30
