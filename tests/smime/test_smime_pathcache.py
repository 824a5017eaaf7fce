"""The certificate path cache (mssgate.smime.pathcache) cannot be used to get a message accepted
that a full verification would refuse: every input of the path validation is in the key, its
answer expires with the certificates and CRLs it relied on, and everything per message (digest,
signature, signing time, From, registration) still runs on a cache hit."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from smime_fixtures import Identity, Pki

from mssgate.smime import FailureReason, SignatureVerdict, sign_message, verify_signed_message
from mssgate.smime import verify as verify_module
from mssgate.smime.pathcache import (
    PATH_CACHE,
    CrlFacts,
    PathCache,
    PathKey,
    clear_caches,
    crl_facts,
)

BODY = "Compte rendu de consultation.\r\nPatient: X.\r\n"


@pytest.fixture(autouse=True)
def empty_caches() -> None:
    clear_caches()


def message(sender: str, *, body: str = BODY) -> bytes:
    return (
        f"From: <{sender}>\r\n"
        "To: <secretariat@clinique-b.test>\r\n"
        "Subject: Compte rendu\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def signed(who: Identity, *, sender: str | None = None, body: str = BODY) -> bytes:
    return sign_message(message(sender or who.email, body=body), key=who.key, cert=who.cert)


def verify(
    pki: Pki, raw: bytes, *, registered: list[Identity] | None = None, **kw: object
) -> SignatureVerdict:
    return verify_signed_message(
        raw,
        trust_anchors=kw.pop("trust_anchors", [pki.ca.cert]),  # type: ignore[arg-type]
        registered=None if registered is None else [i.cert for i in registered],
        **kw,  # type: ignore[arg-type]
    )


def build_crl(
    ca: Identity,
    *,
    revoked: Sequence[tuple[x509.Certificate, dt.datetime]] = (),
    last_update: dt.datetime | None = None,
    next_update: dt.timedelta = dt.timedelta(days=1),
) -> bytes:
    now = dt.datetime.now(dt.UTC)
    last = last_update or now - dt.timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last)
        .next_update(last + next_update)
    )
    for cert, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(when)
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.DER)


def refused(verdict: SignatureVerdict, reason: FailureReason) -> None:
    assert not verdict.ok, verdict
    assert verdict.reason is reason, verdict.detail


# -- what a hit still checks --------------------------------------------------------------------


def test_a_second_message_from_a_known_signer_is_a_cache_hit(pki: Pki) -> None:
    assert verify(pki, signed(pki.alice), registered=[pki.alice]).ok
    assert (PATH_CACHE.hits, PATH_CACHE.misses, len(PATH_CACHE)) == (0, 1, 1)
    verdict = verify(pki, signed(pki.alice, body="autre\r\n"), registered=[pki.alice])
    assert verdict.ok, verdict.detail
    assert verdict.content is not None and verdict.content.endswith(b"autre\r\n")
    assert (PATH_CACHE.hits, PATH_CACHE.misses) == (1, 1)


def test_tampered_message_from_a_cached_signer_is_refused(pki: Pki) -> None:
    raw = signed(pki.alice)
    assert verify(pki, raw, registered=[pki.alice]).ok
    refused(
        verify(pki, raw.replace(b"Patient: X.", b"Patient: Y."), registered=[pki.alice]),
        FailureReason.TAMPERED,
    )
    # The integrity check comes first: the cache was not even consulted.
    assert PATH_CACHE.hits == 0


def test_bad_signature_value_from_a_cached_signer_is_refused(pki: Pki) -> None:
    raw = signed(pki.alice)
    assert verify(pki, raw, registered=[pki.alice]).ok
    head, rest = raw.split(b'filename="smime.p7s"\r\n\r\n', 1)
    signature_b64, tail = rest.split(b"\r\n--", 1)
    der = bytearray(base64.b64decode(b"".join(signature_b64.split())))
    der[-3] ^= 0x01  # inside the SignerInfo's signature value
    broken = (
        head + b'filename="smime.p7s"\r\n\r\n' + base64.b64encode(bytes(der)) + b"\r\n--" + tail
    )
    refused(verify(pki, broken, registered=[pki.alice]), FailureReason.BAD_SIGNATURE)


def test_sender_and_registration_are_checked_on_a_hit(pki: Pki) -> None:
    rogue = pki.make(pki.alice.email)  # same address and CA as Alice, another key
    assert verify(pki, signed(rogue), registered=None).ok
    hits = PATH_CACHE.hits
    refused(verify(pki, signed(rogue), registered=[pki.alice]), FailureReason.NOT_REGISTERED)
    refused(
        verify(pki, signed(rogue, sender=pki.bob.email), registered=None),
        FailureReason.ADDRESS_MISMATCH,
    )
    assert PATH_CACHE.hits == hits + 2


def test_signing_time_is_checked_on_a_hit(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    short = pki.make(
        "dr.short@hopital-a.test",
        not_before=now - dt.timedelta(minutes=4),
        not_after=now - dt.timedelta(minutes=1),
    )
    raw = signed(short)  # signingTime is now, after the certificate expired
    earlier = now - dt.timedelta(minutes=2)
    for _ in range(2):
        # The path was valid at `earlier`, and is remembered so; the message is refused anyway.
        refused(verify(pki, raw, registered=[short], moment=earlier), FailureReason.EXPIRED)
    assert PATH_CACHE.hits == 1


# -- the key: a change of any input is a miss ---------------------------------------------------


def test_revoked_certificate_is_refused_once_the_crl_changes(pki: Pki) -> None:
    victim = pki.make("dr.revoked.later@hopital-a.test")
    raw = signed(victim)
    before = build_crl(pki.ca, revoked=[(pki.bob.cert, dt.datetime.now(dt.UTC))])
    assert verify(pki, raw, registered=[victim], crls=[before]).ok
    assert verify(pki, raw, registered=[victim], crls=[before]).ok
    assert PATH_CACHE.hits == 1

    after = build_crl(pki.ca, revoked=[(victim.cert, dt.datetime.now(dt.UTC))])
    for _ in range(2):  # refusals are never cached: the second one is a full validation too
        refused(verify(pki, raw, registered=[victim], crls=[after]), FailureReason.REVOKED)
    assert PATH_CACHE.hits == 1
    # The same CRL read again into other bytes objects: still the revoked one.
    refused(verify(pki, raw, registered=[victim], crls=[bytes(after)]), FailureReason.REVOKED)
    pem = x509.load_der_x509_crl(after).public_bytes(serialization.Encoding.PEM)
    refused(verify(pki, raw, registered=[victim], crls=[pem]), FailureReason.REVOKED)
    # Old plus new CRL, or no CRL at all, are other keys again.
    refused(verify(pki, raw, registered=[victim], crls=[before, after]), FailureReason.REVOKED)


def test_other_trust_anchors_are_another_key(pki: Pki) -> None:
    raw = signed(pki.alice)
    assert verify(pki, raw, registered=[pki.alice]).ok
    refused(
        verify(pki, raw, registered=[pki.alice], trust_anchors=[pki.other_ca.cert]),
        FailureReason.UNTRUSTED_CHAIN,
    )
    refused(
        verify(pki, raw, registered=[pki.alice], trust_anchors=[]), FailureReason.UNTRUSTED_CHAIN
    )
    assert PATH_CACHE.hits == 0


def test_revocation_mode_and_explicit_moment_are_part_of_the_key(pki: Pki) -> None:
    raw = signed(pki.alice)
    assert verify(pki, raw, registered=[pki.alice]).ok
    assert verify(pki, raw, registered=[pki.alice], revocation_mode="soft-fail").ok
    assert verify(pki, raw, registered=[pki.alice], moment=dt.datetime.now(dt.UTC)).ok
    assert (PATH_CACHE.hits, PATH_CACHE.misses, len(PATH_CACHE)) == (0, 3, 3)


# -- time: an answer never outlives what it relied on -------------------------------------------


def test_expired_certificate_is_refused_after_expiry_even_if_cached(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    soon = pki.make(
        "dr.soon@hopital-a.test",
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(minutes=3),
    )
    raw = signed(soon)
    assert verify(pki, raw, registered=[soon], moment=now + dt.timedelta(minutes=1)).ok
    assert verify(pki, raw, registered=[soon], moment=now + dt.timedelta(minutes=2)).ok
    assert PATH_CACHE.hits == 1
    later = now + dt.timedelta(minutes=3, seconds=5)
    refused(verify(pki, raw, registered=[soon], moment=later), FailureReason.EXPIRED)
    # A cached answer never serves a moment before the one it was computed for.
    assert verify(pki, raw, registered=[soon], moment=now + dt.timedelta(seconds=30)).ok
    assert PATH_CACHE.hits == 1


def test_expiry_in_real_time(pki: Pki) -> None:
    # moment=None, the gateway's way: a certificate cached as valid expires on the wall clock.
    not_after = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    brief = pki.make(
        "dr.brief@hopital-a.test",
        key_type="ec",
        not_before=not_after - dt.timedelta(hours=1),
        not_after=not_after,
    )
    raw = signed(brief)
    assert verify(pki, raw, registered=[brief]).ok
    assert verify(pki, raw, registered=[brief]).ok
    assert PATH_CACHE.hits == 1
    # pyhanko-certvalidator tolerates one second of clock drift past notAfter.
    time.sleep(max(0.0, (not_after - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)
    refused(verify(pki, raw, registered=[brief]), FailureReason.EXPIRED)


def test_cached_answer_ends_at_the_crl_next_update(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    crl = build_crl(
        pki.ca, last_update=now - dt.timedelta(minutes=1), next_update=dt.timedelta(minutes=3)
    )
    raw = signed(pki.alice)
    assert verify(pki, raw, registered=[pki.alice], crls=[crl], moment=now).ok
    assert verify(
        pki, raw, registered=[pki.alice], crls=[crl], moment=now + dt.timedelta(minutes=1)
    ).ok
    assert PATH_CACHE.hits == 1
    # After nextUpdate the CRL is stale: revocation status unknown, whatever was cached; a
    # temporary refusal (451 4.7.5), since a fresh list is the gateway's to fetch.
    stale = now + dt.timedelta(minutes=2, seconds=30)
    refused(
        verify(pki, raw, registered=[pki.alice], crls=[crl], moment=stale),
        FailureReason.REVOCATION_STALE,
    )
    assert PATH_CACHE.hits == 1


def test_cached_answer_ends_at_a_later_revocation_date(pki: Pki) -> None:
    # At an explicit moment pyhanko-certvalidator counts only revocations before it: a CRL
    # may list a revocation dated after a moment checked earlier. The answer must end there.
    now = dt.datetime.now(dt.UTC)
    victim = pki.make("dr.future.revoked@hopital-a.test")
    crl = build_crl(pki.ca, revoked=[(victim.cert, now + dt.timedelta(minutes=2))])
    raw = signed(victim)
    assert verify(pki, raw, registered=[victim], crls=[crl], moment=now).ok
    assert verify(
        pki, raw, registered=[victim], crls=[crl], moment=now + dt.timedelta(minutes=1)
    ).ok
    assert PATH_CACHE.hits == 1
    refused(
        verify(pki, raw, registered=[victim], crls=[crl], moment=now + dt.timedelta(minutes=3)),
        FailureReason.REVOKED,
    )
    # Without an explicit moment any listed certificate is revoked.
    refused(verify(pki, raw, registered=[victim], crls=[crl]), FailureReason.REVOKED)


def test_crl_bound_counts_revocations_at_or_after_the_moment() -> None:
    day, minutes = dt.timedelta(days=1), dt.timedelta(minutes=2)
    times = tuple(t.timestamp() for t in (T0 - day, T0, T0 + minutes))
    facts = CrlFacts(b"", b"", parsed=True, next_update=T0 + day, revocation_times=times)
    assert facts.valid_until(T0) == T0  # revoked exactly then: nothing may be cached
    assert facts.valid_until(T0 + dt.timedelta(seconds=1)) == T0 + minutes
    assert facts.valid_until(T0 + 2 * minutes + dt.timedelta(seconds=1)) == T0 + day
    unbounded = CrlFacts(b"", b"", parsed=True, next_update=None, revocation_times=())
    assert unbounded.valid_until(T0) is None


def test_crl_facts() -> None:
    assert crl_facts(b"\x30\x03garbage").parsed is False
    with pytest.raises(ValueError):
        crl_facts(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")


# -- the cache itself ---------------------------------------------------------------------------


def key(n: int) -> PathKey:
    return PathKey(
        signer=n.to_bytes(4, "big"),
        supplied=(),
        intermediates=(),
        anchors=(b"anchor",),
        crls=(),
        revocation_mode="hard-fail",
        point_in_time=False,
        usage="test",
    )


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = PathCache(max_entries=3)
    for n in range(3):
        cache.remember(key(n), validated_at=T0, valid_until=T0 + dt.timedelta(days=1))
    assert cache.valid_at(key(0), T0)  # 0 is now the most recently used
    for n in range(3, 10):
        cache.remember(key(n), validated_at=T0, valid_until=T0 + dt.timedelta(days=1))
        assert len(cache) == 3
    assert [cache.valid_at(key(n), T0) for n in (0, 1, 2, 7, 8, 9)] == [
        False, False, False, True, True, True,
    ]  # fmt: skip


def test_cache_window() -> None:
    cache = PathCache(ttl=dt.timedelta(minutes=5))
    cache.remember(key(1), validated_at=T0, valid_until=T0 + dt.timedelta(minutes=2))
    cache.remember(key(2), validated_at=T0, valid_until=T0 + dt.timedelta(days=1))
    cache.remember(key(3), validated_at=T0, valid_until=T0)  # nothing to remember
    second = dt.timedelta(seconds=1)
    assert cache.valid_at(key(1), T0 + dt.timedelta(minutes=2) - second)
    assert not cache.valid_at(key(1), T0 - second)  # before it was computed
    assert not cache.valid_at(key(1), T0 + dt.timedelta(minutes=2))  # valid_until is exclusive
    assert not cache.valid_at(key(1), T0 + dt.timedelta(minutes=1))  # and expired entries go
    assert cache.valid_at(key(2), T0 + dt.timedelta(minutes=5) - second)
    assert not cache.valid_at(key(2), T0 + dt.timedelta(minutes=5))  # the TTL
    assert not cache.valid_at(key(3), T0)
    assert len(cache) == 0
    with pytest.raises(ValueError):
        PathCache(max_entries=0)
    with pytest.raises(ValueError):
        PathCache(ttl=dt.timedelta(0))


def test_verifier_cache_stays_bounded(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    small = PathCache(max_entries=2)
    monkeypatch.setattr(verify_module, "PATH_CACHE", small)
    signers = [pki.make(f"dr.n{n}@hopital-a.test", key_type="ec") for n in range(4)]
    for signer in signers:
        assert verify(pki, signed(signer), registered=[signer]).ok
        assert len(small) <= 2
    assert (small.hits, small.misses, len(small)) == (0, 4, 2)


def test_concurrent_verifications(pki: Pki) -> None:
    # The SMTP layer verifies in worker threads: the cache is shared between them.
    messages = [signed(pki.alice, body=f"message {n}\r\n") for n in range(24)]
    messages += [signed(pki.carol_ec, body=f"message {n}\r\n") for n in range(24)]

    def one(raw: bytes) -> bool:
        return verify(pki, raw, registered=[pki.alice, pki.carol_ec]).ok

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert all(pool.map(one, messages))
    assert PATH_CACHE.hits + PATH_CACHE.misses == len(messages)
    assert len(PATH_CACHE) == 2


def test_configure_applies_the_operators_settings_and_zero_turns_it_off(pki: Pki) -> None:
    cache = PathCache()
    cache.remember(key(1), validated_at=T0, valid_until=T0 + dt.timedelta(days=1))
    cache.configure(max_entries=2, ttl=dt.timedelta(seconds=30))
    assert len(cache) == 0  # old answers were given under other settings
    cache.remember(key(1), validated_at=T0, valid_until=T0 + dt.timedelta(days=1))
    assert cache.valid_at(key(1), T0 + dt.timedelta(seconds=29))
    assert not cache.valid_at(key(1), T0 + dt.timedelta(seconds=30))
    for n in range(5):
        cache.remember(key(n), validated_at=T0, valid_until=T0 + dt.timedelta(days=1))
    assert len(cache) == 2
    cache.configure(max_entries=2, ttl=dt.timedelta(0))
    cache.remember(key(9), validated_at=T0, valid_until=T0 + dt.timedelta(days=1))
    assert len(cache) == 0 and not cache.valid_at(key(9), T0)
    with pytest.raises(ValueError):
        cache.configure(max_entries=0, ttl=dt.timedelta(seconds=1))
    with pytest.raises(ValueError):
        cache.configure(max_entries=1, ttl=dt.timedelta(seconds=-1))
    # The process-wide cache, switched off as `policy.smime_path_cache_seconds = 0` does:
    # every message from a known signer is then validated in full.
    PATH_CACHE.configure(max_entries=16, ttl=dt.timedelta(0))
    try:
        for body in ("un\r\n", "deux\r\n"):
            assert verify(pki, signed(pki.alice, body=body), registered=[pki.alice]).ok
        assert (PATH_CACHE.hits, PATH_CACHE.misses, len(PATH_CACHE)) == (0, 2, 0)
    finally:
        PATH_CACHE.configure(max_entries=4096, ttl=dt.timedelta(minutes=5))
