"""Pure validators for the identifiers the directory holds: addresses, RPPS and ADELI numbers.

Addresses are stricter than RFC 5321 on purpose: a closed health messaging space decides who
exists, and forms that relays historically interpreted (`%`, `!`, quoted local parts, IP
literals, source routes) have no place in it. Non-ASCII addresses (SMTPUTF8) are refused
until the peers of the space accept them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mssgate.errors import ValidationFailed

MAX_ADDRESS_LENGTH = 254  # RFC 5321 4.5.3.1.3 path limit less the angle brackets
MAX_LOCAL_LENGTH = 64  # RFC 5321 4.5.3.1.1
MAX_LABEL_LENGTH = 63  # RFC 1035 2.3.4

_LOCAL_ATOM = re.compile(r"[a-z0-9_+'=-]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def _fail(value: str, reason: str) -> ValidationFailed:
    return ValidationFailed(f"invalid address {value!r}: {reason}")


def normalize_domain(domain: str) -> str:
    """Returns the domain in lower case, or raises ValidationFailed with the reason."""
    d = domain.strip().lower()
    if d.endswith("."):  # the root label, as in DNS zone files
        d = d[:-1]
    if not d:
        raise ValidationFailed("invalid domain '': empty")
    if not d.isascii():
        raise ValidationFailed(f"invalid domain {domain!r}: only ASCII domains are accepted")
    labels = d.split(".")
    if len(labels) < 2:
        raise ValidationFailed(f"invalid domain {domain!r}: a domain needs at least two labels")
    if len(d) > 253:
        raise ValidationFailed(f"invalid domain {domain!r}: longer than 253 characters")
    for label in labels:
        if not label:
            raise ValidationFailed(f"invalid domain {domain!r}: empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValidationFailed(f"invalid domain {domain!r}: a label is over 63 characters")
        if not _LABEL.fullmatch(label):
            raise ValidationFailed(
                f"invalid domain {domain!r}: label {label!r} is not letters, digits and hyphens"
            )
    if labels[-1].isdigit():
        raise ValidationFailed(f"invalid domain {domain!r}: an IP address is not a domain")
    return d


def normalize_address(address: str) -> str:
    """Returns the address in lower case, or raises ValidationFailed with the reason.

    Lower case everywhere: the space routes on the address as a key (the Annuaire Santé has
    no other), and two mailboxes differing only in case would be a spoofing gift.
    """
    a = address.strip()
    if not a:
        raise _fail(address, "empty")
    if len(a) > MAX_ADDRESS_LENGTH:
        raise _fail(address, f"longer than {MAX_ADDRESS_LENGTH} characters")
    if not a.isascii():
        raise _fail(address, "only ASCII addresses are accepted")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in a):
        raise _fail(address, "contains white space or control characters")
    if a.count("@") != 1:
        raise _fail(address, "needs exactly one '@'")
    local, domain = a.lower().split("@")
    if not local:
        raise _fail(address, "empty local part")
    if len(local) > MAX_LOCAL_LENGTH:
        raise _fail(address, f"local part longer than {MAX_LOCAL_LENGTH} characters")
    for forbidden, what in (("%", "'%'"), ("!", "'!'"), ('"', "quotes"), (":", "':'")):
        if forbidden in local:
            raise _fail(address, f"{what} is not allowed in the local part")
    atoms = local.split(".")
    if any(not atom for atom in atoms):
        raise _fail(address, "empty dot-separated part in the local part")
    for atom in atoms:
        if not _LOCAL_ATOM.fullmatch(atom):
            raise _fail(address, "local part may hold only letters, digits and . _ + ' = -")
    if domain.startswith("["):
        raise _fail(address, "IP literals are not accepted")
    try:
        domain = normalize_domain(domain)
    except ValidationFailed as exc:
        raise _fail(address, str(exc)) from None
    return f"{local}@{domain}"


def luhn_valid(digits: str) -> bool:
    """True when the string of digits ends with its Luhn check digit (ISO/IEC 7812-1)."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` Luhn-valid."""
    for d in "0123456789":
        if luhn_valid(payload + d):
            return d
    raise AssertionError("unreachable: one of ten digits always completes a Luhn number")


IdType = Literal["RPPS", "ADELI"]


@dataclass(frozen=True, slots=True)
class PractitionerId:
    """A professional's national identifier.

    `idnat` is the form the Annuaire and CDA documents use (root 1.2.250.1.71.4.2.1):
    '8' + RPPS (11 digits) or '0' + ADELI (9 digits).
    """

    id_type: IdType
    number: str

    @property
    def idnat(self) -> str:
        return ("8" if self.id_type == "RPPS" else "0") + self.number


def parse_practitioner_id(value: str) -> PractitionerId:
    """Accepts an RPPS (11 digits), an ADELI (9 digits), or either in its '8…'/'0…' IdNat form.

    Both RPPS and ADELI end with a Luhn key; a wrong key is the typo we can catch.
    """
    v = value.strip()
    if not v.isascii() or not v.isdigit():
        raise ValidationFailed(f"invalid RPPS/ADELI {value!r}: digits only")
    if len(v) == 12 and v[0] == "8":
        v, kind = v[1:], "RPPS"
    elif len(v) == 10 and v[0] == "0":
        v, kind = v[1:], "ADELI"
    elif len(v) == 11:
        kind = "RPPS"
    elif len(v) == 9:
        kind = "ADELI"
    else:
        raise ValidationFailed(
            f"invalid RPPS/ADELI {value!r}: expected 11 digits (RPPS) or 9 digits (ADELI)"
        )
    if not luhn_valid(v):
        raise ValidationFailed(f"invalid {kind} {value!r}: the check digit (Luhn key) is wrong")
    return PractitionerId(id_type="RPPS" if kind == "RPPS" else "ADELI", number=v)
