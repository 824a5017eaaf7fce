"""What the front door needs from the mailbox engine once a user is authenticated."""

from __future__ import annotations

import asyncio
from typing import Protocol

from mssgate.errors import MssgateError


class BackendUnavailable(MssgateError):
    """The mailbox engine could not start a session (down, restarting, misconfigured)."""


class BackendSession(Protocol):
    """One pre-authenticated IMAP session in the engine, spoken to as a byte stream."""

    @property
    def capabilities(self) -> str:
        """The engine's post-login CAPABILITY list (space-separated, no brackets)."""
        ...

    @property
    def reader(self) -> asyncio.StreamReader: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Ends the session (idempotent); the engine sees its client go away."""
        ...


class Backend(Protocol):
    async def open(self, user: str, *, peer_ip: str, local_ip: str) -> BackendSession:
        """Starts a session already logged in as `user`.

        Raises:
            BackendUnavailable: no session could be started.
        """
        ...
