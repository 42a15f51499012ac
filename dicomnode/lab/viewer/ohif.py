"""OHIF's prebuilt viewer (npm ``@ohif/app``, pinned): fetched once by ``make ohif``, configured here.

``fetch`` runs ``npm pack`` of the pinned version (about 50 MB), checks the registry's integrity
hash against the one pinned here, and unpacks ``dist/`` (about 204 MB) into ``.ohif/<version>/``
(git-ignored). Nothing is fetched at run time, and the viewer loads nothing from a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.13.2"
PACKAGE = "@ohif/app"
# npm's dist.integrity of @ohif/app@3.13.2 (sha512 of the tarball).
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
REPO = Path(__file__).resolve().parents[3]
ROOT = REPO / ".ohif"


def dist_dir(version: str = VERSION) -> Path:
    """Where ``fetch`` puts the viewer's ``dist/`` (it holds ``index.html`` once fetched)."""
    return ROOT / version / "dist"


def available(version: str = VERSION) -> bool:
    return (dist_dir(version) / "index.html").is_file()


def fetch(version: str = VERSION, integrity: str = INTEGRITY) -> Path:
    """``npm pack`` the pinned viewer and unpack its ``dist/``; a no-op when already there.

    Raises
    ------
    RuntimeError
        npm is missing or fails, or the tarball's hash is not the pinned one.
    """
    target = dist_dir(version)
    if available(version):
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not installed: needed once to fetch OHIF (Debian package npm)")
    with tempfile.TemporaryDirectory(prefix="ohif-") as tmp:
        proc = subprocess.run([npm, "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", tmp],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"npm pack {PACKAGE}@{version} failed: {proc.stderr[-2000:]}")
        (info,) = json.loads(proc.stdout)
        tarball = Path(tmp) / info["filename"]
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != integrity:
            raise RuntimeError(f"{tarball.name}: integrity {digest} is not the pinned {integrity}")
        ROOT.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="dist-", dir=ROOT))
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")
                       and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name.removeprefix("package/")
            tar.extractall(staging, members=members, filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / "dist").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def app_config(*, data_source_name: str = "dicomnode") -> str:
    """``app-config.js`` for one DICOMweb source on the same origin (``/dicom-web``, ``/wado``).

    ``disableConfirmationPrompts`` opens a SEG or SR given as ``initialSeriesInstanceUID``
    without the "open this segmentation?" prompt.
    """
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        # no onboarding tour over the viewport (it waits for clicks)
        "customizationService": {"ohif.tours": {"$set": []}},
        "disableConfirmationPrompts": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": False,
        "maxNumberOfWebWorkers": 2,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": data_source_name,
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": data_source_name,
            "configuration": {
                "friendlyName": "dicomnode rig (Orthanc DICOMweb)",
                "name": data_source_name,
                "qidoRoot": "/dicom-web",
                "wadoRoot": "/dicom-web",
                "wadoUriRoot": "/wado",
                "qidoSupportsIncludeField": False,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "omitQuotationForMultipartRequest": True,
            },
        }],
    }
    # OHIF calls this on every failed image load; without one it throws "handler is not a
    # function" and the cause is lost. The rig's tests read it from the console.
    handler = ("window.config.httpErrorHandler = (error) => console.error("
               "'image load failed:', error && (error.status || error.message || String(error)),"
               " error && error.url ? error.url : '', error && error.stack ? error.stack : '');\n")
    return f"window.config = {json.dumps(config, indent=2)};\n{handler}"


if __name__ == "__main__":  # make ohif
    try:
        print(fetch())
    except RuntimeError as exc:
        sys.exit(str(exc))
