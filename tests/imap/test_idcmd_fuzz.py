"""Fuzz target: RFC 2971's limits on `ID` (`mssgate.imap.idcmd`).

Properties: any list within the RFC, quoted the way a client may quote it, tokenizes to
arguments the check accepts and fits the ID wire budget; one pair, one field octet or one
value octet beyond it is refused with the limit named.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.imap.idcmd import MAX_FIELD, MAX_PAIRS, MAX_VALUE, MAX_WIRE, id_problem
from mssgate.imap.parse import tokens

pytestmark = pytest.mark.fuzz

# Any octet a quoted string may carry (no CR, LF or NUL), quotes and backslashes included.
_octets = st.binary(max_size=MAX_VALUE).map(lambda b: bytes(c for c in b if c not in (0, 10, 13)))


def _quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_pairs = st.lists(
    st.tuples(_octets.map(lambda b: b[:MAX_FIELD]), st.one_of(st.none(), _octets)),
    max_size=MAX_PAIRS,
)


def _wire(pairs: list[tuple[bytes, bytes | None]]) -> bytes:
    items = [_quote(f) + b" " + (b"NIL" if v is None else _quote(v)) for f, v in pairs]
    return b"(" + b" ".join(items) + b")"


@given(_pairs)
def test_what_the_rfc_allows_is_accepted(pairs: list[tuple[bytes, bytes | None]]) -> None:
    wire = _wire(pairs)
    assert len(wire) <= MAX_WIRE
    assert id_problem(tokens(wire)) is None


@given(_pairs.filter(bool), st.sampled_from(["pair", "field", "value"]))
def test_one_beyond_the_rfc_is_refused_by_name(
    pairs: list[tuple[bytes, bytes | None]], beyond: str
) -> None:
    if beyond == "pair":
        pairs = [*(pairs * MAX_PAIRS)[:MAX_PAIRS], (b"x", b"y")]
        expected = "30 field-value pairs"
    elif beyond == "field":
        pairs[0] = (b"f" * (MAX_FIELD + 1), pairs[0][1])
        expected = "30 octets"
    else:
        pairs[-1] = (pairs[-1][0], b'"' * (MAX_VALUE + 1))
        expected = "1024 octets"
    problem = id_problem(tokens(_wire(pairs)))
    assert problem is not None and expected in problem


def test_nil_and_the_empty_list_are_fine() -> None:
    assert id_problem([None]) is None
    assert id_problem([b"(", b")"]) is None
