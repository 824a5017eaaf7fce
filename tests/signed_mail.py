"""Signed messages with something riding outside what the signature covers (issue 12 B).

Each builder starts from a message that `mssgate.smime.sign_message` signed and verifies, and
adds what a sender controls without breaking the signature: the signature part's own header
fields, unsigned attributes of the CMS SignerInfo, the preamble and epilogue of the
multipart/signed, parts next to it in a multipart/mixed, a signature layer around another.
"""

from __future__ import annotations

import base64
import re

from asn1crypto import cms, core  # type: ignore[import-untyped]

from mssgate.smime.rawmime import split_head_body
from mssgate.smime.sign import base64_lines

# An OID under a private arc: any unsigned attribute will do, none is checked.
_SMUGGLE_OID = "1.3.6.1.4.1.99999.12.4"


def with_unsigned_attribute(der: bytes, payload: bytes) -> bytes:
    """The CMS SignedData `der` with `payload` in an unsigned attribute of its first signer.

    Unsigned attributes are outside the signature value: the result verifies as `der` did.
    The attribute is the last thing in the DER, so a zip placed there is found by a reader
    that looks for the end of central directory at the end of the bytes.
    """
    info = cms.ContentInfo.load(der)
    signer = info["content"]["signer_infos"][0]
    attribute = cms.CMSAttribute({"type": _SMUGGLE_OID, "values": [core.OctetString(payload)]})
    signer["unsigned_attrs"] = cms.CMSAttributes([attribute])
    return bytes(info.dump(force=True))


def _boundary(message: bytes) -> bytes:
    head, _, _ = split_head_body(message)
    found = re.search(rb'boundary="([^"]+)"', head)
    assert found is not None, "not a multipart/signed from sign_message"
    return found.group(1)


def smuggle_in_signature(signed: bytes, payload: bytes, filename: str = "IHE_XDM.ZIP") -> bytes:
    """A multipart/signed whose signature part carries `payload` in an unsigned attribute and
    names itself `filename` (its header fields are not signed either)."""
    boundary = _boundary(signed)
    delimiter = b"\r\n--" + boundary + b"\r\n"
    before, signature_part = signed.rsplit(delimiter, 1)
    _, _, body = split_head_body(signature_part)
    encoded, close, rest = body.partition(b"\r\n--" + boundary + b"--")
    der = base64.b64decode(b"".join(encoded.split()))
    part = (
        f'Content-Type: application/pkcs7-signature; name="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n'
    ).encode() + base64_lines(with_unsigned_attribute(der, payload))
    return before + delimiter + part + close + rest


def _attachment(data: bytes, filename: str) -> bytes:
    return (
        f"Content-Type: application/zip; name={filename}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename={filename}\r\n\r\n"
    ).encode() + base64_lines(data)


def in_preamble_and_epilogue(signed: bytes, data: bytes, filename: str = "IHE_XDM.ZIP") -> bytes:
    """A multipart/signed whose preamble and epilogue each hold a whole MIME part with `data`:
    text outside every part, which a parser must never take for one."""
    boundary = _boundary(signed)
    opening = b"\r\n--" + boundary + b"\r\n"
    head_and_preamble, rest = signed.split(opening, 1)
    extra = b"\r\n" + _attachment(data, filename) + b"\r\n"
    return head_and_preamble + extra + opening + rest + extra


def wrapped_in_mixed(signed: bytes, data: bytes, filename: str = "IHE_XDM.ZIP") -> bytes:
    """multipart/mixed holding the signed entity and, next to it, an unsigned part `data`:
    what a mailing list footer or an attacker's extra part looks like."""
    head, _, body = split_head_body(signed)
    lines = head.split(b"\r\n")
    outer = [ln for ln in lines if ln and not ln.lower().startswith((b"content-", b"mime-", b"\t"))]
    inner = [ln for ln in lines if ln.lower().startswith((b"content-", b"\t"))]
    boundary = b"mixed-outside-the-signature"
    return (
        b"\r\n".join(outer)
        + b"\r\nMIME-Version: 1.0\r\n"
        + b'Content-Type: multipart/mixed; boundary="'
        + boundary
        + b'"\r\n\r\n--'
        + boundary
        + b"\r\n"
        + b"\r\n".join(inner)
        + b"\r\n\r\n"
        + body
        + b"\r\n--"
        + boundary
        + b"\r\n"
        + _attachment(data, filename)
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )


def two_patients_cda(first: bytes, second: bytes) -> bytes:
    """The CDA `first` with the recordTarget of the CDA `second` added after its own: one
    document naming two patients."""
    found = re.search(rb"<recordTarget>.*?</recordTarget>", second, re.DOTALL)
    assert found is not None
    end = first.index(b"</recordTarget>") + len(b"</recordTarget>")
    return first[:end] + found.group(0) + first[end:]
