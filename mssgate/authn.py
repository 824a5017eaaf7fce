"""Who a client is: password and certificate checks against the directory, and their audit.

Shared by every listener that authenticates practitioners (SMTP submission, IMAP), so that
one rule decides for all: an active local account, its Argon2 password, or a client
certificate that is both verified by TLS and registered for that address.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography import x509

from mssgate import audit
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.directory.models import AccountState
from mssgate.errors import MssgateError
from mssgate.logincache import LoginCache


def password_identity(
    directory: Directory, login: str, password: str, cache: LoginCache | None = None
) -> str | None:
    """The account's address if the password is right and the account active."""
    found = directory.professionals.authenticate(login, password, cache=cache)
    return found.address if found is not None else None


def certificate_identity(directory: Directory, authzid: str | None, der: bytes) -> str | None:
    """The address a TLS-verified client certificate (DER) may act as, if registered.

    With an authorization identity only that address is considered; without one, each
    e-mail address in the certificate. Suspended or unknown accounts never match.
    """
    from mssgate.pki import certificate_info

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    info = certificate_info(cert)
    candidates = [authzid] if authzid else list(info.emails)
    for candidate in candidates:
        found = directory.professionals.find(candidate)
        if found is None or not found.local or found.state is not AccountState.ACTIVE:
            continue
        registered = directory.certificates.list(found.address)
        if any(r.fingerprint_sha256 == info.fingerprint_sha256 for r in registered):
            return found.address
    return None


def record(directory: Directory, *, actor: str, action: str, subject: str, **detail: Any) -> None:
    """One audit row; a database failure never turns into an authentication answer."""
    try:
        with write(directory.engine) as conn:
            audit.append(conn, actor=actor, action=action, subject=subject[:254] or "-",
                         detail=detail)  # fmt: skip
    except MssgateError:
        pass


class DirectoryAuthenticator:
    """The checks above off the event loop, audited as `actor` (e.g. "imap:imaps")."""

    def __init__(self, directory: Directory, actor: str, cache: LoginCache | None = None) -> None:
        self._directory = directory
        self.actor = actor
        self.cache = cache

    async def password(self, login: str, password: str, peer_ip: str) -> str | None:
        return await asyncio.to_thread(
            password_identity, self._directory, login, password, self.cache
        )

    async def certificate(self, authzid: str | None, der: bytes, peer_ip: str) -> str | None:
        return await asyncio.to_thread(certificate_identity, self._directory, authzid, der)

    async def failed(self, login: str, mechanism: str, peer_ip: str) -> None:
        await asyncio.to_thread(record, self._directory, actor=self.actor,
                                action="auth.failed", subject=login,
                                mechanism=mechanism, peer=peer_ip)  # fmt: skip

    async def succeeded(self, identity: str, mechanism: str, peer_ip: str) -> None:
        await asyncio.to_thread(record, self._directory, actor=self.actor,
                                action="auth.succeeded", subject=identity,
                                mechanism=mechanism, peer=peer_ip)  # fmt: skip
