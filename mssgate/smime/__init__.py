"""S/MIME for the gateway: verify incoming signatures, sign, encrypt and decrypt.

Pure functions over message bytes and certificates; the SMTP layer decides what to do with a
`SignatureVerdict` (its `reply` is the line to send back on refusal).

The names below are imported from their module on first use: verification brings pyHanko
(over a second to import), and importing any submodule (`rawmime` for a Return-Path,
`escrow` for a CLI command) runs this file first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from mssgate.smime.verify import (
        RevocationMode,
        averify_signed_message,
        verify_signed_message,
    )

_WHERE = {
    "DecryptionError": "envelope",
    "EncryptionError": "envelope",
    "EncryptionMode": "envelope",
    "KeyTransport": "envelope",
    "clean_entity": "envelope",
    "decrypt": "envelope",
    "encrypt": "envelope",
    "SigningKey": "sign",
    "sign_message": "sign",
    "split_entity": "sign",
    "REPLIES": "verdict",
    "FailureReason": "verdict",
    "SignatureVerdict": "verdict",
    "SmtpReply": "verdict",
    "RevocationMode": "verify",
    "averify_signed_message": "verify",
    "verify_signed_message": "verify",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
