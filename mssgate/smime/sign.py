"""Sign a message with S/MIME, as multipart/signed (detached) or application/pkcs7-mime (opaque).

The CMS SignedData comes from cryptography's PKCS7SignatureBuilder; the MIME around it is
written here byte by byte so that the first part of a multipart/signed is exactly the bytes
that were signed (the stdlib generator may refold or re-encode, which would break them).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from mssgate.errors import PKIError
from mssgate.smime.rawmime import (
    RawField,
    canonical_crlf,
    ensure_line_end,
    header_fields,
    join_fields,
    split_head_body,
)

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def split_entity(message: bytes) -> tuple[bytes, bytes]:
    """(message-level header fields, MIME entity) of a whole message.

    Content-* fields describe the body and travel with it into the signed (or encrypted)
    entity; the rest (From, To, Subject, Date, Message-ID, Received...) stays on the outer
    message where mail servers and clients read them. MIME-Version is dropped: the outer
    message states its own.
    """
    head, _, body = split_head_body(canonical_crlf(message))
    outer: list[RawField] = []
    inner: list[RawField] = []
    for field in header_fields(head):
        if field.name.startswith("content-"):
            inner.append(RawField(field.name, ensure_line_end(field.raw)))
        elif field.name != "mime-version":
            outer.append(RawField(field.name, ensure_line_end(field.raw)))
    return join_fields(outer), join_fields(inner) + b"\r\n" + body


def sign_message(
    mime_entity: bytes,
    *,
    key: SigningKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    detached: bool = True,
) -> bytes:
    """`mime_entity` (a whole message, headers and body) signed by `key`/`cert`.

    Message-level headers are carried on the outer message, Content-* headers and the body are
    signed. `chain` is added to the SignedData so verifiers can build the path without a
    directory. Detached (multipart/signed) is what every client can read even without S/MIME
    support; opaque hides the content from clients that cannot verify.
    """
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PKIError("S/MIME signing needs an RSA or EC key")
    outer, entity = split_entity(mime_entity)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(entity).add_signer(cert, key, hashes.SHA256())
    for extra in chain:
        builder = builder.add_certificate(extra)
    # Binary: the entity is already canonical; letting the builder convert again could make
    # the signed bytes differ from the transmitted ones.
    options = [pkcs7.PKCS7Options.Binary]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    try:
        der = builder.sign(serialization.Encoding.DER, options)
    except (TypeError, ValueError) as exc:
        raise PKIError(f"cannot sign with this key and certificate: {exc}") from exc
    if detached:
        return outer + _multipart_signed(entity, der)
    return outer + _opaque(der)


def _multipart_signed(entity: bytes, signature: bytes) -> bytes:
    boundary = _boundary(entity)
    return b"".join(
        [
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n',
            b'\tmicalg=sha-256; boundary="' + boundary + b'"\r\n',
            b"\r\n",
            b"This is an S/MIME signed message\r\n",
            b"\r\n--" + boundary + b"\r\n",
            entity,
            b"\r\n--" + boundary + b"\r\n",
            b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="smime.p7s"\r\n',
            b"\r\n",
            base64_lines(signature),
            b"\r\n--" + boundary + b"--\r\n",
        ]
    )


def _opaque(signed_data: bytes) -> bytes:
    return b"".join(
        [
            b"MIME-Version: 1.0\r\n",
            b"Content-Type: application/pkcs7-mime; smime-type=signed-data;\r\n",
            b'\tname="smime.p7m"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="smime.p7m"\r\n',
            b"\r\n",
            base64_lines(signed_data),
            b"\r\n",
        ]
    )


def base64_lines(data: bytes) -> bytes:
    """`data` in base64, 76 characters a line, CRLF between lines, no final line end."""
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


def _boundary(entity: bytes) -> bytes:
    # A random boundary that the signed content cannot contain by chance; checked anyway,
    # since the content is the sender's.
    while True:
        boundary = b"----=_mssgate_" + secrets.token_hex(16).encode("ascii")
        if boundary not in entity:
            return boundary
