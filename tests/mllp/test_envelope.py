"""The MSH fields an MLLP refusal echoes are read from whatever bytes came (an oversized
frame's first 4 KiB, a frame from a certificate no longer bound): never an exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mssgate.mllp.listener import envelope_of
from mssgate.outbound.hl7in import Envelope

msh_like = st.builds(
    lambda fields, tail: ("MSH|^~\\&|" + "|".join(fields)).encode() + tail,
    st.lists(st.text(max_size=12), max_size=14),
    st.binary(max_size=40),
)


@given(st.one_of(st.binary(max_size=300), msh_like))
def test_any_head_gives_an_envelope(head: bytes) -> None:
    assert isinstance(envelope_of(head), Envelope)


def test_the_control_id_of_a_cut_message_is_echoed() -> None:
    head = b"MSH|^~\\&|RIS|CENTRE|MSSGATE|GW|20240116||MDM^T02^MDM_T02|BIG-1|P|2.6\rOBX|1|ED|"
    assert envelope_of(head).control_id == "BIG-1"
    assert envelope_of(b"\xff\xfe not hl7") == Envelope()
