"""S/MIME for the gateway: verify incoming signatures, sign, encrypt and decrypt.

Pure functions over message bytes and certificates; the SMTP layer decides what to do with a
`SignatureVerdict` (its `reply` is the line to send back on refusal).
"""

from __future__ import annotations

from mssgate.smime.envelope import (
    DecryptionError,
    EncryptionError,
    EncryptionMode,
    KeyTransport,
    clean_entity,
    decrypt,
    encrypt,
)
from mssgate.smime.sign import SigningKey, sign_message, split_entity
from mssgate.smime.verdict import REPLIES, FailureReason, SignatureVerdict, SmtpReply
from mssgate.smime.verify import RevocationMode, averify_signed_message, verify_signed_message

__all__ = [
    "REPLIES",
    "DecryptionError",
    "EncryptionError",
    "EncryptionMode",
    "FailureReason",
    "KeyTransport",
    "RevocationMode",
    "SignatureVerdict",
    "SigningKey",
    "SmtpReply",
    "averify_signed_message",
    "clean_entity",
    "decrypt",
    "encrypt",
    "sign_message",
    "split_entity",
    "verify_signed_message",
]
