"""A bounded, expiring memo of successful certificate path validations.

Validating a signer's certificate path (path building, every certificate's signature, validity
windows, CRL processing, key usage) is most of the cost of verifying an S/MIME message, and its
result depends only on the certificates, the trust anchors, the revocation data, a few constant
settings and the time. `PathCache` remembers that a path validation *succeeded* for a `PathKey`
naming all of those inputs, together with the interval of time over which that success cannot
change: from the moment validated to the earliest of a short TTL (5 minutes), the `notAfter` of
every certificate in the path, the `nextUpdate` of every CRL, and any revocation date a CRL lists
after that moment. Failures are never remembered, so a refusal always comes from a full
validation. What this must never do, and why it cannot, is in docs/smime.md ("Path validation
cache").

`crl_facts` parses each CRL once (by object identity, then by digest) to get its DER form, digest
and the times above.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

DEFAULT_TTL = dt.timedelta(minutes=5)
DEFAULT_MAX_ENTRIES = 4096
# CRLs are few (one per trusted CA, plus deltas); a bound anyway, since callers pass bytes.
MAX_CRLS = 64


@dataclass(frozen=True, slots=True)
class PathKey:
    """Every input of a path validation except the time. Certificates and CRLs by SHA-256."""

    signer: bytes
    # Certificates the signer put in the CMS: they may be what the path was built from.
    supplied: tuple[bytes, ...]
    intermediates: tuple[bytes, ...]
    anchors: tuple[bytes, ...]
    crls: tuple[bytes, ...]
    revocation_mode: str
    # pyhanko-certvalidator judges revocation differently for an explicit `moment`.
    point_in_time: bool
    # The key usage constraints enforced, so that a change of policy cannot reuse old results.
    usage: str


@dataclass(slots=True)
class _Entry:
    validated_at: dt.datetime
    valid_until: dt.datetime


class PathCache:
    """Thread-safe LRU of `PathKey` → "a valid path existed at `validated_at`", with expiry.

    `valid_at(key, moment)` is true only when a success was recorded for exactly `key` at a time
    `t` with `t <= moment < valid_until`. Verifications run in worker threads, hence the lock.
    """

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, ttl: dt.timedelta = DEFAULT_TTL
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        if ttl <= dt.timedelta(0):
            raise ValueError("ttl must be positive")
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[PathKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def valid_at(self, key: PathKey, moment: dt.datetime) -> bool:
        """Whether a validation of `key` that succeeded earlier still answers for `moment`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and moment >= entry.valid_until:
                del self._entries[key]  # expired for good: time only moves forward here
                entry = None
            if entry is None or moment < entry.validated_at:
                self.misses += 1
                return False
            self._entries.move_to_end(key)
            self.hits += 1
            return True

    def remember(
        self, key: PathKey, *, validated_at: dt.datetime, valid_until: dt.datetime
    ) -> None:
        """Record a successful validation of `key` at `validated_at`, good until `valid_until`
        (exclusive) at the latest; the TTL shortens it further."""
        until = min(valid_until, validated_at + self.ttl)
        if until <= validated_at:  # also a zero TTL: the cache is off
            return
        with self._lock:
            self._entries[key] = _Entry(validated_at, until)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def configure(self, *, max_entries: int, ttl: dt.timedelta) -> None:
        """Apply the operator's settings (`policy.smime_path_cache_*`); a zero TTL turns the
        cache off, so that every message gets a full path validation."""
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        if ttl < dt.timedelta(0):
            raise ValueError("ttl must not be negative")
        with self._lock:
            self.max_entries = max_entries
            self.ttl = ttl
            self._entries.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass(frozen=True, slots=True)
class CrlFacts:
    """A CRL in DER with what bounds the life of a path validation that used it.

    `parsed` is False when cryptography could not read the CRL: it is still handed to the
    validator as given (which decides what it is worth), but no result using it is cached.
    """

    der: bytes
    digest: bytes
    parsed: bool
    next_update: dt.datetime | None
    # POSIX timestamps of every entry's revocation date, sorted.
    revocation_times: tuple[float, ...]
    # The issuer Name (DER): which authority's certificates this list speaks for.
    issuer: bytes | None = None

    def stale_at(self, moment: dt.datetime) -> bool:
        """Past its nextUpdate at `moment`: it no longer says whether anything is revoked."""
        return self.next_update is not None and moment >= self.next_update

    def valid_until(self, moment: dt.datetime) -> dt.datetime | None:
        """The earliest time from `moment` on at which a validation using this CRL may change
        outcome: its nextUpdate, or an entry revoked at or after `moment` (a validation at an
        explicit moment counts only revocations strictly before it). None when there is no
        such bound."""
        if not self.parsed or self.next_update is None:
            return None
        bound = self.next_update
        index = bisect.bisect_left(self.revocation_times, moment.timestamp())
        if index < len(self.revocation_times):
            later = dt.datetime.fromtimestamp(self.revocation_times[index], dt.UTC)
            bound = min(bound, later)
        return bound


class _CrlFactsCache:
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        # id(bytes) → (the very object, facts): holding the object keeps its id from being
        # reused, so an identity hit is certain and costs no hashing of a large CRL.
        self._by_identity: OrderedDict[int, tuple[bytes, CrlFacts]] = OrderedDict()
        self._by_digest: OrderedDict[bytes, CrlFacts] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, data: bytes) -> CrlFacts:
        with self._lock:
            known = self._by_identity.get(id(data))
            if known is not None and known[0] is data:
                self._by_identity.move_to_end(id(data))
                return known[1]
        input_digest = hashlib.sha256(data).digest()
        with self._lock:
            facts = self._by_digest.get(input_digest)
        if facts is None:
            facts = _read_crl(data)
        with self._lock:
            self._by_digest[input_digest] = facts
            self._by_digest.move_to_end(input_digest)
            self._by_identity[id(data)] = (data, facts)
            self._by_identity.move_to_end(id(data))
            for table in (self._by_digest, self._by_identity):
                while len(table) > self._max:
                    table.popitem(last=False)
        return facts

    def clear(self) -> None:
        with self._lock:
            self._by_identity.clear()
            self._by_digest.clear()


def _read_crl(data: bytes) -> CrlFacts:
    if data.lstrip().startswith(b"-----BEGIN"):
        # A PEM CRL that does not load raises, as it always did: the caller's data is broken.
        crl: x509.CertificateRevocationList | None = x509.load_pem_x509_crl(data)
        assert crl is not None
        der = crl.public_bytes(serialization.Encoding.DER)
    else:
        der = data
        try:
            crl = x509.load_der_x509_crl(der)
        except ValueError:
            crl = None
    digest = hashlib.sha256(der).digest()
    if crl is None:
        return CrlFacts(der, digest, parsed=False, next_update=None, revocation_times=())
    try:
        times = tuple(sorted(entry.revocation_date_utc.timestamp() for entry in crl))
        next_update = crl.next_update_utc
    except ValueError:  # cryptography parses entries lazily
        return CrlFacts(der, digest, parsed=False, next_update=None, revocation_times=())
    return CrlFacts(
        der,
        digest,
        parsed=True,
        next_update=next_update,
        revocation_times=times,
        issuer=crl.issuer.public_bytes(),
    )


PATH_CACHE = PathCache()
_CRL_FACTS = _CrlFactsCache(MAX_CRLS)


def crl_facts(data: bytes) -> CrlFacts:
    """`data` (a DER or PEM CRL) read once: later calls with the same object or bytes reuse it."""
    return _CRL_FACTS.get(data)


def clear_caches() -> None:
    """Forget every remembered path validation and parsed CRL (tests, benchmarks)."""
    PATH_CACHE.clear()
    _CRL_FACTS.clear()
