"""The msg-id reader for In-Reply-To / References: what a patient's reply names, bounded."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from mssgate.patients.msgids import (
    IN_REPLY_TO_MAX,
    MAX_ID_CHARS,
    MAX_LOOKUP,
    REFERENCES_HEAD,
    REFERENCES_TAIL,
    message_id,
    referenced,
)

ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_$", min_size=1, max_size=30)
IDS = st.builds(lambda a, b: f"<{a}@{b}>", ATOM, ATOM)


def test_message_id_reads_one_id_and_refuses_the_rest() -> None:
    assert message_id(["<a.1@hopital-a.test>"]) == "<a.1@hopital-a.test>"
    assert message_id(["  (comment) <a.1@hopital-a.test>\t"]) == "<a.1@hopital-a.test>"
    assert message_id([]) is None
    assert message_id(["<a@b>", "<c@d>"]) is None  # two fields
    assert message_id(["<a@b> <c@d>"]) is None  # two ids in one
    assert message_id(["no id here"]) is None
    assert message_id([f"<{'x' * MAX_ID_CHARS}@b>"]) is None  # longer than we record
    assert message_id(["<a b@c>", "<a@@c>"]) is None


def test_references_keep_the_thread_root_and_the_latest() -> None:
    refs = [f"<{i}@h.test>" for i in range(1000)]
    got = referenced([], [" ".join(refs)])
    assert got[:REFERENCES_HEAD] == refs[:REFERENCES_HEAD]
    assert got[REFERENCES_HEAD:] == refs[-REFERENCES_TAIL:]
    # In-Reply-To first, repeats once.
    got = referenced(["<p@h.test> <p@h.test>"], ["<0@h.test>\r\n <p@h.test>"])
    assert got == ["<p@h.test>", "<0@h.test>"]


def test_a_hostile_field_is_read_in_linear_time_and_bounded() -> None:
    hostile = ["<" + "a" * 200_000, "<" + "@" * 200_000 + ">", "<a@" * 50_000, "x" * 1_000_000]
    start = time.monotonic()
    for field in hostile:
        assert len(referenced([field], [field])) <= MAX_LOOKUP
    assert time.monotonic() - start < 5


@given(
    st.lists(IDS, max_size=200),
    st.lists(IDS, max_size=40),
    st.sampled_from([" ", "\r\n ", "\t(c) "]),
)
def test_bounds_and_order_hold_for_any_lists(refs: list[str], irt: list[str], sep: str) -> None:
    got = referenced([sep.join(irt)], [sep.join(refs)])
    assert len(got) <= MAX_LOOKUP
    assert len(got) == len(set(got))
    # What In-Reply-To names comes first (as many as its bound), then References' ends.
    first = list(dict.fromkeys(irt))[:IN_REPLY_TO_MAX]
    assert got[: len(first)] == first
    expected = (
        set(first) | set(refs[:REFERENCES_HEAD]) | set(refs[REFERENCES_HEAD:][-REFERENCES_TAIL:])
    )
    assert set(got) == expected


@given(st.text(max_size=2000), st.text(max_size=2000))
def test_any_text_gives_bounded_well_formed_ids(a: str, b: str) -> None:
    for mid in referenced([a], [b, a]):
        assert mid.startswith("<") and mid.endswith(">") and mid.count("@") == 1
        assert len(mid) <= MAX_ID_CHARS and mid.isascii() and " " not in mid
