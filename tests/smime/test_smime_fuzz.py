"""Random damage to a signed message: the verifier answers with a verdict, never an exception."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smime_fixtures import Pki

from mssgate.smime import SignatureVerdict, sign_message, verify_signed_message

MESSAGE = (
    b"From: <dr.alice.martin@hopital-a.test>\r\n"
    b"To: <secretariat@clinique-b.test>\r\n"
    b"Subject: CR\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Compte rendu.\r\n"
)

pytestmark = pytest.mark.fuzz

mutations = st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
    min_size=1,
    max_size=4,
)


def _mutate(raw: bytes, edits: list[tuple[int, int]]) -> tuple[bytes, set[int]]:
    data = bytearray(raw)
    changed = set()
    for position, value in edits:
        index = position % len(data)
        if data[index] != value:
            data[index] = value
            changed.add(index)
    return bytes(data), changed


@settings(
    max_examples=3 * settings().max_examples // 2,  # 150 in CI, scaled by the fuzz profile
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edits=mutations, detached=st.booleans())
def test_mutations_never_raise(pki: Pki, edits: list[tuple[int, int]], detached: bool) -> None:
    raw = _signed(pki, detached)
    mutated, changed = _mutate(raw, edits)
    verdict = verify_signed_message(
        mutated, trust_anchors=[pki.ca.cert], registered=[pki.alice.cert]
    )
    assert isinstance(verdict, SignatureVerdict)
    assert verdict.ok is (verdict.reason is None)
    if detached:
        # A changed byte inside the signed entity can never still verify.
        start = raw.index(b"Content-Type: text/plain")
        end = raw.index(b"Compte rendu.\r\n") + len(b"Compte rendu.\r\n")
        if any(start <= index < end for index in changed):
            assert not verdict.ok, (changed, mutated[start:end])


_cache: dict[tuple[int, bool], bytes] = {}


def _signed(pki: Pki, detached: bool) -> bytes:
    key = (id(pki), detached)
    if key not in _cache:
        _cache[key] = sign_message(
            MESSAGE, key=pki.alice.key, cert=pki.alice.cert, detached=detached
        )
    return _cache[key]


def test_signed_fixture_is_valid(pki: Pki) -> None:
    for detached in (True, False):
        verdict = verify_signed_message(
            _signed(pki, detached), trust_anchors=[pki.ca.cert], registered=[pki.alice.cert]
        )
        assert verdict.ok, verdict.detail
