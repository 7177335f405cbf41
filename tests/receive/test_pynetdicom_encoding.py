"""The receive path's direct encodings must equal pydicom's and pynetdicom's, byte for byte."""

from __future__ import annotations

import io

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode

from dicom_node.receive.pynetdicom_ext import encoding as scp_encoding

CT = "1.2.840.10008.5.1.4.1.1.2"  # odd length: padded
MR = "1.2.840.10008.5.1.4.1.1.4"
EVEN_UID = "1.2.826.0.1.3680043.8.498.12"  # even length: not padded


@pytest.mark.parametrize("sop_class", [CT, EVEN_UID])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4.5", "1.2.3.4.56", "2.25." + "9" * 38])
@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless]
)
def test_file_meta_equals_pydicoms(sop_class: str, sop_instance: str, syntax: str) -> None:
    expected = io.BytesIO()
    write_file_meta_info(
        expected,
        create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
        ),
    )
    ours = io.BytesIO()
    scp_encoding.write_file_meta_info(
        ours,
        scp_encoding.create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
        ),
    )
    assert ours.getvalue() == expected.getvalue()


def test_other_file_meta_goes_to_pydicom() -> None:
    meta = create_file_meta(
        sop_class_uid=MR, sop_instance_uid="1.2.3", transfer_syntax=ExplicitVRLittleEndian
    )
    expected, ours = io.BytesIO(), io.BytesIO()
    write_file_meta_info(expected, meta)
    scp_encoding.write_file_meta_info(ours, meta)
    assert ours.getvalue() == expected.getvalue()


def _pynetdicom_rsp(primitive: C_STORE | C_ECHO) -> bytes:
    message = C_STORE_RSP() if isinstance(primitive, C_STORE) else C_ECHO_RSP()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC210, 0xB000])
@pytest.mark.parametrize("message_id", [1, 2, 65535])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4.5", "1.2.3.4.56"])
def test_c_store_response_equals_pynetdicoms(
    status: int, message_id: int, sop_instance: str
) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    assert scp_encoding.encode_c_store_rsp(rsp) == _pynetdicom_rsp(rsp)


def test_response_with_an_error_comment_is_left_to_pynetdicom() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3"
    rsp.Status = 0xC000
    rsp.ErrorComment = "nope"
    assert scp_encoding.encode_c_store_rsp(rsp) is None


@pytest.mark.parametrize("status", [0x0000, 0x0122, 0xC000])
@pytest.mark.parametrize("message_id", [1, 2, 65535])
@pytest.mark.parametrize("sop_class", ["1.2.840.10008.1.1", EVEN_UID])
def test_c_echo_response_equals_pynetdicoms(status: int, message_id: int, sop_class: str) -> None:
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = status
    assert scp_encoding.encode_c_echo_rsp(rsp) == _pynetdicom_rsp(rsp)
    rsp.ErrorComment = "nope"
    assert scp_encoding.encode_c_echo_rsp(rsp) is None
