"""S/MIME signed by the gateway for users whose mail client signs nothing (the CipherMail
model; docs/smime.md, "Signed by the gateway").

Runs at the end of DATA on the submission ports, after AUTH and the sender/From checks and
before the encryption policy, the signature check and the spool: the message signed here is
the one verified, spooled, read by the document pipeline and relayed, byte for byte.

- The sender's local domain says whether (`domain set --sign-for-users`): `off` leaves the
  message to today's refusal; `missing` (the default) signs a message that carries no
  signature at all; `always` also signs one whose client signed a part of it only.
- A message the user signed as a whole (or encrypted) is never touched: the user's own
  signature wins, and the encryption policy decides about encrypted mail.
- The key is the authenticated sender's own, held by the gateway (`mssgate cert issue`,
  `mssgate cert import`); without one, the 550 says how to get one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from pathlib import Path

from sqlalchemy import Engine

from mssgate.config import Config
from mssgate.directory.signing import SignForUsers, sign_for_users
from mssgate.errors import PKIError
from mssgate.logs import event
from mssgate.smime.escrow import EscrowUnavailable, escrowed_key
from mssgate.smime.extract import MalformedSigned, NotSigned, extract_signed
from mssgate.smime.layers import is_encrypted_entity
from mssgate.smime.sign import sign_message
from mssgate.smtp import replies
from mssgate.smtp.replies import Reply

log = logging.getLogger("mssgate.smtp")

_SIGNATURE_TYPES = frozenset(
    {
        "multipart/signed",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
        "application/pkcs7-signature",
        "application/x-pkcs7-signature",
    }
)
# How deep the walk looks for a client's signature in a part; deeper is no mail client's.
_MAX_DEPTH = 16
# A header line that may make a part a signature, at any depth: where none is, no part is one
# and the message is not parsed at all (the stdlib parser costs ~100 us per part and recurses
# per level: 200,000 empty parts in 2 MB held a worker and the GIL for 20 s, 1,000 levels in
# 70 KB raised RecursionError). Whatever str.strip() drops may precede the type (a folded
# field, a form feed): matching too many is safe, too few would not be.
_SIGNATURE_FIELD = re.compile(
    rb"(?:^|\r)content-type:[\s\x1c-\x1f]*(?:multipart/signed|application/(?:x-)?pkcs7-)",
    re.IGNORECASE | re.MULTILINE,
)
# Beyond this many lines that may be a part boundary the message is not parsed: taken as
# signed in a part, so the gateway does not sign it (the verifier then refuses it unsigned).
_MAX_PARTS = 1000


@dataclass(frozen=True)
class GatewaySigning:
    """What DATA goes on with: `content` (signed here when `signed`), or a refusal."""

    content: bytes
    signed: bool = False
    reply: Reply | None = None
    # For the log and the audit trail: why nothing was signed, or why refused.
    reason: str | None = None


def sign_for_sender(
    content: bytes, *, identity: str, engine: Engine, kek_file: Config | Path
) -> GatewaySigning:
    """`content` signed with `identity`'s held key when its domain's setting asks for it.

    Runs in a worker thread (directory queries, RSA).
    """
    mode = sign_for_users(engine, identity.rsplit("@", 1)[1])
    if mode is SignForUsers.OFF:
        return GatewaySigning(content, reason="sign-for-users off")
    if is_encrypted_entity(content):
        return GatewaySigning(content, reason="encrypted")
    try:
        extract_signed(content)
    except NotSigned:
        pass
    except MalformedSigned:
        # The client tried to sign as a whole: the signature check says what is wrong.
        return GatewaySigning(content, reason="signed by the client")
    else:
        return GatewaySigning(content, reason="signed by the client")
    if mode is SignForUsers.MISSING and _signed_in_part(content):
        # A client signature over part of the message: the verifier refuses it as unsigned
        # (the rest is not covered), rather than the gateway signing around the user's own.
        return GatewaySigning(content, reason="signed in a part")
    try:
        held = escrowed_key(engine, kek_file, identity)
    except EscrowUnavailable as exc:
        # The operator's to fix (the file is missing or another node's): temporary, the
        # client keeps the message and tries again. No key material in `exc`.
        event(log, "smime.escrow_unusable", level=logging.ERROR, sender=identity, error=str(exc))
        return GatewaySigning(content, reply=replies.SIGNING_UNAVAILABLE, reason=str(exc))
    if held is None:
        # Audited as the verifier would: nothing signed it.
        return GatewaySigning(content, reply=replies.NO_SIGNING_KEY, reason="unsigned")
    try:
        signed = sign_message(content, key=held.key, cert=held.cert)
    except PKIError as exc:
        event(log, "smime.escrow_unusable", level=logging.ERROR, sender=identity, error=str(exc))
        return GatewaySigning(content, reply=replies.SIGNING_UNAVAILABLE, reason=str(exc))
    return GatewaySigning(signed, signed=True)


def _signed_in_part(content: bytes) -> bool:
    """Whether a part of the message (not a forwarded message inside it) is a signature.

    Bounded for any input: a structure too large or too deep to read counts as signed."""
    if _SIGNATURE_FIELD.search(content) is None:
        return False
    if _boundary_lines(content) > _MAX_PARTS:
        return True
    try:
        parsed = message_from_bytes(content, policy=compat32)
    except RecursionError:
        return True
    return _walk(parsed, 0)


def _boundary_lines(content: bytes) -> int:
    """Lines starting with "--" (the parser also ends lines at a bare CR): an upper bound on
    the parts the parser would make. Counted in C, with no list of matches (a 25 MB message
    of "\\n--" would make 8 million)."""
    return content.count(b"\n--") + content.count(b"\r--") + content.startswith(b"--")


def _walk(part: Message, depth: int) -> bool:
    if part.get_content_type() in _SIGNATURE_TYPES:
        return True
    if depth >= _MAX_DEPTH or part.get_content_maintype() != "multipart":
        # message/rfc822 is another message (a forwarded one): its signature is its own.
        return False
    payload = part.get_payload()
    if not isinstance(payload, list):
        return False
    return any(_walk(sub, depth + 1) for sub in payload if isinstance(sub, Message))
