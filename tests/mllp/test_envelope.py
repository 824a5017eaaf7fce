"""Reading hostile HL7 at the MLLP edges never raises: the MSH fields a refusal echoes (from an
oversized frame's first 4 KiB, say), and what a pushed-to RIS answered."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.mllp.listener import envelope_of
from mssgate.mllp.push import Refused, ack_outcome
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


@given(st.one_of(st.text(max_size=300), msh_like.map(lambda b: b.decode("utf-8", "replace"))))
def test_any_answer_of_a_ris_is_an_outcome_or_refused(text: str) -> None:
    try:
        code, words = ack_outcome(text)
    except Refused:
        return
    assert len(code) <= len(text) and len(words) <= 300


def test_ack_outcomes() -> None:
    msh = "MSH|^~\\&|RIS|C|MSSGATE|GW|20240116||ACK^T02^ACK|A1|P|2.6"
    assert ack_outcome(f"{msh}\rMSA|AA|DOC1") == ("AA", "")
    assert ack_outcome(f"{msh}\rMSA|AA|DOC1", expected="DOC1") == ("AA", "")
    for other in ("DOC2", ""):  # an ACK of another message is no answer to this one
        with pytest.raises(Refused, match="another message"):
            ack_outcome(f"{msh}\rMSA|AA|{other}", expected="DOC1")
    code, words = ack_outcome(f"{msh}\rMSA|AE|DOC1|bad INS\rERR||PID^1^3|102^x^HL70357|E||||why")
    assert code == "AE" and words == "bad INS; why"
    for bad in ("", "hello", msh):  # no MSH, no MSA
        try:
            ack_outcome(bad)
        except Refused:
            continue
        raise AssertionError(bad)
