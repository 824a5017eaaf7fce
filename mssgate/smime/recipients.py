"""Whom an encrypted message is encrypted to, read from its RecipientInfos without any key.

A message a local user signed and then encrypted for a mailbox whose key the gateway does not
hold passes unopened (docs/smime.md, "Sign-then-encrypt from stock clients"). The gateway
cannot see inside, but it can see who can: each RecipientInfo of the EnvelopedData or
AuthEnvelopedData names a certificate by issuer and serial number or by subject key
identifier (RFC 5652 §6.2). Every one of them must name a certificate the gateway expects
(registered for a recipient, or for the sender: clients encrypt to themselves too; valid now
and not revoked), so that what is delivered can be read by its recipients.

What this cannot promise: a RecipientInfo's identifier is a label the sender writes, and
nothing without the private key tells whether the content key under it was encrypted to that
certificate's public key or to another one. An honest client's mistakes are caught (a
stranger's certificate, an old one, one forgotten recipient); a sender set on letting someone
else read the message is not stopped by this check (nor by encrypt-then-sign, which skips it).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import cms  # type: ignore[import-untyped]
from asn1crypto import parser as asn1_parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mssgate.smime.extract import PKCS7_MIME_TYPES, MalformedSigned, parse_headers
from mssgate.smime.layers import cms_bytes
from mssgate.smime.rawmime import split_head_body

# A message for the whole directory names a few hundred; beyond this it is not mail from a
# practitioner's client, and each RecipientInfo costs a lookup.
MAX_RECIPIENT_INFOS = 1000

_ENCRYPTED = frozenset({"enveloped_data", "authenticated_enveloped_data"})


class UnreadableEnvelope(ValueError):
    """The top-level entity is not an encrypted CMS object whose recipients can be read."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient as a RecipientInfo names it; `description` is for logs, never replies."""

    issuer_serial: tuple[str, int] | None = None  # (normalised issuer, serial)
    key_id: bytes | None = None
    description: str = ""


@dataclass(frozen=True)
class KnownCertificates:
    """The identifiers of the certificates a message may be encrypted to."""

    issuer_serials: frozenset[tuple[str, int]]
    key_ids: frozenset[bytes]

    @classmethod
    def of(cls, certificates: Iterable[x509.Certificate]) -> KnownCertificates:
        pairs = set()
        key_ids = set()
        for cert in certificates:
            parsed = asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))
            pairs.add((parsed.issuer.hashable, parsed.serial_number))
            if parsed.key_identifier is not None:
                key_ids.add(bytes(parsed.key_identifier))
        return cls(frozenset(pairs), frozenset(key_ids))

    def names(self, recipient: Recipient) -> bool:
        if recipient.issuer_serial is not None:
            return recipient.issuer_serial in self.issuer_serials
        return recipient.key_id is not None and recipient.key_id in self.key_ids


def usable_for_encryption(
    certificates: Iterable[x509.Certificate], *, moment: datetime, crls: Sequence[bytes]
) -> list[x509.Certificate]:
    """The certificates a message may be encrypted to at `moment`: valid then and not on
    any of the `crls` (the lists in force, PEM or DER bytes, as `policy.crl_files` has them).

    Registered is not enough. An expired certificate's key may be gone (the holder renewed
    and threw the old one away), so its recipient cannot read what is delivered; a revoked
    one's key may be in someone else's hands (keyCompromise). The gateway encrypts to neither
    (`Certificates.encryption_certificate`, RFC 8550 §4.1) and takes neither as a
    recipient's either. A CRL that cannot be read, or names another issuer, revokes nothing
    here: the signature check is where an unusable CRL refuses mail.
    """
    lists = []
    for data in crls:
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                lists.append(x509.load_pem_x509_crl(data))
            else:
                lists.append(x509.load_der_x509_crl(data))
        except ValueError:
            continue
    usable = []
    for cert in certificates:
        if not (cert.not_valid_before_utc <= moment < cert.not_valid_after_utc):
            continue
        if any(
            crl.issuer == cert.issuer
            and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
            for crl in lists
        ):
            continue
        usable.append(cert)
    return usable


def recipients_of(raw: bytes) -> list[Recipient]:
    """The recipients of the encrypted top-level entity of `raw` (a message or an entity).

    A RecipientInfo that names no certificate (a shared key-encryption key, a password, an
    unknown kind) is returned without identifiers: no certificate matches it.
    """
    content_info = _content_info(raw)
    found: list[Recipient] = []
    try:
        infos = content_info["content"]["recipient_infos"]
        # Counted from the element headers before asn1crypto parses any: len() would build
        # every one of them, and a 25 MB message holds some 500,000 minimal RecipientInfos
        # (over a second of CPU to refuse it).
        count = count_at_most(infos.contents or b"", MAX_RECIPIENT_INFOS)
        if count == 0:
            raise UnreadableEnvelope("no RecipientInfo")
        if count > MAX_RECIPIENT_INFOS:
            raise UnreadableEnvelope(f"more than {MAX_RECIPIENT_INFOS} RecipientInfos")
        for info in infos:
            if info.name == "ktri":
                found.append(_named(info.chosen["rid"]))
            elif info.name == "kari":
                # Key agreement (ECDH): each encrypted key names its recipient's certificate.
                keys = info.chosen["recipient_encrypted_keys"]
                room = MAX_RECIPIENT_INFOS - len(found)
                count = count_at_most(keys.contents or b"", room)
                if count == 0 or count > room:
                    raise UnreadableEnvelope("bad number of key-agreement recipients")
                found.extend(_named(key["rid"]) for key in keys)
            else:
                found.append(Recipient(description=f"{info.name}: not a certificate"))
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, UnreadableEnvelope):
            raise
        raise UnreadableEnvelope(f"a RecipientInfo cannot be read: {exc}") from exc
    return found


def count_at_most(contents: bytes, limit: int) -> int:
    """How many elements the contents of a SET OF hold, counted up to `limit` + 1 only."""
    pointer, count, end = 0, 0, len(contents)
    while pointer < end and count <= limit:
        _, pointer = asn1_parser._parse(contents, end, pointer, lengths_only=True)
        count += 1
    return count


def _content_info(raw: bytes) -> cms.ContentInfo:
    try:
        headers = parse_headers(raw)
    except MalformedSigned as exc:
        raise UnreadableEnvelope(str(exc)) from exc
    if headers.get_content_type() not in PKCS7_MIME_TYPES:
        raise UnreadableEnvelope("the top-level entity is not application/pkcs7-mime")
    _, _, body = split_head_body(raw)
    try:
        content_info = cms.ContentInfo.load(cms_bytes(headers, body))
        kind = content_info["content_type"].native
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise UnreadableEnvelope(f"not a CMS object: {exc}") from exc
    if kind not in _ENCRYPTED:
        raise UnreadableEnvelope(f"the CMS object is {kind}, not encrypted data")
    return content_info


def _named(rid: object) -> Recipient:
    """A recipient identifier (KeyTrans or KeyAgreement): issuer and serial, or a key id."""
    name = getattr(rid, "name", None)
    chosen = getattr(rid, "chosen", None)
    if name == "issuer_and_serial_number" and chosen is not None:
        issuer = chosen["issuer"]
        serial = chosen["serial_number"].native
        return Recipient(
            issuer_serial=(issuer.hashable, serial),
            description=f"issuer={issuer.human_friendly} serial={serial:X}",
        )
    if name == "subject_key_identifier" and chosen is not None:
        key_id = bytes(chosen.native)
        return Recipient(key_id=key_id, description=f"subjectKeyIdentifier={key_id.hex()}")
    if name == "r_key_id" and chosen is not None:
        # asn1crypto has two RecipientKeyIdentifier classes; key agreement uses the snake_case one.
        key_id = bytes(chosen["subject_key_identifier"].native)
        return Recipient(key_id=key_id, description=f"subjectKeyIdentifier={key_id.hex()}")
    return Recipient(description=f"{name}: unknown recipient identifier")
