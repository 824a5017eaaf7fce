"""Validation of the names that go into certificates (host names, IPs, mail addresses)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from cryptography import x509

from mssgate.errors import PKIError

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
# RFC 5322 dot-atom local part, minus "/" and "\": addresses name files (EMAIL.key.pem) and a
# slash there would step out of the output folder. Nobody hands out such addresses in MSSanté.
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+)*$")


def dns_name(name: str) -> str:
    """`name` lower-cased if it is a valid ASCII DNS name (a leading `*.` is allowed)."""
    candidate = name.strip().rstrip(".").lower()
    if len(candidate) > 253 or not _DNS_NAME.match(candidate):
        raise PKIError(f"not a valid DNS name (ASCII, xn-- form for IDN): {name!r}")
    return candidate


def mail_address(address: str) -> str:
    """`address` with its domain lower-cased, if it can go in an rfc822Name and a file name."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or len(local) > 64 or not _LOCAL_PART.match(local):
        raise PKIError(f"not a valid mail address: {address!r}")
    if domain.startswith("*"):
        raise PKIError(f"not a valid mail address: {address!r}")
    return f"{local}@{dns_name(domain)}"


def general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for host names and IP literals, in order, without duplicates."""
    entries: list[x509.GeneralName] = []
    for name in names:
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name.strip().strip("[]")))
        except ValueError:
            entry = x509.DNSName(dns_name(name))
        if entry not in entries:
            entries.append(entry)
    if not entries:
        raise PKIError("a certificate needs at least one name")
    return entries


def split_address(address: str) -> tuple[str, str] | None:
    """(local part, lower-cased domain), or None when `address` has no `@`."""
    local, sep, domain = address.strip().rpartition("@")
    if not sep or not local or not domain:
        return None
    return local, domain.lower()
