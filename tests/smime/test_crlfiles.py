"""CRL files followed while serving (mssgate.smime.crlfiles), and what a stale CRL answers.

The live-gateway scenarios are in tests/smtp/test_crl_reload.py; these pin the mechanics
with a clock of our own: how often files are looked at, what a broken file does, and that
each warning is said once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mssgate.errors import ConfigError
from mssgate.smime import FailureReason
from mssgate.smime.crlfiles import CrlFiles
from mssgate.smime.pathcache import clear_caches
from tests.smime.smime_fixtures import Pki
from tests.smime.test_smime_pathcache import build_crl, signed, verify


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    clear_caches()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def replace(path: Path, data: bytes) -> None:
    new = path.with_suffix(".tmp")
    new.write_bytes(data)
    os.replace(new, path)


def test_files_are_looked_at_only_every_few_seconds_and_reloaded_when_changed(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mssgate.smime.crlfiles")
    path = tmp_path / "ca.crl"
    first = build_crl(pki.ca)
    path.write_bytes(first)
    clock = Clock()
    files = CrlFiles([path], check_seconds=2.0, clock=clock)
    assert files.current() == (first,)
    revoking = build_crl(pki.ca, revoked=[(pki.alice.cert, dt.datetime.now(dt.UTC))])
    replace(path, revoking)
    clock.t += 1.9
    assert files.current() == (first,)  # not looked at yet
    clock.t += 0.2
    assert files.current() == (revoking,)
    [reloaded] = [r for r in caplog.records if r.getMessage() == "crl.reloaded"]
    assert reloaded.fields["revoked"] == 1  # type: ignore[attr-defined]
    # Touched but the same bytes: nothing reloaded, nothing said.
    os.utime(path, ns=(1, 1))
    clock.t += 2.1
    assert files.current() == (revoking,)
    assert [r.getMessage() for r in caplog.records].count("crl.reloaded") == 1


def test_a_broken_or_missing_file_keeps_the_last_good_list(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ca.crl"
    good = build_crl(pki.ca)
    path.write_bytes(good)
    clock = Clock()
    files = CrlFiles([path], clock=clock)
    for broken in (b"-----BEGIN X509 CRL-----\nhalf", good[: len(good) // 2], b""):
        replace(path, broken)
        clock.t += 5
        assert files.current() == (good,)
    path.unlink()
    clock.t += 5
    assert files.current() == (good,)
    failures = [r for r in caplog.records if r.getMessage() == "crl.reload_failed"]
    assert len(failures) == 4 and all(r.levelno == logging.WARNING for r in failures)
    clock.t += 5
    files.current()  # the same missing file again: said once
    assert [r.getMessage() for r in caplog.records].count("crl.reload_failed") == 4
    fresh = build_crl(pki.ca)
    replace(path, fresh)
    clock.t += 5
    assert files.current() == (fresh,)
    # An older list (a stale mirror) would forget revocations: not taken either.
    older = build_crl(pki.ca, last_update=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    replace(path, older)
    clock.t += 5
    assert files.current() == (fresh,)
    last = [r for r in caplog.records if r.getMessage() == "crl.reload_failed"][-1]
    assert "issued before the list in force" in last.fields["reason"]  # type: ignore[attr-defined]


def test_unusable_files_at_start_are_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy.crl_files: .*missing.crl"):
        CrlFiles([tmp_path / "missing.crl"])
    junk = tmp_path / "junk.crl"
    junk.write_bytes(b"not a CRL")
    with pytest.raises(ConfigError, match="not a PEM or DER CRL"):
        CrlFiles([junk])


def test_due_and_past_due_lists_are_said_once_each(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [dt.datetime.now(dt.UTC)]
    path = tmp_path / "ca.crl"
    path.write_bytes(build_crl(pki.ca, last_update=now[0], next_update=dt.timedelta(days=2)))
    clock = Clock()
    files = CrlFiles([path], clock=clock, now=lambda: now[0])

    def said() -> list[tuple[str, int]]:
        return [(r.getMessage(), r.levelno) for r in caplog.records if "crl." in r.getMessage()]

    assert said() == []
    now[0] += dt.timedelta(days=1, hours=1)
    for _ in range(3):
        clock.t += 3
        files.current()
    assert said() == [("crl.expiring", logging.WARNING)]
    now[0] += dt.timedelta(hours=23)
    for _ in range(3):
        clock.t += 3
        files.current()
    assert said() == [("crl.expiring", logging.WARNING), ("crl.expired", logging.ERROR)]


def test_a_stale_crl_of_the_signers_authority_is_a_temporary_refusal(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    stale = build_crl(pki.ca, last_update=now - dt.timedelta(days=2))  # nextUpdate a day ago
    raw = signed(pki.alice)
    verdict = verify(pki, raw, registered=[pki.alice], crls=[stale])
    assert verdict.reason is FailureReason.REVOCATION_STALE
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (
        451,
        "4.7.5",
    )
    # Another authority's stale list does not make a missing one temporary: no CRL at all
    # for the signer's CA is a permanent refusal, as before.
    other = build_crl(pki.other_ca, last_update=now - dt.timedelta(days=2))
    verdict = verify(pki, raw, registered=[pki.alice], crls=[other])
    assert verdict.reason is FailureReason.UNTRUSTED_CHAIN


def test_a_list_of_another_authority_does_not_replace_the_one_in_force(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Review of issue 12 item 18: an operator's refresh job that wrote another CA's list
    # into this file left the file's CA without a list, and every signature it issued got
    # "revocation status unknown", a permanent 550, until someone noticed.
    path = tmp_path / "ca.crl"
    good = build_crl(pki.ca)
    path.write_bytes(good)
    clock = Clock()
    files = CrlFiles([path], clock=clock)
    replace(path, build_crl(pki.other_ca, last_update=dt.datetime.now(dt.UTC)))
    clock.t += 5
    assert files.current() == (good,)
    assert verify(pki, signed(pki.alice), registered=[pki.alice], crls=files.current()).ok
    [failed] = [r for r in caplog.records if r.getMessage() == "crl.reload_failed"]
    assert "issued by another authority" in failed.fields["reason"]  # type: ignore[attr-defined]
    # The same authority's next list is taken as usual.
    fresh = build_crl(pki.ca, last_update=dt.datetime.now(dt.UTC))
    replace(path, fresh)
    clock.t += 5
    assert files.current() == (fresh,)


def test_a_delta_list_does_not_replace_a_complete_one(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Review of issue 12 item 18: a refresh job that fetched the CA's delta CRL (newer, same
    # issuer) into the file of its complete list left no complete list: every signature of
    # that CA got "revocation status unknown", a permanent 550.
    path = tmp_path / "ca.crl"
    good = build_crl(pki.ca)
    path.write_bytes(good)
    clock = Clock()
    files = CrlFiles([path], clock=clock)
    now = dt.datetime.now(dt.UTC)
    delta = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=1))
        .add_extension(x509.DeltaCRLIndicator(1), critical=True)
        .sign(pki.ca.key, hashes.SHA256())
    )
    replace(path, delta.public_bytes(serialization.Encoding.DER))
    clock.t += 5
    assert files.current() == (good,)
    assert verify(pki, signed(pki.alice), registered=[pki.alice], crls=files.current()).ok
    [failed] = [r for r in caplog.records if r.getMessage() == "crl.reload_failed"]
    assert "delta CRL" in failed.fields["reason"]  # type: ignore[attr-defined]
