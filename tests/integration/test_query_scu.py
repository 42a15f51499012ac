"""The query stage's DIMSE client against a real Orthanc: C-FIND at study and series level, the
match limit (C-CANCEL), and C-MOVE to a storage SCP with and without the instance limit."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts

from dicomnode.lab.orthanc import Orthanc
from dicomnode.lab.synth import make_study
from dicomnode.lab.synth.study import StudyTruth
from dicomnode.query.scu import Peer, find_series, find_studies, move_series
from tests.conftest import free_port
from tests.followup_cases import followup_pair

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent")
Pacs = tuple[Orthanc, dict[str, StudyTruth], int]  # the PACS, its studies, the receiver's port


class _Receiver:
    """A storage SCP on loopback that keeps the SOP Instance UIDs it receives."""

    def __init__(self, port: int) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()
        ae = AE(ae_title="RECEIVER")
        ae.supported_contexts = StoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    tmp = tmp_path_factory.mktemp("query")
    base, follow = followup_pair(tmp / "pair", seed=61, baseline_ml=10.0, growth_ml=2.0,
                                 matrix=64)
    other = make_study(tmp / "other", seed=62, hemorrhage_ml=5.0, matrix=64)
    port = free_port()
    with Orthanc(tmp / "orthanc", modalities={"rx": ("RECEIVER", "127.0.0.1", port)}) as o:
        for truth in (base, follow, other):
            o.upload(sorted(truth.dicom_dir.glob("*.dcm")))
        yield o, {"base": base, "follow": follow, "other": other}, port


def _peer(orthanc: Orthanc) -> Peer:
    return Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port, calling_ae_title="RECEIVER",
                timeout_s=10)


def test_studies_of_the_patient_in_the_date_range_and_the_match_limit(pacs: Pacs) -> None:
    orthanc, s, _ = pacs
    pid = s["base"].patient_id
    found, more = find_studies(_peer(orthanc), pid, "", date(1990, 1, 1), date(2100, 1, 1),
                               max_matches=10)
    assert {m.study_instance_uid for m in found} == {s["base"].study_instance_uid,
                                                      s["follow"].study_instance_uid}
    assert not more and all(m.attributes["patient_id"] == pid for m in found)
    assert all(len(m.attributes["study_date"]) == 8 for m in found)
    one, more = find_studies(_peer(orthanc), pid, "", date(1990, 1, 1), date(2100, 1, 1),
                             max_matches=1)
    assert len(one) == 1 and more
    first = next(iter(sorted(s["base"].dicom_dir.glob("*.dcm"))))
    day = datetime.strptime(pydicom.dcmread(first, stop_before_pixels=True).StudyDate,
                            "%Y%m%d").date()
    before, _ = find_studies(_peer(orthanc), pid, "", date(1990, 1, 1),
                             day - timedelta(days=1), max_matches=10)
    assert before == []  # the range ends the day before the baseline
    only, _ = find_studies(_peer(orthanc), pid, "", day, day, max_matches=10)
    assert [m.study_instance_uid for m in only] == [s["base"].study_instance_uid]


def test_series_carry_what_the_eligibility_rules_read(pacs: Pacs) -> None:
    orthanc, s, _ = pacs
    series = find_series(_peer(orthanc), s["base"].study_instance_uid, max_matches=10)
    assert len(series) == 1
    match = series[0]
    assert match.series_instance_uid == s["base"].series_instance_uid
    assert match.n_instances == s["base"].n_slices
    assert match.attributes["modality"] == "CT" and match.attributes["body_part"] == "HEAD"
    assert "Head" in match.attributes["series_description"]


def test_move_brings_the_series_and_the_limit_cancels_it(pacs: Pacs) -> None:
    orthanc, s, port = pacs
    base = s["base"]
    rx = _Receiver(port)
    try:
        result = move_series(_peer(orthanc), base.study_instance_uid, base.series_instance_uid,
                             "RECEIVER", max_instances=base.n_slices)
        assert (result.status, result.completed, result.failed) == (0, base.n_slices, 0)
        assert result.announced == base.n_slices and not result.cancelled
        assert len(set(rx.received)) == base.n_slices
        small = move_series(_peer(orthanc), base.study_instance_uid, base.series_instance_uid,
                            "RECEIVER", max_instances=5)
        assert small.cancelled and small.announced == base.n_slices
    finally:
        rx.stop()
