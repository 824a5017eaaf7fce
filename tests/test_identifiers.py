"""Property tests for the RPPS/ADELI check and for address validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.errors import ValidationFailed
from mssgate.identifiers import (
    luhn_check_digit,
    luhn_valid,
    normalize_address,
    parse_practitioner_id,
)

digits = st.text(alphabet="0123456789", min_size=1, max_size=20)


@given(digits)
def test_luhn_completion_is_valid(payload: str) -> None:
    assert luhn_valid(payload + luhn_check_digit(payload))


@given(digits, st.data())
def test_any_single_digit_change_is_caught(payload: str, data: st.DataObject) -> None:
    number = payload + luhn_check_digit(payload)
    i = data.draw(st.integers(0, len(number) - 1))
    new = data.draw(st.sampled_from([d for d in "0123456789" if d != number[i]]))
    assert not luhn_valid(number[:i] + new + number[i + 1 :])


@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_rpps_round_trip(payload: str) -> None:
    rpps = payload + luhn_check_digit(payload)
    parsed = parse_practitioner_id(rpps)
    assert (parsed.id_type, parsed.number, parsed.idnat) == ("RPPS", rpps, "8" + rpps)
    assert parse_practitioner_id(parsed.idnat) == parsed


@given(st.text(alphabet="0123456789", min_size=8, max_size=8))
def test_adeli_round_trip(payload: str) -> None:
    adeli = payload + luhn_check_digit(payload)
    parsed = parse_practitioner_id(adeli)
    assert (parsed.id_type, parsed.idnat) == ("ADELI", "0" + adeli)


def test_known_practitioner_ids() -> None:
    assert parse_practitioner_id("899700367909").number == "99700367909"  # ANS DRIMbox example
    with pytest.raises(ValidationFailed, match="check digit"):
        parse_practitioner_id("99700367908")
    for bad in ("", "abc", "\uff11" * 11, "123", "9970036790912"):
        with pytest.raises(ValidationFailed):
            parse_practitioner_id(bad)


atom = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_+-", min_size=1, max_size=10)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(st.lists(atom, min_size=1, max_size=3), st.lists(label, min_size=1, max_size=3))
def test_valid_addresses_normalise_idempotently(locals_: list[str], labels: list[str]) -> None:
    address = ".".join(locals_) + "@" + ".".join([*labels, "test"])
    normal = normalize_address(address.upper())
    assert normal == address.lower()
    assert normalize_address(normal) == normal


@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        normal = normalize_address(text)
    except ValidationFailed:
        return
    # Whatever passes is plain ASCII, one '@', no relay tricks, no white space.
    assert normal.isascii() and normal.count("@") == 1
    assert not set(normal) & set('%!":[] \t\r\n<>\\,;()')


@pytest.mark.parametrize(
    "address",
    [
        "user%other.test@hopital.test",  # percent hack
        "other.test!user@hopital.test",  # bang path
        '"user@other"@hopital.test',  # quoted local part
        "@relay.test:user@hopital.test",  # source route
        "user@[192.0.2.1]",  # IP literal
        "user@localhost",  # unqualified
        "user@hopital.test\r\nRCPT TO:<x@y.test>",  # injection
        "user..dots@hopital.test",
        "médecin@hopital.test",
        "a" * 65 + "@hopital.test",
        "user@-bad.test",
        "user@hopital.123",
    ],
)
def test_relay_and_injection_forms_are_refused(address: str) -> None:
    with pytest.raises(ValidationFailed):
        normalize_address(address)
