"""Time S/MIME verification (`verify_signed_message`) per message, 1 KB and 64 KB contents.

    .venv/bin/python bench/bench_smime.py [--runs 200] [--revoked 1000] [--profile]

A development CA (EC P-256, as `mssgate pki init` makes) issues an RSA-2048 S/MIME certificate
(what IGC-Santé issues); messages are signed with `sign_message` (detached, multipart/signed)
and verified the way the SMTP policy calls it (trust anchors, the sender's registered
certificate, and in the "crl" rows a CRL of the CA with `--revoked` entries, which switches
revocation to "require"). Each row prints per-message CPU time in ms (median, min, max) and
the median wall time.

Every row verifies `--runs` distinct messages (each its own MIME boundary and Message-ID) from
the same signer, once each:

- `cold`: the certificate path cache (mssgate.smime.pathcache, when present) is emptied
  before every call, so each message pays the full path validation: the cost of a signer
  seen for the first time (or of every message, before the cache existed).
- `warm`: the path cache kept between messages (the steady state of a gateway whose
  correspondents send more than one message every few minutes).
- `extract`: `extract_signed` alone (MIME parsing and base64), for the breakdown.

`--profile` adds a cProfile of the warm 1 KB case (top functions by cumulative time).
A benchmark, not a test: it asserts nothing beyond "the message verified", and the numbers
vary by machine.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import importlib
import io
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mssgate.pki import create_dev_ca, issue_smime_cert  # noqa: E402
from mssgate.smime import sign_message, verify_signed_message  # noqa: E402
from mssgate.smime.extract import extract_signed  # noqa: E402

SENDER = "dr.alice.martin@hopital-a.test"


def _clear_cache() -> Callable[[], None]:
    try:
        module = importlib.import_module("mssgate.smime.pathcache")
    except ImportError:
        return lambda: None
    clear: Callable[[], None] = module.PATH_CACHE.clear
    return clear


def message(size: int, number: int = 0) -> bytes:
    line = "Compte rendu d'imagerie: examen sans particularite, conclusion normale.\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return (
        f"From: Dr Alice Martin <{SENDER}>\r\n"
        "To: <secretariat@clinique-b.test>\r\n"
        "Subject: Compte rendu\r\n"
        "Date: Sat, 28 Nov 2026 09:00:00 +0100\r\n"
        f"Message-ID: <cr-{number}@hopital-a.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def build_crl(ca_key: object, ca_cert: x509.Certificate, revoked: int) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    for serial in range(1, revoked + 1):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(1_000_000 + serial)
            .revocation_date(now - dt.timedelta(days=1))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.DER)


def timed(
    call: Callable[[bytes], object], messages: list[bytes]
) -> tuple[list[float], list[float]]:
    """(CPU ms, wall ms) per call, one call per message. CPU time is the figure: this process
    is single-threaded here, and wall time on a shared 2-core machine mostly measures the
    neighbours."""
    call(messages[0])  # imports, first-use costs
    cpu, wall = [], []
    for raw in messages:
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        call(raw)
        cpu.append((time.process_time() - start_cpu) * 1000)
        wall.append((time.perf_counter() - start_wall) * 1000)
    return cpu, wall


def row(label: str, samples: tuple[list[float], list[float]]) -> str:
    cpu, wall = samples
    return (
        f"| {label} | {statistics.median(cpu):.2f} | {min(cpu):.2f} | {max(cpu):.2f} "
        f"| {statistics.median(wall):.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--revoked", type=int, default=1000, help="entries in the bench CRL")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    ca_key, ca_cert = create_dev_ca("bench CA")
    key, cert = issue_smime_cert(ca_key, ca_cert, SENDER, key_type="rsa")
    crl = build_crl(ca_key, ca_cert, args.revoked)
    clear = _clear_cache()
    anchors = [ca_cert]

    print(f"python {platform.python_version()} on {platform.machine()}, {args.runs} runs")
    print(f"CRL: {args.revoked} entries, {len(crl)} bytes DER")
    print()
    print("| case | CPU median ms | CPU min ms | CPU max ms | wall median ms |")
    print("|---|---|---|---|---|")
    for size in (1024, 64 * 1024):
        # Distinct messages (each its own boundary and Message-ID), one signer: what a
        # correspondent sending several messages looks like.
        messages = [
            sign_message(message(size, n), key=key, cert=cert)  # type: ignore[arg-type]
            for n in range(args.runs)
        ]
        label = f"{size // 1024} KB ({len(messages[0])} B signed)"
        for crl_label, crls in (("no CRL", ()), ("crl", (crl,))):

            def verify(raw: bytes, crls: tuple[bytes, ...] = crls) -> object:
                verdict = verify_signed_message(
                    raw, trust_anchors=anchors, registered=[cert], crls=crls
                )
                if not verdict.ok:
                    raise SystemExit(f"bench message refused: {verdict.reason} {verdict.detail}")
                return verdict

            def cold(raw: bytes, verify: Callable[[bytes], object] = verify) -> object:
                clear()
                return verify(raw)

            print(row(f"{label}, {crl_label}, cold", timed(cold, messages)), flush=True)
            print(row(f"{label}, {crl_label}, warm", timed(verify, messages)), flush=True)
        print(row(f"{label}, extract_signed", timed(extract_signed, messages)), flush=True)

    if args.profile:
        messages = [
            sign_message(message(1024, n), key=key, cert=cert)  # type: ignore[arg-type]
            for n in range(args.runs)
        ]
        verify_signed_message(messages[0], trust_anchors=anchors, registered=[cert], crls=[crl])
        profiler = cProfile.Profile()
        profiler.enable()
        for raw in messages:
            verify_signed_message(raw, trust_anchors=anchors, registered=[cert], crls=[crl])
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print()
        print(out.getvalue())


if __name__ == "__main__":
    main()
