"""RFC 3461 parameters as the SMTP listeners read them: xtext round trips, the bounds, and
a syntax error is a clear refusal (DsnSyntaxError -> 501 5.5.4 with the reason)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.smtp.dsnparams import (
    DsnSyntaxError,
    RecipientDsn,
    decode_xtext,
    encode_xtext,
    parse_mail,
    parse_notify,
    parse_orcpt,
    parse_rcpt,
    split_params,
    stored_rcpt,
)

PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)


@given(PRINTABLE)
def test_xtext_round_trips_and_never_holds_a_space_plus_or_equals(value: str) -> None:
    encoded = encode_xtext(value)
    assert not set(encoded) & {" ", "=", "\r", "\n"}
    assert decode_xtext(encoded, what="x") == value


@given(st.text(max_size=60))
def test_decoding_any_text_is_a_value_or_a_syntax_error(value: str) -> None:
    try:
        decoded = decode_xtext(value, what="ENVID")
    except DsnSyntaxError:
        return
    assert decoded.isascii() and decoded.isprintable()


@given(st.lists(st.text(min_size=1, max_size=20).filter(lambda s: " " not in s), max_size=6))
def test_mail_and_rcpt_parameters_parse_or_refuse_never_raise_otherwise(params: list[str]) -> None:
    for keys, parse in ((frozenset({"RET", "ENVID"}), parse_mail),
                        (frozenset({"NOTIFY", "ORCPT"}), parse_rcpt)):  # fmt: skip
        try:
            ours, rest = split_params(params, keys)
            parse(ours)
        except DsnSyntaxError:
            continue
        assert all(p.partition("=")[0].upper() not in keys for p in rest)


def test_what_a_client_sends_is_kept_decoded_and_its_case() -> None:
    ours, rest = split_params(
        ["SIZE=10", "ret=hdrs", "ENVID=Copy+2B1+3D"], frozenset({"RET", "ENVID"})
    )
    assert rest == ["SIZE=10"]
    dsn = parse_mail(ours)
    assert (dsn.ret, dsn.envid) == ("HDRS", "Copy+1=")
    rcpt = parse_rcpt({"NOTIFY": "success,Failure", "ORCPT": "RFC822;Bob+40x.test"})
    assert rcpt.notify == {"SUCCESS", "FAILURE"}
    assert rcpt.orcpt == ("rfc822", "Bob@x.test")
    assert rcpt.wants_success and rcpt.wants_failure
    # As the spool keeps it, and read back.
    assert (rcpt.notify_text(), rcpt.orcpt_text()) == ("SUCCESS,FAILURE", "rfc822;Bob@x.test")
    assert stored_rcpt("SUCCESS,FAILURE", "rfc822;Bob@x.test") == rcpt


def test_notify_semantics() -> None:
    assert RecipientDsn().wants_failure and not RecipientDsn().wants_success
    never = RecipientDsn(notify=parse_notify("NEVER"))
    assert not never.wants_failure and not never.wants_success
    assert not RecipientDsn(notify=parse_notify("SUCCESS")).wants_failure


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"NOTIFY": "BOGUS"}, "NOTIFY takes"),
        ({"NOTIFY": "NEVER,SUCCESS"}, "cannot be combined"),
        ({"NOTIFY": "SUCCESS,SUCCESS"}, "twice"),
        ({"ORCPT": "bob@x.test"}, "addr-type;xtext"),
        ({"ORCPT": "rfc822;bob+zz@x.test"}, "not valid xtext"),
        ({"ORCPT": "rfc822;" + "a" * 501}, "longer than 500"),
        ({"ORCPT": "rfc822;bob+0Dx"}, "control character"),
    ],
)
def test_rcpt_syntax_errors_say_why(params: dict[str, str], reason: str) -> None:
    with pytest.raises(DsnSyntaxError, match=reason):
        parse_rcpt(params)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (["RET=BODY"], "FULL or HDRS"),
        (["ENVID=" + "x" * 101], "longer than 100"),
        (["ENVID=a=b"], "not valid xtext"),
        (["ENVID"], "needs a value"),
        (["RET=FULL", "ret=HDRS"], "twice"),
    ],
)
def test_mail_syntax_errors_say_why(params: list[str], reason: str) -> None:
    with pytest.raises(DsnSyntaxError, match=reason):
        ours, _ = split_params(params, frozenset({"RET", "ENVID"}))
        parse_mail(ours)


def test_orcpt_type_is_checked() -> None:
    with pytest.raises(DsnSyntaxError):
        parse_orcpt(";bob@x.test")
