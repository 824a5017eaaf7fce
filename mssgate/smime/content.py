"""What the signature of a message covers: the only part of it the document pipeline reads.

A signed message carries bytes no signature covers: the header fields of the signature part,
the unsigned attributes inside the CMS, the preamble and epilogue of a multipart/signed. The
sender can put anything there, a zip named IHE_XDM.ZIP included, and it would still pass as
signed. `signed_content` gives back the message with its body replaced by the signed entity,
found by the same rules as the verifier (`extract_signed`), layer after layer:

- multipart/signed: its first part, exactly the bytes the detached signature covers;
- application/pkcs7-mime signed-data (opaque, `openssl smime -sign -nodetach`): the
  encapsulated content of the SignedData;
- anything else (clear MIME, an encrypted entity) ends the unwrapping.

A signed entity inside a signed entity (signed twice, or the inner signature of a triple wrap
once the gateway opened it) is unwrapped too: the outer signature covers the inner one, but a
signature is never a document.

The message has passed the signature check at DATA (docs/smime.md): this only finds what it
covered, it verifies nothing. A message without a signature at its top comes back unchanged:
with signatures required, only one the gateway opened itself after checking the signature
around it (encrypt-then-sign) looks like that; with signatures off, nothing was checked and the
whole message is what there is.
"""

from __future__ import annotations

from typing import Final

from asn1crypto import cms  # type: ignore[import-untyped]

from mssgate.smime.extract import MalformedSigned, NotSigned, extract_signed
from mssgate.smime.layers import replace_entity

# Signed, signed again, and once more inside a triple wrap: real mail stops there. A deeper
# pile is made by hand, and each opaque layer is another copy of the content in memory.
MAX_SIGNATURE_LAYERS: Final = 4


def signed_content(message: bytes) -> bytes:
    """`message`'s own header fields over the innermost entity its signatures cover.

    Raises `MalformedSigned` when a layer says it is signed and cannot be read, or when there
    are more than `MAX_SIGNATURE_LAYERS` of them: the caller holds the message whole.
    """
    entity = message
    for _ in range(MAX_SIGNATURE_LAYERS):
        inner = _signed_entity(entity)
        if inner is None:
            break
        entity = inner
    else:
        if _signed_entity(entity) is not None:
            raise MalformedSigned(f"more than {MAX_SIGNATURE_LAYERS} nested signatures")
    if entity is message:
        return message
    return replace_entity(message, entity)


def _signed_entity(entity: bytes) -> bytes | None:
    """The entity the signature at the top of `entity` covers; None when there is none."""
    try:
        parts = extract_signed(entity)
    except NotSigned:
        return None
    except MalformedSigned:
        raise
    except Exception as exc:  # the stdlib parser on hostile input, as in verify.py
        raise MalformedSigned(f"unreadable MIME structure: {exc!r}") from exc
    if parts.detached_content is not None:
        return parts.detached_content
    try:
        info = cms.ContentInfo.load(parts.cms_der)
        if info["content_type"].native != "signed_data":
            # application/pkcs7-mime without smime-type holding EnvelopedData: encrypted,
            # not signed; it is what it is.
            return None
        content = info["content"]["encap_content_info"]["content"].native
    except Exception as exc:  # asn1crypto parses lazily: a broken field may raise anywhere
        raise MalformedSigned(f"unreadable CMS structure: {exc!r}") from exc
    if not isinstance(content, bytes):
        raise MalformedSigned("opaque signature without content")
    return content
