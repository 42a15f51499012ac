"""The hand-written encoders give exactly the bytes pydicom and pynetdicom would write."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicomnode.receive.wire import file_meta_bytes, store_response_bytes

CASES = [  # odd and even UID lengths, both little-endian syntaxes, an Enhanced CT class
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),
    ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.3.45", "1.2.840.10008.1.2"),
    ("1.2.840.10008.5.1.4.1.1.2", "2.25." + "9" * 59, "1.2.840.10008.1.2.4.90"),
]


@pytest.mark.parametrize(("sop_class", "sop_instance", "syntax"), CASES)
def test_file_meta_matches_pynetdicom(sop_class: str, sop_instance: str, syntax: str) -> None:
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                            transfer_syntax=syntax)
    assert file_meta_bytes(sop_class, sop_instance, syntax) == \
        b"\x00" * 128 + b"DICM" + encode_file_meta(meta)


@pytest.mark.parametrize(("sop_class", "sop_instance", "_syntax"), CASES)
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC000, 0xC211])
def test_store_response_matches_pynetdicom(sop_class: str, sop_instance: str, _syntax: str,
                                           status: int) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = list(message.encode_msg(1, 0))
    (context_id, fragment), = pdata.presentation_data_value_list
    assert fragment[:1] == b"\x03"  # command, last fragment
    assert store_response_bytes(message_id=513, sop_class_uid=sop_class,
                                sop_instance_uid=sop_instance, status=status) == fragment[1:]
