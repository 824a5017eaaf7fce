"""The Authentication-Results header field (RFC 8601) that the gateway adds to accepted mail.

Downstream (the mailbox store, the webmail, the LPS clients) trusts these results only because
the gateway removes any field claiming to come from its own authserv-id before adding its own
(RFC 8601 §5): otherwise a sender could forge "smime=pass" in the message it submits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

from mssgate.dkim import DkimResult, DkimStatus
from mssgate.headers import header_block
from mssgate.smime.rawmime import header_fields, join_fields
from mssgate.smime.verdict import FailureReason, SignatureVerdict

FIELD_NAME = "Authentication-Results"

# RFC 2045 token: printable US-ASCII except SPACE and tspecials.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_ADDRESS = re.compile(rf"(?:{_DOT_ATOM})?@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A message encrypted with the signature inside (sign-then-encrypt to a mailbox whose key the
# gateway does not hold): no result the gateway could vouch for, and a reader must not take
# the absence of `smime=` for a message nobody signed.
SEALED = "smime=none (encrypted, signature not visible to the gateway)"

# RFC 7281 §3 result values for the smime method: "policy" is a good signature that local
# policy refuses (not the sender's certificate), "permerror" one that cannot be evaluated.
_SMIME_RESULT: dict[FailureReason, str] = {
    FailureReason.UNSIGNED: "none",
    FailureReason.MALFORMED: "permerror",
    FailureReason.TAMPERED: "fail",
    FailureReason.BAD_SIGNATURE: "fail",
    FailureReason.UNTRUSTED_CHAIN: "fail",
    FailureReason.EXPIRED: "fail",
    FailureReason.NOT_YET_VALID: "fail",
    FailureReason.REVOKED: "fail",
    FailureReason.REVOCATION_STALE: "temperror",
    FailureReason.BAD_KEY_USAGE: "fail",
    FailureReason.ADDRESS_MISMATCH: "policy",
    FailureReason.NOT_REGISTERED: "policy",
}


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """How the SMTP session was protected; `version` None means no TLS at all."""

    version: str | None
    cipher: str | None = None
    client_certificate_verified: bool = False


def authentication_results(
    authserv_id: str,
    *,
    smime: SignatureVerdict | None = None,
    dkim: DkimResult | None = None,
    auth_identity: str | None = None,
    tls: TlsInfo | None = None,
    smime_sealed: bool = False,
) -> str:
    """The field value (after `Authentication-Results:`), resinfos folded one per line.

    Each argument left None is left out; with none at all the value says `none` (RFC 8601
    §2.2: no authentication was done). `smime_sealed` (without `smime`): the message passed
    encrypted with its signature inside, which the reader's client checks, not the gateway.
    """
    if not _TOKEN.fullmatch(authserv_id):
        raise ValueError(f"authserv-id must be a host name token: {authserv_id!r}")
    results: list[str] = []
    if smime is not None:
        results.append(_smime(smime))
    elif smime_sealed:
        results.append(SEALED)
    if dkim is not None:
        results.extend(_dkim(dkim))
    if auth_identity is not None:
        results.append(f"auth=pass smtp.auth={_pvalue(auth_identity)}")
    if tls is not None:
        results.append(_tls(tls))
    if not results:
        return f"{authserv_id}; none"
    return authserv_id + "".join(f";\r\n\t{result}" for result in results)


def authentication_results_field(
    authserv_id: str,
    *,
    smime: SignatureVerdict | None = None,
    dkim: DkimResult | None = None,
    auth_identity: str | None = None,
    tls: TlsInfo | None = None,
    smime_sealed: bool = False,
) -> bytes:
    """The whole header field, name and CRLF included, ready to prepend to a message."""
    value = authentication_results(
        authserv_id,
        smime=smime,
        dkim=dkim,
        auth_identity=auth_identity,
        tls=tls,
        smime_sealed=smime_sealed,
    )
    return f"{FIELD_NAME}: {value}\r\n".encode()


def remove_own_results(message: bytes, authserv_id: str) -> bytes:
    """`message` without the Authentication-Results fields that claim to be from `authserv_id`.

    Only those fields are cut out; every other byte (other fields, their folding, the body)
    stays as received, so DKIM and S/MIME signatures over the rest still verify.
    """
    head = header_block(message)
    wanted = _normalise_id(authserv_id)
    fields = header_fields(head)
    kept = [
        field
        for field in fields
        if field.name != FIELD_NAME.lower()
        or _normalise_id(_authserv_id(field.value.decode("utf-8", "replace"))) != wanted
    ]
    if len(kept) == len(fields):
        return message  # the usual case: no copy of a body that may weigh 25 MB
    return join_fields(kept) + message[len(head) :]


def _smime(verdict: SignatureVerdict) -> str:
    if verdict.reason is None:
        result = "smime=pass"
        if verdict.signed_by_gateway:
            result += " (signed by gateway for authenticated user)"
    else:
        result = f'smime={_SMIME_RESULT[verdict.reason]} reason="{verdict.reason.value}"'
    cert = verdict.signer_certificate
    if cert is None:
        return result
    identifiers = _mail_addresses(cert)
    properties = []
    if identifiers:
        properties.append(f"body.smime-identifier={_pvalue(identifiers[0])}")
    properties.append(f"body.smime-serial={cert.serial_number:X}")
    properties.append(f"body.smime-issuer={_pvalue(cert.issuer.rfc4514_string())}")
    return " ".join([result, *properties])


def _dkim(result: DkimResult) -> list[str]:
    if not result.signatures:
        return ["dkim=none"]
    lines = []
    for signature in result.signatures:
        parts = [f"dkim={signature.status.value}"]
        if signature.status is not DkimStatus.PASS and signature.detail:
            parts.append(f"({_comment(signature.detail[:80])})")
        if signature.domain:
            parts.append(f"header.d={_pvalue(signature.domain)}")
        if signature.selector:
            parts.append(f"header.s={_pvalue(signature.selector)}")
        if signature.algorithm:
            parts.append(f"header.a={_pvalue(signature.algorithm)}")
        lines.append(" ".join(parts))
    return lines


def _tls(tls: TlsInfo) -> str:
    # RFC 8601 registers no TLS method and no "tls" ptype; an "x-" method that readers ignore
    # unless they know it, with the details in a comment, keeps the field valid.
    if tls.version is None:
        return "x-tls=none"
    details = [tls.version]
    if tls.cipher:
        details.append(tls.cipher)
    if tls.client_certificate_verified:
        details.append("client-certificate=verified")
    return f"x-tls=pass ({_comment(' '.join(details))})"


def _pvalue(value: str) -> str:
    """A property value: a token or an address as is, anything else as a quoted-string."""
    clean = _CONTROL.sub("", value)
    if _TOKEN.fullmatch(clean) or _ADDRESS.fullmatch(clean):
        return clean
    escaped = clean.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _comment(text: str) -> str:
    clean = _CONTROL.sub(" ", text)
    return re.sub(r"([()\\])", r"\\\1", clean)


def _mail_addresses(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.RFC822Name))


def _authserv_id(value: str) -> str:
    """The authserv-id that starts a field value: CFWS skipped, a quoted-string unquoted."""
    position = _skip_cfws(value, 0)
    if value.startswith('"', position):
        chars: list[str] = []
        position += 1
        while position < len(value) and value[position] != '"':
            if value[position] == "\\" and position + 1 < len(value):
                position += 1
            chars.append(value[position])
            position += 1
        return "".join(chars)
    match = re.compile(r"[^\s;()]*").match(value, position)
    return match.group(0) if match else ""


def _skip_cfws(value: str, position: int) -> int:
    depth = 0
    while position < len(value):
        char = value[position]
        if char == "\\" and depth:
            position += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not char.isspace() and not depth:
            return position
        position += 1
    return position


def _normalise_id(authserv_id: str) -> str:
    return authserv_id.strip().rstrip(".").lower()
