"""Every case of the hostile corpus against one live gateway: the expected outcome for each,
bounded memory, and no file written outside the data folder."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mssgate.pki import (
    create_dev_ca,
    issue_smime_cert,
    load_certificate,
    load_private_key,
)
from mssgate.smime import sign_message
from tests.conftest import Cli
from tests.hostile.corpus import CASES, Case
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, Raw

AUTH = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
MAX_SIZE = 3 * 1024 * 1024
MAX_RSS_KB = 400 * 1024


@pytest.fixture(scope="module")
def corpus_built() -> dict[str, bytes]:
    return {c.name: c.build() for c in CASES}


@pytest.fixture
def hostile(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[Gateway]:
    out = tmp_path / "smime"
    cli.ok("cert", "issue", ALICE, "--out", str(out))
    cli.ok("cert", "issue", BOB, "--out", str(out))
    cli.ok("consumer", "add", "ris", "--mailbox", BOB)
    scratch = tmp_path / "scratch-tmp"
    scratch.mkdir()
    gateway_setup.env.update(
        MSSGATE_POLICY__REQUIRE_SIGNATURE="true",
        MSSGATE_POLICY__ALLOW_TEST_INS="true",
        MSSGATE_SMTP__MAX_MESSAGE_SIZE=str(MAX_SIZE),
        MSSGATE_SMTP__MAX_COMMANDS_BEFORE_AUTH="50",
        TMPDIR=str(scratch),
    )
    gateway_setup.start()
    gateway_setup.smime = out  # type: ignore[attr-defined]
    gateway_setup.scratch = scratch  # type: ignore[attr-defined]
    yield gateway_setup
    if gateway_setup.proc is not None:
        gateway_setup.stop()


def _key(gw: Gateway, who: str) -> tuple[object, object]:
    out: Path = gw.smime  # type: ignore[attr-defined]
    return load_private_key(out / f"{who}.key.pem"), load_certificate(out / f"{who}.crt.pem")


def _mail(name: str, attachment: bytes | None = None, raw_body: bytes | None = None) -> bytes:
    if raw_body is not None:
        head = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: {name}\r\n"
        return (head + f"Message-ID: <hostile-{name}@hopital-a.test>\r\n").encode() + raw_body
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = ALICE, BOB, name
    msg["Message-ID"] = f"<hostile-{name}@hopital-a.test>"
    msg.set_content("piece jointe")
    assert attachment is not None
    if attachment[:2] == b"PK":
        maintype, subtype, filename = "application", "zip", "IHE_XDM.ZIP"
    elif attachment[:4] == b"%PDF":
        maintype, subtype, filename = "application", "pdf", "cr.pdf"
    else:
        maintype, subtype, filename = "text", "xml", "cr.xml"
    msg.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=SMTP)


def _session(gw: Gateway) -> Raw:
    raw = Raw(gw.ports["smtps"], tls=gw.client_context())
    raw.reply()
    raw.cmd(b"EHLO hostile.test")
    assert raw.cmd(b"AUTH PLAIN " + AUTH).startswith(b"235")
    return raw


def _signature_case(gw: Gateway, which: str, tmp: Path) -> bytes:
    body = _mail(f"sig-{which}", raw_body=b"\r\nBonjour\r\n")
    key, cert = _key(gw, ALICE)
    certs = gw.data / "certs"
    if which == "unsigned":
        return body
    if which == "other-signer":
        key, cert = _key(gw, BOB)
    elif which == "expired":
        past = datetime.now(UTC) - timedelta(days=1)
        key, cert = issue_smime_cert(
            load_private_key(certs / "ca.key.pem"), load_certificate(certs / "ca.crt.pem"),
            ALICE, not_after=past,
        )  # fmt: skip
    elif which == "untrusted-ca":
        ca_key, ca_cert = create_dev_ca("rogue")
        key, cert = issue_smime_cert(ca_key, ca_cert, ALICE)
    elif which == "unregistered":
        key, cert = issue_smime_cert(
            load_private_key(certs / "ca.key.pem"), load_certificate(certs / "ca.crt.pem"), ALICE
        )
    signed = sign_message(body, key=key, cert=cert)  # type: ignore[arg-type]
    if which == "tampered":
        signed = signed.replace(b"Bonjour", b"Bonsoir")
    return signed


def _run_smtp_case(gw: Gateway, case: Case, payload: bytes, tmp: Path) -> tuple[bytes, bool]:
    if case.kind == "starttls":
        raw = Raw(gw.ports["submission"])
        raw.reply()
        raw.cmd(b"EHLO hostile.test")
        raw.send(payload)
        assert raw.reply().startswith(b"220")
        raw.sock = gw.client_context().wrap_socket(raw.sock, server_hostname="localhost")
        raw.buf = b""
        answer = raw.cmd(b"NOOP")
        raw.close()
        return answer, False
    raw = _session(gw)
    try:
        if case.kind == "session":
            raw.send(payload)
            return raw.reply(), raw.closed(2) if case.closes else False
        raw.cmd(f"MAIL FROM:<{ALICE}>".encode())
        if case.kind == "recipient":
            return raw.cmd(b"RCPT TO:<" + payload + b">"), False
        assert raw.cmd(f"RCPT TO:<{BOB}>".encode()).startswith(b"250")
        assert raw.cmd(b"DATA").startswith(b"354")
        if case.kind == "signature":
            data = _signature_case(gw, payload.decode(), tmp)
            stuffed = b"\r\n".join(
                b"." + line if line.startswith(b".") else line for line in data.split(b"\r\n")
            )
            raw.send(stuffed.rstrip(b"\r\n") + b"\r\n.\r\n")
        else:
            raw.send(payload)
        answer = raw.reply()
        return answer, raw.closed(2) if case.closes else False
    finally:
        raw.close()


@pytest.mark.slow
def test_hostile_corpus(
    hostile: Gateway, cli: Cli, corpus_built: dict[str, bytes], tmp_path: Path
) -> None:
    slip_targets = [Path("/tmp/x"), Path("/etc/cron.d/x")]
    assert not any(p.exists() for p in slip_targets)
    failures: list[str] = []
    documents: dict[str, Case] = {}
    client = hostile.login()
    for case in CASES:
        payload = corpus_built[case.name]
        if case.kind in ("document", "message"):
            mail = (
                _mail(case.name, attachment=payload)
                if case.kind == "document"
                else _mail(case.name, raw_body=b"MIME-Version: 1.0\r\n" + payload)
            )
            key, cert = _key(hostile, ALICE)
            signed = sign_message(mail, key=key, cert=cert)  # type: ignore[arg-type]
            try:
                client.sendmail(ALICE, [BOB], signed)
            except Exception as exc:  # the case fails, the run goes on
                failures.append(f"{case.name}: not accepted for the pipeline: {exc}")
                client = hostile.login()
                continue
            documents[f"<hostile-{case.name}@hopital-a.test>"] = case
            continue
        answer, closed = _run_smtp_case(hostile, case, payload, tmp_path)
        if not answer.decode(errors="replace").startswith(str(case.expect)):
            failures.append(f"{case.name}: expected {case.expect}, got {answer[:80]!r}")
        if case.closes and not closed:
            failures.append(f"{case.name}: the connection stayed open")
    client.quit()
    # Every document case ends in quarantine with its code, nothing dropped.
    deadline = time.monotonic() + 120
    held: dict[str, list[dict[str, object]]] = {}
    while time.monotonic() < deadline:
        rows = cli.ok("quarantine", "list", "--json").json()
        held = {}
        for row in rows:
            held.setdefault(str(row["message_id"]), []).append(row)
        if all(mid in held for mid in documents):
            break
        time.sleep(0.5)
    for mid, case in documents.items():
        codes = sorted({int(str(r["code"])) for r in held.get(mid, [])})
        if codes != [case.expect]:
            failures.append(f"{case.name}: expected quarantine {case.expect}, got {codes}")
    queued = cli.ok("queue", "list", "--json").json()
    if queued:
        failures.append(f"documents queued from hostile input: {len(queued)}")
    assert failures == []
    assert not any(p.exists() for p in slip_targets)
    assert list(hostile.scratch.iterdir()) == []  # type: ignore[attr-defined]
    assert hostile.proc is not None
    status = Path(f"/proc/{hostile.proc.pid}/status").read_text()
    peak_kb = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM")))
    assert peak_kb < MAX_RSS_KB, f"peak RSS {peak_kb} kB"
    assert "Traceback" not in hostile.logs()
    assert len({c.klass for c in CASES}) >= 12 and len(CASES) >= 60
