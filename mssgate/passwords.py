"""Password hashing with Argon2id (argon2-cffi's defaults follow RFC 9106's second choice)."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mssgate.errors import ValidationFailed

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # bounds the work an attacker can ask of the hasher

_hasher = PasswordHasher()
# Each Argon2id verification allocates its memory cost (64 MiB with these parameters): twenty
# clients logging in at once took 380 MB. Two at a time keeps both cores busy and the memory
# at 128 MiB; the others wait their turn (a login burst is CPU-bound anyway).
_CONCURRENT_HASHES = threading.BoundedSemaphore(2)


def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationFailed(f"password too long: at most {MAX_PASSWORD_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise ValidationFailed("password contains control characters")


def hash_password(password: str) -> str:
    check_password_policy(password)
    with _CONCURRENT_HASHES:
        return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        with _CONCURRENT_HASHES:
            return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY_HASH = _hasher.hash("mssgate-dummy-password-for-timing")


def burn_verification(password: str) -> None:
    """Spends the time of one verification, so that an unknown account answers as slowly as
    a wrong password (no account enumeration by timing)."""
    verify_password(_DUMMY_HASH, password)
