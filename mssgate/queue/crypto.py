"""Encryption at rest for consumers that registered an OpenPGP key (python-gnupg).

The keyring is a GnuPG home inside the data folder holding only public keys: the gateway
can encrypt for a RIS and can never decrypt what it stored for one.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

import gnupg  # type: ignore[import-untyped]

from mssgate.errors import MssgateError
from mssgate.fsutil import ensure_dir


class EncryptionError(MssgateError):
    """A consumer's key cannot be imported or used."""


class AtRestCipher:
    def __init__(self, home: Path) -> None:
        ensure_dir(home, 0o700)
        # No agent: only public keys live here, so nothing needs one, and a daemon per data
        # folder would outlive the tests and the gateway.
        self._gpg = gnupg.GPG(gnupghome=str(home), options=["--no-autostart"])
        self._lock = threading.Lock()
        # Importing is a gpg run per call; a key text maps to the same fingerprints forever.
        self._fingerprints: dict[str, tuple[str, ...]] = {}

    def _import(self, key_text: str) -> tuple[str, ...]:
        digest = hashlib.sha256(key_text.encode("utf-8")).hexdigest()
        with self._lock:
            known = self._fingerprints.get(digest)
            if known is not None:
                return known
            result = self._gpg.import_keys(key_text)
            fingerprints = tuple(str(f) for f in result.fingerprints)
            if not fingerprints:
                raise EncryptionError("a consumer's OpenPGP key cannot be imported")
            self._fingerprints[digest] = fingerprints
            return fingerprints

    def encrypt(self, data: bytes, keys: Sequence[str], *, armor: bool = False) -> bytes:
        """OpenPGP message for every key given (each consumer can read it alone)."""
        recipients: list[str] = []
        for key in keys:
            recipients.extend(self._import(key))
        if not recipients:
            raise EncryptionError("no key to encrypt for")
        # always_trust: the operator vouched for the key by registering it (`consumer add`);
        # there is no web of trust in this keyring.
        result = self._gpg.encrypt(data, recipients, always_trust=True, armor=armor)
        if not result.ok:
            raise EncryptionError(f"OpenPGP encryption failed: {result.status}")
        return bytes(result.data)

    def seal_message(self, message: bytes, keys: Sequence[str]) -> bytes:
        """The whole message as an RFC 3156 PGP/MIME message for `keys`."""
        return pgp_mime(message, self.encrypt(message, keys, armor=True))


# First line of every message sealed here: `is_sealed` tells a stored copy from a clear one
# without a column of its own. A received message never starts with it: the SMTP side puts
# its Received field first.
SEALED_MARKER = b"X-Mssgate-At-Rest: openpgp"

# The outer fields a mail client needs to list and thread the message. Everything else, the
# Subject first (an MSSante subject names the patient), travels inside the ciphertext only.
_OUTER_FIELDS = (b"from", b"to", b"cc", b"date", b"message-id", b"in-reply-to", b"references")


def _outer_fields(message: bytes) -> list[bytes]:
    end = len(message)
    for separator in (b"\r\n\r\n", b"\n\n"):
        found = message.find(separator)
        if found != -1:
            end = min(end, found)
    fields: list[list[bytes]] = []
    for line in message[:end].splitlines():
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept: list[bytes] = []
    for lines in fields:
        name = lines[0].split(b":", 1)[0].strip().lower()
        if name in _OUTER_FIELDS:
            kept.append(b"\r\n".join(lines))
    return kept


def pgp_mime(message: bytes, armored: bytes) -> bytes:
    """multipart/encrypted (RFC 3156 section 4) around `armored`, the encrypted message."""
    boundary = "=_pgp_" + secrets.token_hex(12)
    ciphertext = b"\r\n".join(armored.strip().splitlines())
    head = [
        SEALED_MARKER,
        *_outer_fields(message),
        b"Subject: ...",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";',
        f' boundary="{boundary}"'.encode("ascii"),
    ]
    body = [
        b"",
        b"This is an OpenPGP/MIME encrypted message (RFC 3156).",
        f"--{boundary}".encode("ascii"),
        b"Content-Type: application/pgp-encrypted",
        b"Content-Description: PGP/MIME version identification",
        b"",
        b"Version: 1",
        b"",
        f"--{boundary}".encode("ascii"),
        b'Content-Type: application/octet-stream; name="encrypted.asc"',
        b"Content-Description: OpenPGP encrypted message",
        b'Content-Disposition: inline; filename="encrypted.asc"',
        b"",
        ciphertext,
        b"",
        f"--{boundary}--".encode("ascii"),
        b"",
    ]
    return b"\r\n".join(head + body)


def is_sealed(message: bytes) -> bool:
    return message.startswith(SEALED_MARKER + b"\r\n")
