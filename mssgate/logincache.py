"""Successful password logins remembered for a while: Dovecot's auth_cache idea.

An Argon2id verification costs tens of milliseconds of CPU and 64 MiB by design; a mail
client reconnects every few minutes with the same password. After a successful
verification the account's entry holds an HMAC, under a key drawn at random when the
process starts and never stored, of (address, password, stored hash): never the password,
and nothing a memory dump could test guesses against without the key, which lives beside
it but dies with the process.

Invalidation needs no message between nodes: the caller reads the account row at every
login (one indexed read) and hands its stored hash here, and only an active account
consults the cache. A password change (a new hash, a new salt), a suspension or a removal
made on any node is seen at the next login; a removed account added again gets a new hash.
Failed verifications are never remembered. An entry lives `ttl` after its verification
(a hit does not extend it), and the least recently used goes first past `max_entries`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from mssgate.config import AuthConfig


class LoginCache:
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._key = secrets.token_bytes(32)
        # address -> (digest, expiry on `clock`); one entry per account.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        # Logins are checked in worker threads (asyncio.to_thread).
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_config(cls, auth: AuthConfig) -> LoginCache:
        return cls(auth.cache_seconds, auth.cache_entries)

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    @property
    def size(self) -> int:
        # Not __len__: an empty cache must stay truthy where `cache or default` is written.
        return len(self._entries)

    def _digest(self, address: str, password: str, stored_hash: str) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (address, password, stored_hash):
            # Length-prefixed, so that no two different triples share an input.
            data = part.encode("utf-8", "surrogatepass")
            mac.update(len(data).to_bytes(4, "big"))
            mac.update(data)
        return mac.digest()

    def knows(self, address: str, password: str, stored_hash: str) -> bool:
        """True when this exact password verified against this exact stored hash less than
        `ttl` ago. The caller must still check that the account may log in."""
        if not self.enabled:
            return False
        digest = self._digest(address, password, stored_hash)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(address)
            hit = entry is not None and entry[1] > now and hmac.compare_digest(entry[0], digest)
            if hit:
                self._entries.move_to_end(address)
                self.hits += 1
            else:
                if entry is not None and entry[1] <= now:
                    del self._entries[address]
                self.misses += 1
        # Here: the metrics registry (prometheus_client) is the server's; a CLI command
        # builds a Directory, hence this cache, and exports nothing.
        from mssgate import metrics

        metrics.auth_cache("hit" if hit else "miss")
        return hit

    def remember(self, address: str, password: str, stored_hash: str) -> None:
        """After a successful full verification only."""
        if not self.enabled:
            return
        digest = self._digest(address, password, stored_hash)
        expires = self._clock() + self._ttl
        with self._lock:
            self._entries[address] = (digest, expires)
            self._entries.move_to_end(address)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
