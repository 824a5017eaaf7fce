"""INS (Identifiant National de Santé): matricule checks, OIDs and the strict identity traits.

Pure functions only. The matricule is 13 characters (NIR or NIA) followed by a 2-digit key,
`key = 97 - (n mod 97)` where `n` is the matricule read as an integer once the Corsican
departments `2A`/`2B` are replaced by `19`/`18`. The OID (authority of assignment) tells the
kind: production NIR and NIA, and two OIDs used only by fictitious test/demo patients, which a
production gateway must refuse unless its operator says otherwise (`allow_test_oids`).

Errors never carry the matricule in their message: it is patient data and `str(error)` can
reach a client or a log line.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from mssgate.errors import ValidationFailed

OID_INS_NIR: Final = "1.2.250.1.213.1.4.8"
OID_INS_NIA: Final = "1.2.250.1.213.1.4.9"
OID_INS_NIR_TEST: Final = "1.2.250.1.213.1.4.10"
OID_INS_NIR_DEMO: Final = "1.2.250.1.213.1.4.11"

PATIENT_MAILBOX_DOMAIN: Final = "patient.mssante.fr"

InsKind = Literal["NIR", "NIA"]

# OID -> (kind, test). FR Core INS profile: .8 NIR, .9 NIA, .10 NIR of fictitious test
# patients, .11 NIR of demonstration patients. Both .10 and .11 are "not a real person".
INS_OIDS: Final[dict[str, tuple[InsKind, bool]]] = {
    OID_INS_NIR: ("NIR", False),
    OID_INS_NIA: ("NIA", False),
    OID_INS_NIR_TEST: ("NIR", True),
    OID_INS_NIR_DEMO: ("NIR", True),
}

# sex/kind digit, year, month, department (2 digits or Corsica), commune, order. Overseas
# departments (97x + 2-digit commune) fit the same 13-digit shape.
_MATRICULE_RE: Final = re.compile(r"[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{6}")
_KEY_RE: Final = re.compile(r"[0-9]{2}")


class InvalidINSReason(enum.StrEnum):
    LENGTH = "length"
    CHARACTERS = "characters"
    KEY_MISMATCH = "key mismatch"
    UNKNOWN_OID = "unknown OID"
    TEST_OID_NOT_ALLOWED = "test OID not allowed"


class InvalidINS(ValidationFailed):
    """The value is not a usable INS; `reason` says why (never the value itself)."""

    def __init__(self, reason: InvalidINSReason) -> None:
        super().__init__(f"invalid INS: {reason.value}")
        self.reason = reason


class INS(BaseModel):
    """A checked INS: 15-character value (matricule + key) and the OID it was issued under."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: str
    oid: str
    kind: InsKind
    test: bool

    @property
    def matricule(self) -> str:
        return self.value[:13]

    @property
    def key(self) -> str:
        return self.value[13:]


def _matricule_number(matricule: str) -> int:
    # Corsica: 2A -> 19 and 2B -> 18, i.e. the number minus 1,000,000 or 2,000,000.
    return int(matricule.replace("2A", "19", 1).replace("2B", "18", 1))


def compute_key(matricule: str) -> str:
    """The 2-digit key of a 13-character matricule (NIR or NIA)."""
    if len(matricule) != 13:
        raise InvalidINS(InvalidINSReason.LENGTH)
    if not _MATRICULE_RE.fullmatch(matricule):
        raise InvalidINS(InvalidINSReason.CHARACTERS)
    return f"{97 - _matricule_number(matricule) % 97:02d}"


def check_value(value: str) -> str:
    """Check the shape and key of a 15-character INS value and return it.

    Raises `InvalidINS` (length, characters or key mismatch).
    """
    if len(value) != 15:
        raise InvalidINS(InvalidINSReason.LENGTH)
    matricule, key = value[:13], value[13:]
    if not _MATRICULE_RE.fullmatch(matricule) or not _KEY_RE.fullmatch(key):
        raise InvalidINS(InvalidINSReason.CHARACTERS)
    if compute_key(matricule) != key:
        raise InvalidINS(InvalidINSReason.KEY_MISMATCH)
    return value


def is_valid_value(value: str) -> bool:
    try:
        check_value(value)
    except InvalidINS:
        return False
    return True


def kind_of_oid(oid: str) -> tuple[InsKind, bool] | None:
    """(kind, test) for an INS OID, or None when the OID is not an INS authority."""
    return INS_OIDS.get(oid)


def parse_ins(value: str, oid: str, *, allow_test_oids: bool) -> INS:
    """Validate `value` issued under `oid` and return an `INS`.

    Raises `InvalidINS`: length, characters, key mismatch, unknown OID, or a test/demo OID
    when `allow_test_oids` is false.
    """
    known = kind_of_oid(oid)
    if known is None:
        raise InvalidINS(InvalidINSReason.UNKNOWN_OID)
    kind, test = known
    check_value(value)
    if test and not allow_test_oids:
        raise InvalidINS(InvalidINSReason.TEST_OID_NOT_ALLOWED)
    return INS(value=value, oid=oid, kind=kind, test=test)


def is_patient_mailbox_local_part(local: str) -> bool:
    """True when `local` can be the local part of `<INS>@patient.mssante.fr`.

    Mail systems fold case, so `2a`/`2b` are accepted; the key must check.
    """
    return is_valid_value(local.upper())


def patient_mailbox_ins(address: str) -> str | None:
    """The INS value of a `<INS>@patient.mssante.fr` address, or None for any other address."""
    local, sep, domain = address.rpartition("@")
    if not sep or domain.lower() != PATIENT_MAILBOX_DOMAIN:
        return None
    return local.upper() if is_patient_mailbox_local_part(local) else None


Sex = Literal["M", "F", "U"]
_SEXES: Final[dict[str, Sex]] = {"M": "M", "F": "F", "U": "U"}


class StrictTrait(enum.StrEnum):
    BIRTH_FAMILY = "birth family name"
    GIVEN = "birth first names"
    SEX = "sex"
    BIRTH_DATE = "birth date"
    BIRTHPLACE = "birthplace code"


class PatientTraits(BaseModel):
    """The strict identity traits ("traits stricts") that go with an INS.

    `given` is the list of birth first names as written ("DOMINIQUE MARIE-LOUISE");
    `first_given` the first birth first name when the source gives it separately.
    `birth_date` is ISO (YYYY-MM-DD, or shorter when the source date is partial).
    `birthplace` is the INSEE COG code (5 characters, 99xxx for abroad).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    birth_family: str | None = None
    given: str | None = None
    first_given: str | None = None
    sex: Sex | None = None
    birth_date: str | None = None
    birthplace: str | None = None

    @property
    def first_given_name(self) -> str | None:
        if self.first_given:
            return self.first_given
        if self.given:
            return self.given.split()[0]
        return None

    def missing(self, *, require_birthplace: bool = True) -> tuple[StrictTrait, ...]:
        absent: list[StrictTrait] = []
        if not self.birth_family:
            absent.append(StrictTrait.BIRTH_FAMILY)
        if not self.first_given_name:
            absent.append(StrictTrait.GIVEN)
        if self.sex is None:
            absent.append(StrictTrait.SEX)
        if not self.birth_date:
            absent.append(StrictTrait.BIRTH_DATE)
        if require_birthplace and not self.birthplace:
            absent.append(StrictTrait.BIRTHPLACE)
        return tuple(absent)

    def is_empty(self) -> bool:
        return not any(
            (
                self.birth_family,
                self.given,
                self.first_given,
                self.sex,
                self.birth_date,
                self.birthplace,
            )
        )


def is_qualified(
    ins: INS | None, traits: PatientTraits | None, *, require_birthplace: bool = True
) -> bool:
    """A qualified INS: a checked matricule with its OID plus every strict trait.

    MSSanté's `X-MSS-INS` summary lists birth name, first name, birth date and sex; the CI-SIS
    header and INSi also carry the birthplace code, which we require unless told otherwise.
    """
    if ins is None or traits is None:
        return False
    return not traits.missing(require_birthplace=require_birthplace)


def normalise_name(name: str) -> str:
    """Comparable form of a name: capitals, no diacritics, single spaces.

    Sources differ in case and accents ("Alain" in XDS metadata, "ALAIN" in the CDA) but INS
    names are defined in capitals without diacritics, so these forms are equal.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.upper().split())


def trait_conflicts(a: PatientTraits, b: PatientTraits) -> tuple[StrictTrait, ...]:
    """The strict traits that both sides state and that differ."""
    conflicts: list[StrictTrait] = []

    def differ(x: str | None, y: str | None) -> bool:
        return bool(x) and bool(y) and normalise_name(x or "") != normalise_name(y or "")

    if differ(a.birth_family, b.birth_family):
        conflicts.append(StrictTrait.BIRTH_FAMILY)
    if differ(a.first_given_name, b.first_given_name):
        conflicts.append(StrictTrait.GIVEN)
    if a.sex and b.sex and a.sex != b.sex:
        conflicts.append(StrictTrait.SEX)
    if a.birth_date and b.birth_date and a.birth_date != b.birth_date:
        conflicts.append(StrictTrait.BIRTH_DATE)
    if a.birthplace and b.birthplace and a.birthplace != b.birthplace:
        conflicts.append(StrictTrait.BIRTHPLACE)
    return tuple(conflicts)


def merge_traits(a: PatientTraits, b: PatientTraits) -> PatientTraits:
    """`a` completed by `b` where `a` is silent (callers check conflicts first)."""
    return PatientTraits(
        birth_family=a.birth_family or b.birth_family,
        given=a.given or b.given,
        first_given=a.first_given or b.first_given,
        sex=a.sex or b.sex,
        birth_date=a.birth_date or b.birth_date,
        birthplace=a.birthplace or b.birthplace,
    )


def parse_sex(code: str | None) -> Sex | None:
    """CDA administrativeGenderCode / HL7 v2 PID-8 to M, F or U (None when absent)."""
    if code is None:
        return None
    return _SEXES.get(code.strip().upper())


def hl7_date_to_iso(value: str | None) -> str | None:
    """HL7 date/time (YYYY[MM[DD[...]]]) to the ISO date part; None when not a date."""
    if not value:
        return None
    digits = value.strip()[:8]
    if not digits.isdigit() or len(digits) not in (4, 6, 8):
        return None
    parts = [digits[0:4], digits[4:6], digits[6:8]]
    return "-".join(p for p in parts if p)
