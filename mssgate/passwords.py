"""Password hashing with Argon2id, at the cost `[auth]` names (RFC 9106's second choice by
default: 64 MiB, 3 passes, 4 lanes)."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mssgate.config import AuthConfig
from mssgate.errors import ValidationFailed

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # bounds the work an attacker can ask of the hasher


def _hasher_for(auth: AuthConfig) -> PasswordHasher:
    return PasswordHasher(
        time_cost=auth.argon2_time_cost,
        memory_cost=auth.argon2_memory_kib,
        parallelism=auth.argon2_parallelism,
    )


_hasher = _hasher_for(AuthConfig())
_dummy_hash: str | None = None
# Each Argon2id verification allocates its memory cost (64 MiB by default): twenty clients
# logging in at once took 380 MB. Two at a time keeps both cores busy and the memory at
# twice the cost; the others wait their turn (a login burst is CPU-bound anyway).
_CONCURRENT_HASHES = threading.BoundedSemaphore(2)


def configure(auth: AuthConfig) -> None:
    """New hashes (and the dummy verification) at `auth`'s cost. Verification reads the
    parameters from each stored hash, so hashes made at another cost keep verifying."""
    global _hasher, _dummy_hash
    _hasher = _hasher_for(auth)
    _dummy_hash = None


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


def burn_verification(password: str) -> None:
    """Spends the time of one verification, so that an unknown account answers as slowly as
    a wrong password (no account enumeration by timing)."""
    global _dummy_hash
    if _dummy_hash is None:
        # At the configured cost, so that it costs what a real account's check costs.
        with _CONCURRENT_HASHES:
            _dummy_hash = _hasher.hash("mssgate-dummy-password-for-timing")
    verify_password(_dummy_hash, password)
