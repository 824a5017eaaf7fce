"""S/MIME encryption: AES-GCM AuthEnvelopedData (RFC 5083/5084) and AES-CBC EnvelopedData.

CBC goes through cryptography's PKCS7EnvelopeBuilder and pkcs7_decrypt_der. GCM is not offered
by cryptography's PKCS#7 API, so the AuthEnvelopedData is assembled with asn1crypto's CMS
structures around cryptography's AESGCM and RSA key transport. GCM is the default: CBC
ciphertext is malleable, which is what the EFAIL "CBC gadget" attacks exploit, while GCM
refuses any modified byte.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import io
import os
from collections.abc import Sequence
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Literal

from asn1crypto import algos, cms, core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7

from mssgate.errors import MssgateError
from mssgate.smime.extract import PKCS7_MIME_TYPES, parse_headers
from mssgate.smime.rawmime import header_fields, split_head_body
from mssgate.smime.recipients import MAX_RECIPIENT_INFOS, count_at_most
from mssgate.smime.sign import base64_lines, split_entity

EncryptionMode = Literal["aes-gcm", "aes-cbc"]
KeyTransport = Literal["rsa-oaep", "rsa-pkcs1v15"]

_GCM_KEY_BYTES = {"aes128_gcm": 16, "aes192_gcm": 24, "aes256_gcm": 32}
_GCM_TAG_BYTES = 16
_OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class DecryptionError(MssgateError):
    """The message cannot be decrypted by us, or what it decrypts to is not acceptable."""


class EncryptionError(MssgateError):
    """The message cannot be encrypted to these recipients."""


class GcmParameters(core.Sequence):  # type: ignore[misc]
    """GCMParameters (RFC 5084 §3.2); asn1crypto knows the GCM OIDs but not their parameters."""

    _fields = [  # noqa: RUF012 - the asn1crypto declaration style
        ("nonce", core.OctetString),
        ("icv_len", core.Integer, {"default": 12}),
    ]


def encrypt(
    mime_entity: bytes,
    recipients: Sequence[x509.Certificate],
    *,
    mode: EncryptionMode = "aes-gcm",
    key_transport: KeyTransport = "rsa-oaep",
) -> bytes:
    """`mime_entity` (a whole message) encrypted to every certificate in `recipients`.

    Message-level headers stay readable on the outer message (servers route on them);
    Content-* headers and the body are encrypted. Recipients need RSA keys: the IGC-Santé
    certificates are RSA, and ECDH key agreement is not implemented. `key_transport` only
    applies to GCM; cryptography's CBC builder always uses PKCS#1 v1.5.
    """
    if not recipients:
        raise EncryptionError("at least one recipient certificate is needed")
    for cert in recipients:
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise EncryptionError("only recipients with RSA keys are supported")
    outer, entity = split_entity(mime_entity)
    if not any(f.name == "content-type" for f in header_fields(split_head_body(entity)[0])):
        # RFC 2045 §5.2's implicit type made explicit: once encrypted, the entity stands
        # alone, and a reader (ours: `clean_entity`) wants it to say what it is.
        entity = b"Content-Type: text/plain; charset=us-ascii\r\n" + entity
    if mode == "aes-gcm":
        der = _auth_enveloped(entity, recipients, key_transport)
        smime_type = b"authEnveloped-data"
    elif mode == "aes-cbc":
        builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity)
        for cert in recipients:
            builder = builder.add_recipient(cert)
        builder = builder.set_content_encryption_algorithm(algorithms.AES256)
        der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        smime_type = b"enveloped-data"
    else:
        raise EncryptionError(f"unknown encryption mode {mode!r}")
    return outer + b"".join(
        [
            b"MIME-Version: 1.0\r\n",
            b"Content-Type: application/pkcs7-mime; smime-type=" + smime_type + b";\r\n",
            b'\tname="smime.p7m"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="smime.p7m"\r\n',
            b"\r\n",
            base64_lines(der),
            b"\r\n",
        ]
    )


def decrypt(
    raw: bytes, key: rsa.RSAPrivateKey, cert: x509.Certificate, *, allow_cbc: bool = True
) -> bytes:
    """The MIME entity inside the encrypted message `raw`, checked and re-serialised.

    Only a message whose top-level entity is application/pkcs7-mime is decrypted: EFAIL's
    direct exfiltration wraps the ciphertext between attacker-written parts, and refusing
    anything but a lone encrypted entity leaves no part to wrap it with. What decrypts must be
    one well-formed MIME entity; it is returned regenerated by the stdlib, never spliced with
    anything else. `allow_cbc=False` refuses EnvelopedData (unauthenticated CBC).
    """
    der = _ciphertext(raw)
    try:
        content_info = cms.ContentInfo.load(der, strict=True)
        kind = content_info["content_type"].native
    except (ValueError, TypeError) as exc:
        raise DecryptionError("the encrypted part is not a CMS object") from exc
    if kind == "authenticated_enveloped_data":
        plaintext = _open_auth_enveloped(content_info["content"], key, cert)
    elif kind == "enveloped_data":
        if not allow_cbc:
            raise DecryptionError("CBC-encrypted (unauthenticated) messages are not accepted")
        try:
            plaintext = pkcs7.pkcs7_decrypt_der(der, cert, key, [])
        except ValueError as exc:
            raise DecryptionError("the message cannot be decrypted with this key") from exc
    else:
        raise DecryptionError(f"the CMS object is {kind}, not encrypted data")
    return clean_entity(plaintext)


def clean_entity(plaintext: bytes) -> bytes:
    """`plaintext` re-generated by the stdlib if it is exactly one well-formed MIME entity.

    Any parser defect (missing header/body separator, unterminated multipart, bad base64...)
    or a missing Content-Type refuses it: a decryption that went wrong, or malleated CBC
    blocks, show up as such defects.
    """
    if not plaintext.strip():
        raise DecryptionError("the decrypted content is empty")
    parser = BytesParser(_class=EmailMessage, policy=email.policy.SMTP)
    entity = parser.parsebytes(plaintext)
    if not isinstance(entity, EmailMessage):  # pragma: no cover - guaranteed by _class
        raise DecryptionError("parser returned an unexpected type")
    if entity.get("content-type") is None:
        raise DecryptionError("the decrypted content has no Content-Type")
    for part in entity.walk():
        if not part.is_multipart():
            part.get_payload(decode=True)  # decoding is what records transfer-encoding defects
        header_defects = [d for _, value in part.items() for d in getattr(value, "defects", ())]
        if part.defects or header_defects:
            names = sorted({type(d).__name__ for d in [*part.defects, *header_defects]})
            raise DecryptionError(f"the decrypted content is not well-formed MIME: {names}")
    buffer = io.BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=email.policy.SMTP).flatten(entity)
    return buffer.getvalue()


def _ciphertext(raw: bytes) -> bytes:
    headers = parse_headers(raw)
    if headers.get_content_type() not in PKCS7_MIME_TYPES:
        raise DecryptionError("the message is not a single S/MIME encrypted entity")
    smime_type = str(headers.get_param("smime-type", "", header="content-type")).lower()
    if smime_type not in ("", "enveloped-data", "authenveloped-data"):
        raise DecryptionError(f"smime-type={smime_type} is not encrypted data")
    encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
    _, _, body = split_head_body(raw)
    if encoding != "base64":
        raise DecryptionError("the encrypted part must be base64-encoded")
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error as exc:
        raise DecryptionError("the encrypted part is not valid base64") from exc


def _auth_enveloped(
    entity: bytes, recipients: Sequence[x509.Certificate], key_transport: KeyTransport
) -> bytes:
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)  # 96 bits: the size GCM is defined for without extra hashing
    sealed = AESGCM(content_key).encrypt(nonce, entity, None)
    ciphertext, tag = sealed[:-_GCM_TAG_BYTES], sealed[-_GCM_TAG_BYTES:]
    infos = [
        cms.RecipientInfo(name="ktri", value=_key_transport_info(cert, content_key, key_transport))
        for cert in recipients
    ]
    algorithm = cms.EncryptionAlgorithm(
        {
            "algorithm": "aes256_gcm",
            "parameters": GcmParameters({"nonce": nonce, "icv_len": _GCM_TAG_BYTES}),
        }
    )
    auth_enveloped = cms.AuthEnvelopedData(
        {
            "version": "v0",
            "recipient_infos": infos,
            "auth_encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": algorithm,
                "encrypted_content": ciphertext,
            },
            "mac": tag,
        }
    )
    content_info = cms.ContentInfo(
        {"content_type": "authenticated_enveloped_data", "content": auth_enveloped}
    )
    return bytes(content_info.dump())


def _key_transport_info(
    cert: x509.Certificate, content_key: bytes, key_transport: KeyTransport
) -> cms.KeyTransRecipientInfo:
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):  # pragma: no cover - checked by encrypt
        raise EncryptionError("only recipients with RSA keys are supported")
    asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    if key_transport == "rsa-oaep":
        encrypted_key = public_key.encrypt(
            content_key,
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
        key_algorithm = cms.KeyEncryptionAlgorithm(
            {
                "algorithm": "rsaes_oaep",
                "parameters": algos.RSAESOAEPParams(
                    {
                        "hash_algorithm": {"algorithm": "sha256"},
                        "mask_gen_algorithm": {
                            "algorithm": "mgf1",
                            "parameters": {"algorithm": "sha256"},
                        },
                    }
                ),
            }
        )
    else:
        encrypted_key = public_key.encrypt(content_key, padding.PKCS1v15())
        key_algorithm = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
    return cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber(
                    {"issuer": asn1_cert.issuer, "serial_number": asn1_cert.serial_number}
                ),
            ),
            "key_encryption_algorithm": key_algorithm,
            "encrypted_key": encrypted_key,
        }
    )


def _open_auth_enveloped(
    auth_enveloped: cms.AuthEnvelopedData, key: rsa.RSAPrivateKey, cert: x509.Certificate
) -> bytes:
    # One message for every failure after the recipient lookup: telling "wrong key" from "bad
    # tag" apart would help an attacker probing with modified ciphertexts.
    refused = DecryptionError("the message cannot be decrypted with this key")
    try:
        info = _our_recipient_info(auth_enveloped, cert)
        content_key = _unwrap_key(info, key)
        content_info = auth_enveloped["auth_encrypted_content_info"]
        algorithm = content_info["content_encryption_algorithm"]
        name = algorithm["algorithm"].native
        if name not in _GCM_KEY_BYTES or len(content_key) != _GCM_KEY_BYTES[name]:
            raise refused
        params = GcmParameters.load(algorithm["parameters"].dump())
        nonce = params["nonce"].native
        tag = auth_enveloped["mac"].native
        if params["icv_len"].native != _GCM_TAG_BYTES or len(tag) != _GCM_TAG_BYTES:
            raise refused
        ciphertext = content_info["encrypted_content"].native
        if not isinstance(ciphertext, bytes):
            raise refused
        # RFC 5083 §2.1: authenticated attributes are authenticated as their DER SET OF.
        auth_attrs = auth_enveloped["auth_attrs"]
        aad = None if auth_attrs.native is None else auth_attrs.untag().dump(force=True)
        return AESGCM(content_key).decrypt(nonce, ciphertext + tag, aad)
    except DecryptionError:
        raise
    except (InvalidTag, ValueError, TypeError, KeyError) as exc:
        raise refused from exc


def _our_recipient_info(
    auth_enveloped: cms.AuthEnvelopedData, cert: x509.Certificate
) -> cms.KeyTransRecipientInfo:
    asn1_cert = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    infos = auth_enveloped["recipient_infos"]
    # Counted from the element headers first, as recipients_of does: iterating would parse
    # every RecipientInfo a peer chose to send (hundreds of thousands in 25 MB).
    if count_at_most(infos.contents or b"", MAX_RECIPIENT_INFOS) > MAX_RECIPIENT_INFOS:
        raise DecryptionError(f"more than {MAX_RECIPIENT_INFOS} RecipientInfos")
    for recipient in infos:
        if recipient.name != "ktri":
            continue
        info = recipient.chosen
        rid = info["rid"]
        if rid.name == "issuer_and_serial_number":
            if (
                rid.chosen["issuer"] == asn1_cert.issuer
                and rid.chosen["serial_number"].native == asn1_cert.serial_number
            ):
                return info
        elif rid.name == "subject_key_identifier" and rid.chosen.native == asn1_cert.key_identifier:
            return info
    raise DecryptionError("the message is not encrypted to this certificate")


def _unwrap_key(info: cms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey) -> bytes:
    algorithm = info["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    encrypted_key = info["encrypted_key"].native
    if name == "rsaes_pkcs1v15":
        return key.decrypt(encrypted_key, padding.PKCS1v15())
    if name == "rsaes_oaep":
        params = algorithm["parameters"]
        digest = _OAEP_HASHES[params["hash_algorithm"]["algorithm"].native]
        mask_gen = params["mask_gen_algorithm"]
        if mask_gen["algorithm"].native != "mgf1":
            raise ValueError("unsupported OAEP mask generation function")
        mgf_digest = _OAEP_HASHES[mask_gen["parameters"]["algorithm"].native]
        label = params["p_source_algorithm"]["parameters"].native or None
        return key.decrypt(
            encrypted_key,
            padding.OAEP(mgf=padding.MGF1(mgf_digest()), algorithm=digest(), label=label),
        )
    raise ValueError(f"unsupported key transport {name}")
