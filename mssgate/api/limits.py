"""A bound on request bodies, enforced before any parsing (the API takes small JSON only,
except the routes given a bound of their own: `POST /v1/outbound` takes an HL7 message up
to the SMTP message size limit)."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        routes: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # (method, exact path) -> its own bound.
        self.routes = routes or {}

    async def _reject(self, send: Send, max_bytes: int) -> None:
        body = json.dumps(
            {
                "type": "https://mssgate.invalid/problems/too-large",
                "title": "Request too large",
                "status": 413,
                "detail": f"request bodies are limited to {max_bytes} bytes",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.routes.get((scope.get("method", ""), scope.get("path", "")), self.max_bytes)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    await self._reject(send, limit)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)


# Submissions to POST /v1/outbound read and processed at once. Each holds its body (up to
# the SMTP size limit) and several times it while building and signing its copies (a 1 MiB
# PDF peaked near 19 MB): without a bound, the server's 256 connections did so together.
OUTBOUND_SLOTS = 4
# How long a submission waits for a slot before 503 (its body is not read meanwhile).
OUTBOUND_WAIT_SECONDS = 30.0


class Slots:
    """A bound on requests in progress, taken before the body is read."""

    def __init__(self, count: int = OUTBOUND_SLOTS, *, wait: float = OUTBOUND_WAIT_SECONDS) -> None:
        self._free = asyncio.Semaphore(count)
        self._wait = wait

    async def take(self) -> bool:
        """True once a slot is held (give it back with `give`); False after `wait` s."""
        if not self._free.locked():
            await self._free.acquire()  # a free slot: never suspends
            return True
        if self._wait <= 0:
            return False
        try:
            await asyncio.wait_for(self._free.acquire(), self._wait)
        except TimeoutError:
            return False
        return True

    def give(self) -> None:
        self._free.release()
