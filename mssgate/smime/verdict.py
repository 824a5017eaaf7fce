"""The outcome of verifying a signed message, and the SMTP reply each refusal maps to."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from cryptography import x509


class FailureReason(StrEnum):
    """Why a message was refused. The value is stable: it goes into logs and audit records."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    # The content digest differs from the signed messageDigest attribute (CMS "digest
    # mismatch"): the signed bytes were changed after signing.
    TAMPERED = "tampered"
    BAD_SIGNATURE = "bad-signature"
    UNTRUSTED_CHAIN = "untrusted-chain"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    REVOKED = "revoked"
    # The CRL of an authority on the signer's path is past its nextUpdate: nobody can say
    # whether the certificate was revoked since. Ours to fix (refresh the file), so temporary.
    REVOCATION_STALE = "revocation-stale"
    BAD_KEY_USAGE = "bad-key-usage"
    ADDRESS_MISMATCH = "address-mismatch"
    NOT_REGISTERED = "not-registered"


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """A reply to the DATA command: basic code, RFC 3463 enhanced status and client-safe text."""

    code: int
    enhanced: str
    text: str

    def line(self) -> str:
        """The reply as one line, without CRLF: `550 5.7.1 text`."""
        return f"{self.code} {self.enhanced} {self.text}"


# Content that cannot be what was signed (554: the transaction fails on the message itself) is
# told apart from a valid signature by a signer the gateway does not accept (550: policy).
# 5.7.7 is "message integrity failure", 5.7.5 "cryptographic failure" (the certificate cannot
# vouch for the signature), 5.7.1 "delivery not authorized" (RFC 3463).
REPLIES: MappingProxyType[FailureReason, SmtpReply] = MappingProxyType(
    {
        FailureReason.UNSIGNED: SmtpReply(
            550, "5.7.1", "Message refused: an S/MIME signature is required"
        ),
        FailureReason.MALFORMED: SmtpReply(
            554, "5.7.5", "Message refused: the S/MIME structure cannot be read"
        ),
        FailureReason.TAMPERED: SmtpReply(
            554, "5.7.7", "Message refused: the content does not match its signature"
        ),
        FailureReason.BAD_SIGNATURE: SmtpReply(
            554, "5.7.7", "Message refused: the S/MIME signature is invalid"
        ),
        FailureReason.UNTRUSTED_CHAIN: SmtpReply(
            550, "5.7.1", "Message refused: the signing certificate is not from a trusted authority"
        ),
        FailureReason.EXPIRED: SmtpReply(
            550, "5.7.5", "Message refused: the signing certificate has expired"
        ),
        FailureReason.NOT_YET_VALID: SmtpReply(
            550, "5.7.5", "Message refused: the signing certificate is not valid yet"
        ),
        FailureReason.REVOKED: SmtpReply(
            550, "5.7.5", "Message refused: the signing certificate has been revoked"
        ),
        # 451 4.7.5 (a temporary cryptographic failure, RFC 3463): the sender's server keeps
        # the message and tries again, and gets through once our CRL file is refreshed.
        FailureReason.REVOCATION_STALE: SmtpReply(
            451,
            "4.7.5",
            "Try again later: the revocation list of the signing certificate's authority"
            " is out of date here",
        ),
        FailureReason.BAD_KEY_USAGE: SmtpReply(
            550, "5.7.1", "Message refused: the certificate is not meant for signing e-mail"
        ),
        FailureReason.ADDRESS_MISMATCH: SmtpReply(
            550, "5.7.1", "Message refused: the signing certificate does not match the From address"
        ),
        FailureReason.NOT_REGISTERED: SmtpReply(
            550,
            "5.7.1",
            "Message refused: the signing certificate is not registered for this sender",
        ),
    }
)


@dataclass(frozen=True, slots=True)
class SignatureVerdict:
    """What `verify_signed_message` concluded.

    `reason` is None exactly when `ok`. Signer fields are filled whenever the signature could be
    read, refused or not, so that the audit log can name who tried. `detail` is for logs only: it
    may name certificates and internal checks and must never reach the SMTP client; `reply` is
    what the client gets.
    """

    ok: bool
    reason: FailureReason | None = None
    detail: str = ""
    signer_subject: str | None = None
    signer_fingerprint: str | None = None
    signer_certificate: x509.Certificate | None = None
    signing_time: dt.datetime | None = None
    content: bytes | None = None
    # The gateway signed the message itself, for the user who authenticated (their key,
    # held here): shown in Authentication-Results so the difference stays visible.
    signed_by_gateway: bool = False

    def __post_init__(self) -> None:
        if self.ok is (self.reason is not None):
            raise ValueError("a verdict is ok exactly when it has no failure reason")

    @property
    def reply(self) -> SmtpReply | None:
        """The SMTP reply for a refusal, None when the message passed."""
        return None if self.reason is None else REPLIES[self.reason]
