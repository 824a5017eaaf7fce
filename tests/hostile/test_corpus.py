"""Every case of the hostile corpus against a live gateway: the expected outcome for each,
bounded memory, and no file written outside the data folder. The IMAP cases get a gateway of
their own, with IMAP (and so Dovecot) on, so that their memory is measured apart."""

from __future__ import annotations

import base64
import imaplib
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mssgate.dovecot import find_dovecot
from mssgate.pki import (
    create_dev_ca,
    issue_smime_cert,
    load_certificate,
    load_private_key,
)
from mssgate.smime import sign_message
from mssgate.smime.sign import base64_lines
from tests.conftest import DOMAIN, Cli
from tests.documents.factory import NESSI, CdaSpec, EntrySpec, make_cda, make_xdm, with_patient
from tests.hostile.corpus import CASES, Case
from tests.signed_mail import (
    in_preamble_and_epilogue,
    smuggle_in_signature,
    wrapped_in_mixed,
)
from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, Raw, free_env

AUTH = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
MAX_SIZE = 3 * 1024 * 1024
MAX_RSS_KB = 400 * 1024
IMAP_KINDS = ("imap", "imap-clear")
SMTP_CASES = [c for c in CASES if c.kind not in IMAP_KINDS]
IMAP_CASES = [c for c in CASES if c.kind in IMAP_KINDS]


@pytest.fixture(scope="module")
def corpus_built() -> dict[str, bytes]:
    return {c.name: c.build() for c in CASES}


@pytest.fixture
def hostile(cli: Cli, gateway_setup: Gateway, tmp_path: Path) -> Iterator[Gateway]:
    out = tmp_path / "smime"
    # --no-escrow: the gateway holds no key to sign an unsigned message for them (refused).
    cli.ok("cert", "issue", ALICE, "--out", str(out), "--no-escrow")
    cli.ok("cert", "issue", BOB, "--out", str(out), "--no-escrow")
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


def _outside_case(gw: Gateway, where: str) -> bytes:
    """A message Alice validly signed, with another patient's IHE XDM where no signature
    covers it (tests/signed_mail.py)."""
    key, cert = _key(gw, ALICE)
    body = _mail(f"outside-{where}", raw_body=b"\r\nBonjour\r\n")
    signed = sign_message(body, key=key, cert=cert)  # type: ignore[arg-type]
    cda = make_cda(with_patient(CdaSpec(doc_root="1.2.250.1.999.1.1.124"), NESSI))
    xdm = make_xdm(NESSI, [EntrySpec("DOC0001.XML", cda)])
    if where == "signature-part":
        return smuggle_in_signature(signed, xdm)
    if where == "preamble-epilogue":
        return in_preamble_and_epilogue(signed, xdm)
    if where == "opaque-around-signature-part":
        hidden = smuggle_in_signature(signed, xdm)
        return sign_message(hidden, key=key, cert=cert, detached=False)  # type: ignore[arg-type]
    if where == "part-next-to-signed":
        return wrapped_in_mixed(signed, xdm)
    assert where == "third-part-in-signed"
    boundary = signed.split(b'boundary="')[1].split(b'"')[0]
    close = b"\r\n--" + boundary + b"--"
    third = (
        b"\r\n--" + boundary + b"\r\nContent-Type: application/zip\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64_lines(xdm)
    )
    return signed.replace(close, third + close)


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
        if case.kind in ("signature", "outside"):
            which = payload.decode()
            if case.kind == "signature":
                data = _signature_case(gw, which, tmp)
            else:
                data = _outside_case(gw, which)
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
    outside_accepted = 0
    client = hostile.login()
    for case in SMTP_CASES:
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
        if case.kind == "outside" and answer.startswith(b"250"):
            outside_accepted += 1
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
    # The pipeline has run on every accepted message before the queue is looked at.
    ingested = 0
    while time.monotonic() < deadline:
        ingested = sum(1 for e in hostile.events() if e.get("event") == "documents.ingested")
        if ingested >= len(documents) + outside_accepted:
            break
        time.sleep(0.5)
    if ingested < len(documents) + outside_accepted:
        failures.append(f"only {ingested} messages went through the pipeline")
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


# -- IMAP before login ----------------------------------------------------------------------


def _memory_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


@pytest.fixture
def hostile_imap(cli: Cli) -> Iterator[Gateway]:
    if find_dovecot() is None:
        pytest.skip("Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
    # As root, Dovecot's mail user must traverse the data folder's parents, and pytest keeps
    # its own temporary root 0700: a folder of our own under /tmp, removed afterwards.
    root = Path(tempfile.mkdtemp(prefix="mssgate-hostile-imap-"))
    root.chmod(0o711)
    data = root / "data"
    scratch = root / "scratch-tmp"
    scratch.mkdir()
    try:
        cli.ok("init", "--data", str(data), "--domain", DOMAIN)
        cfg = ["--config", str(data / "mssgate.toml")]
        cli.ok(*cfg, "directory", "add", ALICE, "--name", "A", "--rpps", "99700367909",
               "--password-stdin",
               stdin=PASSWORD + "\n")  # fmt: skip
        gateway = Gateway(data=data, env=free_env(data))
        gateway.env.update(
            MSSGATE_IMAP__ENABLED="true",
            MSSGATE_IMAP__PORT="0",
            MSSGATE_IMAP__IMAPS_PORT="0",
            TMPDIR=str(scratch),
        )
        gateway.start()
        gateway.scratch = scratch  # type: ignore[attr-defined]
        try:
            yield gateway
        finally:
            if gateway.proc is not None:
                gateway.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Wire:
    """A client connection that keeps whatever the server said before it reset.

    A client that writes into a connection the server has closed gets a reset, and asyncio
    (or ssl.SSLSocket) then drops the bytes still waiting to be read, the refusal among them.
    Here TLS runs over memory buffers, and the raw bytes are read apart from the writes.
    """

    def __init__(self, port: int, ctx: ssl.SSLContext | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.received = b""
        self.closed = False
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_hostname="localhost") if ctx else None
        while self._tls is not None:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                assert data, "closed during the TLS handshake"
                self._in.write(data)
        self._flush()

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(self._out.read())

    def send(self, data: bytes) -> bool:
        """False once the server is gone, or has stopped reading for 10 s."""
        self.sock.settimeout(10)
        try:
            if self._tls is None:
                self.sock.sendall(data)
            else:
                self._tls.write(data)
                self._flush()
        except OSError:
            return False
        return True

    def poll(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        if self._tls is None:
            self.received += data
            return
        self._in.write(data)
        while True:
            try:
                clear = self._tls.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLError:  # a broken record: the server is done
                self.closed = True
                return
            if not clear:  # close_notify
                self.closed = True
                return
            self.received += clear

    def wait_closed(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.closed and (left := deadline - time.monotonic()) > 0:
            self.poll(left)

    def lines(self) -> list[bytes]:
        return self.received.split(b"\r\n")[:-1]


def _imap_attack(
    port: int, ctx: ssl.SSLContext | None, payload: bytes, stream: int
) -> tuple[list[bytes], bool, int]:
    """(the server's lines after its greeting, whether it hung up, filler bytes sent)."""
    wire = _Wire(port, ctx)
    try:
        while not wire.lines():
            wire.poll(10)
            assert not wire.closed, "closed before its greeting"
        assert wire.lines()[0].startswith(b"* OK"), wire.received
        sent = 0
        if wire.send(payload):
            chunk = b"x" * 65536
            while sent < stream:
                wire.poll(0)
                if wire.closed or not wire.send(chunk[: stream - sent]):
                    break
                sent += min(len(chunk), stream - sent)
        wire.wait_closed(5)
        return wire.lines()[1:], wire.closed, sent
    finally:
        wire.sock.close()


@pytest.mark.slow
def test_hostile_imap_preauth(hostile_imap: Gateway, corpus_built: dict[str, bytes]) -> None:
    gw = hostile_imap
    assert gw.proc is not None and IMAP_CASES
    before_kb = _memory_kb(gw.proc.pid, "VmRSS")
    peak_before_kb = _memory_kb(gw.proc.pid, "VmHWM")
    failures: list[str] = []
    for case in IMAP_CASES:
        tls = case.kind == "imap"
        port = gw.ports["imaps" if tls else "imap"]
        ctx = gw.client_context() if tls else None
        lines, closed, sent = _imap_attack(port, ctx, corpus_built[case.name], case.stream)
        last = lines[-1] if lines else b"(nothing)"
        if not last.decode(errors="replace").startswith(str(case.expect)):
            failures.append(f"{case.name}: expected {case.expect}, got {last[:80]!r}")
        if case.closes and not closed:
            failures.append(f"{case.name}: the connection stayed open")
        # More than the kernel's socket buffers can hold: the server was reading it.
        if case.stream >= 16 << 20 and sent >= case.stream:
            failures.append(f"{case.name}: the server read all {sent} bytes of filler")
    assert failures == []
    # The refused bytes were never held: memory back where it was, and no new peak either
    # (a 64 MiB literal held for a moment would raise it).
    grown_kb = _memory_kb(gw.proc.pid, "VmRSS") - before_kb
    peak_kb = _memory_kb(gw.proc.pid, "VmHWM")
    assert grown_kb < 20 * 1024, f"RSS grew by {grown_kb} kB"
    assert peak_kb - peak_before_kb < 20 * 1024, f"peak RSS {peak_before_kb} -> {peak_kb} kB"
    # Still answering: a real login reaches Dovecot, and SMTP is there too.
    imap = imaplib.IMAP4_SSL("127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context())
    try:
        assert imap.login(ALICE, PASSWORD)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
    finally:
        imap.logout()
    smtp = gw.login()
    assert smtp.noop()[0] == 250
    smtp.quit()
    reasons = {str(e.get("reason")) for e in gw.events() if e.get("event") == "imap.reject"}
    assert {"literal_too_big", "line_too_long", "too_many_commands"} <= reasons
    assert list(gw.scratch.iterdir()) == []  # type: ignore[attr-defined]
    assert "Traceback" not in gw.logs()
