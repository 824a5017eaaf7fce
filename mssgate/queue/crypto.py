"""Encryption at rest for consumers that registered an OpenPGP key (python-gnupg).

The keyring is a GnuPG home inside the data folder holding only public keys: the gateway
can encrypt for a RIS and can never decrypt what it stored for one.
"""

from __future__ import annotations

import hashlib
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

    def encrypt(self, data: bytes, keys: Sequence[str]) -> bytes:
        """Binary OpenPGP message for every key given (each consumer can read it alone)."""
        recipients: list[str] = []
        for key in keys:
            recipients.extend(self._import(key))
        if not recipients:
            raise EncryptionError("no key to encrypt for")
        # always_trust: the operator vouched for the key by registering it (`consumer add`);
        # there is no web of trust in this keyring.
        result = self._gpg.encrypt(data, recipients, always_trust=True, armor=False)
        if not result.ok:
            raise EncryptionError(f"OpenPGP encryption failed: {result.status}")
        return bytes(result.data)
