"""Who a bearer token lets in: the token's RPPS matched to a hosted mailbox.

A practitioner may hold several mailboxes under one RPPS: the client names the one it wants
(OAUTHBEARER's `a=`, XOAUTH2's `user=`), which must be an active local mailbox of that RPPS;
without a name the RPPS must have exactly one. Never matched on e-mail or `sub`.
Shared by SMTP and IMAP; the token checks themselves are `mssgate.oidc`'s.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from mssgate.config import OidcConfig
from mssgate.db.schema import professionals
from mssgate.directory import Directory
from mssgate.directory.models import AccountState
from mssgate.directory.professionals import to_professional
from mssgate.errors import ValidationFailed
from mssgate.identifiers import normalize_address
from mssgate.logs import event
from mssgate.oidc import ProviderError, TokenRejected, TokenVerifier
from mssgate.sasl import BearerResponse, error_challenge

log = logging.getLogger("mssgate.oidc")


class BearerUnavailable(Exception):
    """The provider could not be asked: a temporary failure, not the client's fault."""


class BearerAuthenticator:
    def __init__(self, directory: Directory, verifier: TokenVerifier, config: OidcConfig) -> None:
        self._directory = directory
        self._verifier = verifier
        self._domains = frozenset(d.lower() for d in config.domains)

    @property
    def challenge(self) -> bytes:
        """RFC 7628's error document for a failed OAUTHBEARER."""
        return error_challenge(self._verifier.issuer)

    async def identity(self, response: BearerResponse, peer_ip: str) -> str | None:
        """The mailbox the token lets in, else None (the reason is logged, never told).

        Raises:
            BearerUnavailable: the provider (discovery, keys, introspection) did not answer.
        """
        return await asyncio.to_thread(self._identity, response, peer_ip)

    def _identity(self, response: BearerResponse, peer_ip: str) -> str | None:
        try:
            token = self._verifier.verify(response.token)
            return self._mailbox(token.idnat, response.authzid)
        except ProviderError as exc:
            event(log, "oidc.unavailable", level=logging.WARNING, mechanism=response.mechanism,
                  peer=peer_ip, reason=exc.reason)  # fmt: skip
            raise BearerUnavailable(exc.reason) from None
        except TokenRejected as exc:
            event(log, "oidc.refused", mechanism=response.mechanism, peer=peer_ip,
                  reason=exc.reason)  # fmt: skip
            return None

    def _mailbox(self, idnat: str, authzid: str | None) -> str:
        query = select(professionals).where(
            professionals.c.idnat == idnat, professionals.c.local.is_(True)
        )
        with self._directory.engine.connect() as conn:
            found = [to_professional(row) for row in conn.execute(query)]
        if authzid is not None:
            try:
                wanted = normalize_address(authzid)
            except ValidationFailed:
                raise TokenRejected("authorization identity is no address") from None
            found = [p for p in found if p.address == wanted]
            if not found:
                raise TokenRejected("authorization identity is not this practitioner's")
        if not found:
            raise TokenRejected("RPPS not in the directory")
        if len(found) > 1:
            raise TokenRejected("several mailboxes for this RPPS: the client must name one")
        mailbox = found[0]
        if mailbox.state is not AccountState.ACTIVE:
            raise TokenRejected("account suspended")
        domain = mailbox.address.rpartition("@")[2]
        if self._domains and domain not in self._domains:
            raise TokenRejected(f"tokens not enabled for {domain}")
        return mailbox.address


def from_config(directory: Directory, config: OidcConfig | None) -> BearerAuthenticator | None:
    """The bearer authenticator when `[oidc]` is configured, else None (nothing advertised)."""
    if config is None:
        return None
    return BearerAuthenticator(directory, TokenVerifier(config), config)
