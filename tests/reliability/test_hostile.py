"""Hostile input over real loopback associations: every case gets its recorded outcome.

The corpus (``hostile_corpus.py``) is sent case by case to one running node. After each case we
check its C-STORE statuses and receive-error rows; after dangerous cases, that a good instance is
still accepted; after the whole corpus, one sweep judges every series, the load stage reads the
ones expected to fail there, and a good series must still come out queued. Nothing may be written
outside the storage root. The corpus runs on SQLite and on PostgreSQL (``db_url``): hostile
strings reach text columns, and PostgreSQL refuses some that SQLite stores (NUL characters).
The QA cases (contrast, perfusion-like, partial, zeroed, noisy, offset, child, metal) are sent over
DICOM to a node and run through the worker's own code (``process_series``): each must end
rejected, not analysed or warned with its reason.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import AE, _config
from sqlalchemy import func, select

from dicomnode.assemble.series import sweep
from dicomnode.db.models import Instance, ReceiveError, Series, utcnow
from dicomnode.errors import VolumeError
from dicomnode.jobs.queue import claim_next
from dicomnode.load.volume import load_series
from dicomnode.pipeline import make_context, process_series
from dicomnode.runtime.service import Node
from dicomnode.storage import results_dir
from tests.conftest import make_settings, requires
from tests.ct_series import make_series
from tests.reliability.conftest import PROFILE, record, scenario
from tests.reliability.hostile_corpus import (
    CASES,
    CT,
    DOSE_SR,
    MR,
    QA_CASES,
    RAW_DATA,
    SECONDARY_CAPTURE,
    Case,
    Payload,
    plain_phantom,
)

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian, JPEG2000Lossless]
STORE_TIMEOUT_S = 60.0  # a single C-STORE of the corpus must be answered within this
MEMORY_BOUND_MB = 400.0  # growth of this process's peak RSS across the whole corpus
UID_PATH_PART = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # what every stored path part must be


def sender() -> AE:
    """A client proposing every class and syntax the corpus uses, one syntax per context."""
    ae = AE(ae_title="HOSTILE")
    ae.dimse_timeout = ae.network_timeout = STORE_TIMEOUT_S
    for syntax in SYNTAXES:
        ae.add_requested_context(CT, [syntax])
    for sop_class in (MR, DOSE_SR, RAW_DATA, SECONDARY_CAPTURE):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    return ae


def send(node: Node, payloads: list[Payload]) -> list[int]:
    """Send on one association; -1 for a request that got no response."""
    assoc = sender().associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established, "the node refused an association"
    out = []
    try:
        for p in payloads:
            if not assoc.is_established:
                out.append(-2)  # the node aborted the association
                continue
            rsp = assoc.send_c_store(p)
            out.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def good_instance_accepted(node: Node, template: Dataset) -> bool:
    return send(node, make_series(template, 1)) == [0]


@pytest.fixture
def raw_sending():
    """Send Path payloads byte for byte (pynetdicom would otherwise decode and re-encode)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = before


def _series_uid(payloads: list[Payload]) -> str | None:
    for p in payloads:
        if isinstance(p, Dataset) and str(p.get("SOPClassUID")) == CT:
            return str(p.SeriesInstanceUID)
    return None


def _errors(node: Node) -> list[ReceiveError]:
    with node.sessions() as s:
        return list(s.scalars(select(ReceiveError).order_by(ReceiveError.id)))


def _run_case(node: Node, case: Case, template: Dataset,
              work: Path) -> tuple[list[str], list[Payload]]:
    """Send one case; return what differs from its expected outcome, and what was sent."""
    payloads = case.build(template, work)
    errors_before = len(_errors(node))
    t0 = time.monotonic()
    statuses = send(node, payloads)
    elapsed = time.monotonic() - t0
    problems = []
    expected = list(case.statuses) or [case.status] * len(payloads)
    if statuses != expected:
        problems.append(f"statuses {[hex(s) for s in statuses]}, expected "
                        f"{[hex(s) for s in expected]}")
    new_errors = _errors(node)[errors_before:]
    if case.outcome == "refused":
        if len(new_errors) != len(payloads):
            problems.append(f"{len(new_errors)} receive-error rows for {len(payloads)} refusals")
        for e in new_errors:
            if case.reason.lower() not in e.reason.lower():
                problems.append(f"reason {e.reason!r} lacks {case.reason!r}")
    elif new_errors:
        problems.append(f"unexpected receive errors: {[e.reason for e in new_errors]}")
    if elapsed > STORE_TIMEOUT_S:
        problems.append(f"took {elapsed:.1f} s")
    # The full profile checks after every case, the CI profile after the dangerous ones.
    if (case.dangerous or PROFILE == "full") and not good_instance_accepted(node, template):
        problems.append("node stopped accepting a good instance")
    return problems, payloads


def _judge_series(node: Node, pending: dict[str, tuple[Case, str]]) -> dict[str, list[str]]:
    """Complete every series at once; check states, reasons and load-stage refusals."""
    sweep(node.sessions, node.settings.assembly, node.settings.eligibility,
          now=utcnow() + timedelta(hours=2))
    problems: dict[str, list[str]] = {}
    root = node.settings.storage.path
    with node.sessions() as s:
        for name, (case, uid) in pending.items():
            series = s.scalar(select(Series).where(Series.series_instance_uid == uid))
            found = []
            if series is None:
                problems[name] = ["series not recorded"]
                continue
            want_state = {"rejected": "rejected", "load": "queued", "queued": "queued"}
            if case.outcome in want_state and series.state != want_state[case.outcome]:
                found.append(f"series {series.state}: {series.reason!r}")
            if case.outcome == "rejected" and case.reason.lower() not in series.reason.lower():
                found.append(f"rejection reason {series.reason!r} lacks {case.reason!r}")
            if case.outcome == "load":
                paths = [root / p for p in s.scalars(select(Instance.path).where(
                    Instance.series_id == series.id))]
                try:
                    load_series(paths)
                    found.append("load accepted it")
                except VolumeError as exc:
                    if case.reason not in str(exc):
                        found.append(f"load refused with {exc}")
            if found:
                problems[name] = found
    return problems


def _outside_root(tmp_path: Path, root: Path, corpus: Path) -> list[Path]:
    """Files under tmp_path in neither the storage root, the corpus folder nor the SQLite
    database of ``db_url`` (``tmp_path/db.sqlite`` and its journal files)."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(root)
            and not p.is_relative_to(corpus) and not p.name.startswith("db.sqlite")]


def test_hostile_corpus(tmp_path: Path, ct_template: Dataset, raw_sending: None,
                        db_url: str) -> None:
    # settle_s is long: the test completes every series itself, once, after the whole corpus.
    settings = make_settings(tmp_path / "node" / "storage", **{"assembly.settle_s": 3600.0,
                                                               "database.url": db_url})
    root = settings.storage.path
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    node = Node(settings).start()
    problems: dict[str, list[str]] = {}
    pending: dict[str, tuple[Case, str]] = {}
    t0 = time.monotonic()
    try:
        for case in CASES:
            found, payloads = _run_case(node, case, ct_template, corpus)
            if found:
                problems[case.name] = found
            uid = _series_uid(payloads)
            if case.outcome in ("rejected", "load", "queued") and uid:
                pending[case.name] = (case, uid)
        good = make_series(ct_template, 12)
        pending["good_series_after_corpus"] = (
            Case("good_series_after_corpus", "", lambda t, w: [], "queued"),
            good[0].SeriesInstanceUID)
        if send(node, good) != [0] * 12:
            problems["good_series_after_corpus"] = ["not accepted"]
        problems.update(_judge_series(node, pending))
        server_alive = node.server is not None and node.server.socket.fileno() >= 0
        with node.sessions() as s:
            stored = s.scalar(select(func.count(Instance.id)))
            paths = list(s.scalars(select(Instance.path)))
    finally:
        node.stop()
    elapsed_s = time.monotonic() - t0
    rss_growth_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before_mb
    escaped = _outside_root(tmp_path, root, corpus)
    bad_paths = [p for p in paths if not all(UID_PATH_PART.match(part) for part in
                                             Path(p).with_suffix("").parts)]
    outcomes = Counter(c.outcome for c in CASES)
    refusals = Counter(f"0x{c.status:04X}" for c in CASES if c.outcome == "refused")
    record(scenario("hostile_input", db_url), "one node on loopback; the generated corpus "
           "case by case, a good instance after each dangerous case, one sweep, the load "
           "stage, then a good series",
           cases=len(CASES), as_expected=len(CASES) - len([k for k in problems if k in
                                                            {c.name for c in CASES}]),
           outcomes=dict(outcomes), refusal_statuses=dict(refusals), instances_stored=stored,
           per_case={c.name: c.outcome + (f" 0x{c.status:04X}" if c.status else "")
                     for c in CASES},
           files_outside_root=len(escaped), node_still_serving=server_alive
           and "good_series_after_corpus" not in problems,
           peak_rss_growth_mb=round(rss_growth_mb, 1), seconds=round(elapsed_s, 1),
           problems=problems)
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    assert not escaped and not bad_paths
    assert rss_growth_mb < MEMORY_BOUND_MB
    assert len(CASES) >= 30


@requires("storescu")
def test_dcmtk_storescu_gets_the_same_refusals(node: Node, ct_template: Dataset,
                                                tmp_path: Path) -> None:
    """The refusals a real-world client sees: DCMTK storescu sends the corpus's data sets."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    refused = [c for c in CASES if c.outcome == "refused"]
    seen = {}
    for case in refused:
        payloads = case.build(ct_template, tmp_path)
        if not all(isinstance(p, Dataset) for p in payloads) or \
                payloads[0].file_meta.TransferSyntaxUID.is_compressed:
            # Raw encodings DCMTK would refuse to read; storescu proposes only native syntaxes.
            continue
        path = tmp_path / f"{case.name}.dcm"
        payloads[0].save_as(path, enforce_file_format=True)
        out = subprocess.run(["storescu", "-d", "-aec", "DICOMNODE", "127.0.0.1",
                              str(node.port), str(path)], env=env, capture_output=True,
                             text=True, timeout=60)
        m = re.search(r"DIMSE Status\s*:\s*0x([0-9a-f]{4})", out.stdout + out.stderr)
        seen[case.name] = int(m.group(1), 16) if m else None
    assert good_instance_accepted(node, ct_template)
    wrong = {k: v for k, v in seen.items()
             if v != next(c.status for c in refused if c.name == k)}
    record("hostile_input_dcmtk", "DCMTK storescu sends each refused Dataset case of the "
           "corpus to one node; statuses compared with the corpus", cases=len(seen),
           as_expected=len(seen) - len(wrong), wrong=wrong, node_still_serving=True)
    assert len(seen) >= 8 and not wrong, wrong


def _qa_outcome(node: Node, uid: str) -> tuple[str, str, list[str]]:
    """(series state, reason, warnings in its result.json) of one QA case."""
    with node.sessions() as s:
        series = s.scalar(select(Series).where(Series.series_instance_uid == uid))
        if series is None:
            return "not recorded", "", []
        state, reason, version = series.state, series.reason, series.version
    result = results_dir(node.settings.storage.path, uid, version) / "result.json"
    warnings = json.loads(result.read_text())["warnings"] if result.exists() else []
    return state, reason, warnings


def test_qa_cases_end_refused_or_not_analysed(tmp_path: Path, ct_template: Dataset) -> None:
    settings = make_settings(tmp_path / "node" / "storage", **{
        "assembly.settle_s": 3600.0, "segmentation.backend": "threshold",
        "prediction.enabled": False})
    plain = plain_phantom(tmp_path / "corpus")
    built = {case.name: case.build(plain, tmp_path / "corpus") for case in QA_CASES}
    node = Node(settings).start()
    t0 = time.monotonic()
    problems: dict[str, list[str]] = {}
    found: dict[str, tuple[str, str, list[str]]] = {}
    try:
        uids = {}
        for case in QA_CASES:
            paths = sorted(built[case.name].glob("*.dcm"))
            statuses = send(node, list(paths))
            if statuses != [0] * len(paths):
                problems[case.name] = [f"statuses {sorted(set(statuses))}"]
            uids[case.name] = str(pydicom.dcmread(paths[0], stop_before_pixels=True)
                                  .SeriesInstanceUID)
        sweep(node.sessions, settings.assembly, settings.eligibility,
              now=utcnow() + timedelta(hours=2))
        ctx = make_context(settings)
        while (ref := claim_next(node.sessions, settings.storage.path, "hostile-qa")) is not None:
            process_series(ref, ctx, node.sessions)
        for case in QA_CASES:
            state, reason, warnings = found[case.name] = _qa_outcome(node, uids[case.name])
            want = {"rejected": "rejected", "not_analysed": "not_analysed", "warned": "done"}
            if state != want[case.outcome]:
                problems.setdefault(case.name, []).append(f"{state}: {reason!r}")
            elif case.outcome == "warned" and not any(w.startswith(case.reason)
                                                      for w in warnings):
                problems.setdefault(case.name, []).append(f"warnings {warnings}")
            elif case.outcome != "warned" and not reason.startswith(case.reason):
                problems.setdefault(case.name, []).append(f"reason {reason!r}")
        serving = good_instance_accepted(node, ct_template)
    finally:
        node.stop()
    record("hostile_qa", "one node on loopback; each QA case sent as a series, one sweep, "
           "then the worker's process_series (threshold backend) on every queued job",
           cases=len(QA_CASES), as_expected=len(QA_CASES) - len(problems),
           per_case={k: f"{v[0]}: {v[1] or '; '.join(v[2])}" for k, v in found.items()},
           node_still_serving=serving, seconds=round(time.monotonic() - t0, 1),
           problems=problems)
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    assert serving, "the node stopped accepting a good instance after the QA cases"
