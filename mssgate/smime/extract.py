"""Find the signed content and the CMS signature in a raw message.

Two shapes are S/MIME signed (RFC 8551 §3.5): multipart/signed, whose first part is signed as
transmitted and whose second part holds a detached CMS SignedData; and application/pkcs7-mime
with smime-type=signed-data, whose body is a SignedData that encapsulates the content. The
signature must cover the whole message: a signed part nested inside another multipart is not a
signed message (a list footer or an attacker's extra part would ride along unsigned).
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser

from mssgate.headers import SharedHeaderRegistry
from mssgate.smime.rawmime import canonical_crlf, split_head_body

SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
PKCS7_MIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
# A bound on what is decoded from base64 before parsing any ASN.1: signatures with a chain are a
# few kilobytes, opaque messages carry the whole content.
MAX_CMS_BYTES = 64 * 1024 * 1024


class NotSigned(Exception):
    """The message carries no S/MIME signature over its whole content."""


class MalformedSigned(Exception):
    """The message says it is S/MIME signed but its structure cannot be read."""


@dataclass(frozen=True, slots=True)
class SignedParts:
    """The pieces a CMS verifier needs, and the message headers to check the sender against."""

    headers: EmailMessage
    cms_der: bytes
    # multipart/signed: the canonical bytes of the first part; opaque: None (inside the CMS).
    detached_content: bytes | None


# email.policy.default in every respect but the registry above.
_POLICY = email.policy.default.clone(header_factory=SharedHeaderRegistry())


def parse_headers(raw: bytes) -> EmailMessage:
    """The message's header block read by the stdlib parser (modern policy), body excluded."""
    head, _, _ = split_head_body(raw)
    parser = BytesParser(_class=EmailMessage, policy=_POLICY)
    message = parser.parsebytes(head + b"\r\n", headersonly=True)
    if not isinstance(message, EmailMessage):  # pragma: no cover - guaranteed by _class
        raise MalformedSigned("parser returned an unexpected type")
    return message


# A message is split up to four times on its way in (gateway signing, layering, the signature
# check, the documents' signed content); the last ones split are kept, the small ones only.
_RECENT_MAX_BYTES = 256 * 1024


def extract_signed(raw: bytes) -> SignedParts:
    """Split `raw` into headers, CMS bytes and (for detached signatures) the signed content.

    The same bytes give the same parts, which no caller changes: those of a recent message
    of up to 256 KiB are handed out again (32 kept, at most 16 MiB with their parts). A
    message that is not signed, or badly, raises each time (exceptions are not kept).
    """
    if type(raw) is bytes and len(raw) <= _RECENT_MAX_BYTES:
        return _recent_parts(raw)
    return _extract_signed(raw)


@functools.lru_cache(maxsize=32)
def _recent_parts(raw: bytes) -> SignedParts:
    return _extract_signed(raw)


def _extract_signed(raw: bytes) -> SignedParts:
    headers = parse_headers(raw)
    content_type = headers.get_content_type()
    if content_type == "multipart/signed":
        protocol = _param(headers, "protocol")
        if protocol is None or protocol.lower() not in SIGNATURE_TYPES:
            raise NotSigned(f"multipart/signed with protocol {protocol!r}")
        boundary = headers.get_boundary()
        if not boundary:
            raise MalformedSigned("multipart/signed without a boundary")
        try:
            # RFC 2046 boundaries are 7-bit; the parser hands 8-bit bytes back as surrogates.
            delimiter = boundary.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedSigned("multipart/signed boundary is not ASCII") from None
        _, _, body = split_head_body(raw)
        content, signature_part = _two_parts(_canonical(body), delimiter)
        return SignedParts(headers, _signature_der(signature_part), content)
    if content_type in PKCS7_MIME_TYPES:
        smime_type = (_param(headers, "smime-type") or "").lower()
        if smime_type and smime_type != "signed-data":
            raise NotSigned(f"application/pkcs7-mime with smime-type={smime_type}")
        _, _, body = split_head_body(raw)
        der = _decode_body(headers, body)
        return SignedParts(headers, der, None)
    raise NotSigned(f"top-level content type is {content_type}")


def _param(headers: EmailMessage, name: str) -> str | None:
    value = headers.get_param(name, header="content-type")
    if value is None or isinstance(value, str):
        return value
    # RFC 2231 encoded parameters come back as (charset, language, value).
    return str(value[2])


def _canonical(body: bytes) -> bytes:
    # Mail from SMTP is already CRLF throughout: two counts (memchr speed) tell, and spare the
    # regular expression of canonical_crlf a scan of the whole body. Every CRLF holds exactly
    # one LF, so equal counts mean no bare LF.
    if body.count(b"\n") == body.count(b"\r\n"):
        return body
    return canonical_crlf(body)


def _two_parts(body: bytes, boundary: bytes) -> tuple[bytes, bytes]:
    # RFC 2046 §5.1.1: a delimiter starts a line (its leading CRLF belongs to it), may be
    # followed by linear white space, and the close delimiter has a trailing "--".
    # Each delimiter is (start, end, is_close); start includes the leading CRLF.
    delimiters = _delimiters(body, boundary)
    opens = [(start, end) for start, end, close in delimiters if not close]
    closes = [(start, end) for start, end, close in delimiters if close]
    if len(opens) != 2 or not closes or closes[0][0] < opens[1][1]:
        raise MalformedSigned(
            f"multipart/signed needs exactly two parts ({len(opens)} found, "
            f"{'no' if not closes else 'a'} close delimiter)"
        )
    first, second, close = opens[0], opens[1], closes[0]
    content = body[_after_line(body, first[1]) : second[0]]
    signature = body[_after_line(body, second[1]) : close[0]]
    return content, signature


def _delimiters(body: bytes, boundary: bytes) -> list[tuple[int, int, bool]]:
    tail = rb"(?P<close>--)?[ \t]*(?=\r\n|\Z)"
    if b"\r" in boundary or b"\n" in boundary:  # (RFC 2231 can encode them) the plain way
        pattern = re.compile(rb"(?:\A|\r\n)--" + re.escape(boundary) + tail)
        return [(m.start(), m.end(), m.group("close") is not None) for m in pattern.finditer(body)]
    # The same delimiters, found faster: a pattern that starts with a literal lets the regular
    # expression engine skip ahead to each "--boundary", where an alternation first tests every
    # position. The line start is checked after. Without CR or LF in the boundary no candidate
    # can overlap a real delimiter's CRLF, so both ways find the same matches.
    pattern = re.compile(b"--" + re.escape(boundary) + tail)
    found = []
    for m in pattern.finditer(body):
        if m.start() == 0:
            start = 0
        elif body[m.start() - 2 : m.start()] == b"\r\n":
            start = m.start() - 2
        else:
            continue
        found.append((start, m.end(), m.group("close") is not None))
    return found


def _after_line(body: bytes, position: int) -> int:
    return position + 2 if body.startswith(b"\r\n", position) else position


def _signature_der(part: bytes) -> bytes:
    # Only the part's header fields are read from the parser (the body is decoded below):
    # headersonly spares it splitting the base64 into lines it would never use.
    parser = BytesParser(_class=EmailMessage, policy=_POLICY)
    message = parser.parsebytes(part, headersonly=True)
    if not isinstance(message, EmailMessage):  # pragma: no cover - guaranteed by _class
        raise MalformedSigned("parser returned an unexpected type")
    if message.get_content_type() not in SIGNATURE_TYPES:
        raise MalformedSigned(f"second part is {message.get_content_type()}, not a signature")
    _, _, body = split_head_body(part)
    return _decode_body(message, body)


def _decode_body(headers: EmailMessage, body: bytes) -> bytes:
    encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":
        compact = body.translate(None, b" \t\r\n")
        if len(compact) > MAX_CMS_BYTES * 4 // 3 + 4:
            raise MalformedSigned("signature too large")
        try:
            der = binascii.a2b_base64(compact, strict_mode=True)
        except binascii.Error as exc:
            raise MalformedSigned(f"bad base64 in the CMS part: {exc}") from exc
    elif encoding in ("", "binary", "7bit", "8bit"):
        der = body
    else:
        raise MalformedSigned(f"unexpected transfer encoding {encoding!r} for a CMS part")
    if not der:
        raise MalformedSigned("empty CMS part")
    return der
