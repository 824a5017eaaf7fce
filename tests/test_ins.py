from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.errors import MssgateError, ValidationFailed
from mssgate.ins import (
    OID_INS_NIA,
    OID_INS_NIR,
    OID_INS_NIR_DEMO,
    OID_INS_NIR_TEST,
    InvalidINS,
    InvalidINSReason,
    PatientTraits,
    StrictTrait,
    check_value,
    compute_key,
    hl7_date_to_iso,
    is_patient_mailbox_local_part,
    is_qualified,
    is_valid_value,
    normalise_name,
    parse_ins,
    patient_mailbox_ins,
    trait_conflicts,
)

KNOWN_VALID = ["279035121518989", "188102B17295165", "162018885045327", "277076322082910"]

TRAITS = PatientTraits(
    birth_family="PAT-TROIS",
    given="DOMINIQUE MARIE-LOUISE",
    first_given="DOMINIQUE",
    sex="F",
    birth_date="1979-03-28",
    birthplace="51215",
)


@pytest.mark.parametrize("value", KNOWN_VALID)
def test_known_test_ins_values_verify(value: str) -> None:
    assert compute_key(value[:13]) == value[13:]
    assert check_value(value) == value


def test_key_formula_by_hand() -> None:
    # 97 - (2790351215189 mod 97) computed independently of compute_key.
    assert 97 - 2790351215189 % 97 == 89
    # Corsica 2B -> 18: 1881018172951 mod 97.
    assert f"{97 - 1881018172951 % 97:02d}" == "65"


def test_parse_ins_kinds() -> None:
    nir = parse_ins("277076322082910", OID_INS_NIR, allow_test_oids=False)
    assert (nir.kind, nir.test) == ("NIR", False)
    nia = parse_ins("277076322082910", OID_INS_NIA, allow_test_oids=False)
    assert (nia.kind, nia.test) == ("NIA", False)
    test = parse_ins("279035121518989", OID_INS_NIR_TEST, allow_test_oids=True)
    assert (test.kind, test.test, test.matricule, test.key) == ("NIR", True, "2790351215189", "89")
    demo = parse_ins("279035121518989", OID_INS_NIR_DEMO, allow_test_oids=True)
    assert demo.test


@pytest.mark.parametrize(
    ("value", "oid", "allow", "reason"),
    [
        ("27903512151898", OID_INS_NIR, True, InvalidINSReason.LENGTH),
        ("2790351215189899", OID_INS_NIR, True, InvalidINSReason.LENGTH),
        ("27903512151898X", OID_INS_NIR, True, InvalidINSReason.CHARACTERS),
        ("2790351215189 9", OID_INS_NIR, True, InvalidINSReason.CHARACTERS),
        ("188102C17295165", OID_INS_NIR, True, InvalidINSReason.CHARACTERS),
        ("188102b17295165", OID_INS_NIR, True, InvalidINSReason.CHARACTERS),
        ("279035121518988", OID_INS_NIR, True, InvalidINSReason.KEY_MISMATCH),
        ("279035121518989", "1.2.250.1.213.1.4.13", True, InvalidINSReason.UNKNOWN_OID),
        ("279035121518989", OID_INS_NIR_TEST, False, InvalidINSReason.TEST_OID_NOT_ALLOWED),
        ("279035121518989", OID_INS_NIR_DEMO, False, InvalidINSReason.TEST_OID_NOT_ALLOWED),
    ],
)
def test_invalid_ins_reasons(value: str, oid: str, allow: bool, reason: InvalidINSReason) -> None:
    with pytest.raises(InvalidINS) as caught:
        parse_ins(value, oid, allow_test_oids=allow)
    assert caught.value.reason is reason
    assert isinstance(caught.value, ValidationFailed)
    assert isinstance(caught.value, MssgateError)
    # Patient data never reaches the message of an error.
    assert value not in str(caught.value)


def test_decourcy_newborn_keys_are_flagged_not_crashing() -> None:
    for value in ("221042545611404", "223042545611404", "222127505611201", "224027511583555"):
        assert not is_valid_value(value)


def test_patient_mailbox_local_part() -> None:
    assert is_patient_mailbox_local_part("279035121518989")
    assert is_patient_mailbox_local_part("188102b17295165")
    assert not is_patient_mailbox_local_part("279035121518988")
    assert not is_patient_mailbox_local_part("dr.house")
    assert patient_mailbox_ins("188102b17295165@Patient.MSSante.fr") == "188102B17295165"
    assert patient_mailbox_ins("279035121518989@hopital.mssante.fr") is None
    assert patient_mailbox_ins("no-at-sign") is None


def test_traits_missing_and_qualified() -> None:
    ins = parse_ins("279035121518989", OID_INS_NIR_TEST, allow_test_oids=True)
    assert TRAITS.missing() == ()
    assert is_qualified(ins, TRAITS)
    no_place = TRAITS.model_copy(update={"birthplace": None})
    assert no_place.missing() == (StrictTrait.BIRTHPLACE,)
    assert not is_qualified(ins, no_place)
    assert is_qualified(ins, no_place, require_birthplace=False)
    assert not is_qualified(None, TRAITS)
    assert PatientTraits(given="ALAIN MARC").first_given_name == "ALAIN"


def test_trait_conflicts_ignore_case_and_accents_but_not_values() -> None:
    other = PatientTraits(birth_family="Pat-Trois", first_given="Dominique", sex="F")
    assert trait_conflicts(TRAITS, other) == ()
    assert normalise_name("  Hélène  d'Aubigné ") == "HELENE D'AUBIGNE"
    wrong = PatientTraits(birth_family="PAT-QUATRE", sex="M", birth_date="1979-03-29")
    assert trait_conflicts(TRAITS, wrong) == (
        StrictTrait.BIRTH_FAMILY,
        StrictTrait.SEX,
        StrictTrait.BIRTH_DATE,
    )


def test_hl7_date_to_iso() -> None:
    assert hl7_date_to_iso("19790328") == "1979-03-28"
    assert hl7_date_to_iso("197903") == "1979-03"
    assert hl7_date_to_iso("20210108111700+0100") == "2021-01-08"
    assert hl7_date_to_iso("bad") is None
    assert hl7_date_to_iso(None) is None


# -- properties --------------------------------------------------------------------------

departments = st.one_of(st.from_regex(r"[0-9]{2}", fullmatch=True), st.sampled_from(["2A", "2B"]))
matricules = st.builds(
    lambda head, dept, tail: head + dept + tail,
    st.from_regex(r"[0-9]{5}", fullmatch=True),
    departments,
    st.from_regex(r"[0-9]{6}", fullmatch=True),
)


# Three times the profile's run (tests/conftest.py): 300 in CI, and scaled in long runs.
@pytest.mark.fuzz
@settings(max_examples=3 * settings().max_examples)
@given(matricules)
def test_computed_key_round_trips(matricule: str) -> None:
    value = matricule + compute_key(matricule)
    assert 1 <= int(value[13:]) <= 97
    assert check_value(value) == value
    assert parse_ins(value, OID_INS_NIR, allow_test_oids=False).value == value


@pytest.mark.fuzz
@settings(max_examples=3 * settings().max_examples)
@given(matricules, st.integers(min_value=0, max_value=14), st.integers(min_value=1, max_value=9))
def test_any_single_digit_change_is_detected(matricule: str, position: int, delta: int) -> None:
    value = matricule + compute_key(matricule)
    if not value[position].isdigit():
        return
    changed_digit = str((int(value[position]) + delta) % 10)
    mutated = value[:position] + changed_digit + value[position + 1 :]
    # A digit change can make "2A"/"2B" into a non-Corsican shape; it must still not verify.
    assert not is_valid_value(mutated)


@given(st.from_regex(r"[0-9]{5}", fullmatch=True), st.from_regex(r"[0-9]{6}", fullmatch=True))
def test_corsica_substitution(head: str, tail: str) -> None:
    for letter, digits, offset in (("2A", "19", 1_000_000), ("2B", "18", 2_000_000)):
        corsican = head + letter + tail
        as_digits = int(head + digits + tail)
        assert compute_key(corsican) == f"{97 - as_digits % 97:02d}"
        # Same thing said another way (documents.md): subtract 1 or 2 million from 20xxx.
        assert as_digits == int(head + "20" + tail) - offset


# -- fuzz targets (bench/fuzz.py runs them on a clock) -------------------------------------
_ins_like = st.text(alphabet="0123456789ABab \u0660\uff11", max_size=17)


@pytest.mark.fuzz
@given(
    st.one_of(_ins_like, st.text(max_size=20)),
    st.sampled_from([OID_INS_NIR, OID_INS_NIR_TEST, "x"]),
)
def test_any_text_is_an_ins_or_an_invalid_ins(text: str, oid: str) -> None:
    for check in (
        lambda: check_value(text),
        lambda: compute_key(text),
        lambda: parse_ins(text, oid, allow_test_oids=True),
    ):
        try:
            result = check()
        except InvalidINS as exc:
            # Patient data never reaches an error message (it can reach a client or a log).
            assert not any(c.isdigit() for c in str(exc)), str(exc)
            continue
        if isinstance(result, str) and len(result) == 15:
            assert result == text
    if is_valid_value(text):
        assert text.isascii() and text[13:] == compute_key(text[:13])


@pytest.mark.fuzz
@given(matricules, st.integers(min_value=0, max_value=11))
def test_adjacent_transpositions_are_detected(matricule: str, position: int) -> None:
    value = matricule + compute_key(matricule)
    a, b = value[position], value[position + 1]
    if a == b or not (a.isdigit() and b.isdigit()):
        return
    # mod 97 catches them all: the number moves by (a - b) * 9 * 10^k, never a multiple of 97.
    assert not is_valid_value(value[:position] + b + a + value[position + 2 :])


@pytest.mark.fuzz
@given(
    matricules,
    st.lists(st.booleans(), min_size=20, max_size=20),
    st.one_of(st.text(max_size=30), st.sampled_from(["patient.mssante.fr", "mssante.fr"])),
)
def test_patient_mailbox_addresses(matricule: str, upper: list[bool], domain: str) -> None:
    value = matricule + compute_key(matricule)
    local = "".join(c.lower() if up else c for c, up in zip(value, upper, strict=False))
    for address in (f"{local}@{domain}", f"{local}@{domain.upper()}", local, f"x{local}@{domain}"):
        found = patient_mailbox_ins(address)
        if found is not None:
            assert found == value
            assert address.lower().endswith("@patient.mssante.fr")
    if domain == "patient.mssante.fr":
        assert patient_mailbox_ins(f"{local}@{domain.upper()}") == value
