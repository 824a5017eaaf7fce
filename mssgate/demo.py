"""`mssgate demo`: the whole product in a temporary folder, step by step.

Two gateways on this machine, each with its own dev CA, each on the other's trust list:
hospital A (a RIS consumes its application mailbox) and clinic B. A radiologist of B sends an
S/MIME-signed imaging report (a CR-IMG CDA in an IHE XDM zip) to the RIS mailbox of A; A
verifies, finds the INS and the imaging pointers, queues the document; the demo leases it as
the RIS would, prints the HL7 MDM, acknowledges it, and the MDN receipt arrives back in the
radiologist's mailbox at B. Everything goes over real sockets and TLS on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from mssgate.cli import run
from mssgate.documents.headers import build_ddm_subject
from mssgate.documents.samples import make_sample_xdm
from mssgate.errors import MssgateError
from mssgate.pki import dkim_dns_record, load_certificate, load_private_key
from mssgate.smime import sign_message

A, B = "hopital-a.test", "clinique-b.test"
RIS = f"ris@{A}"
DOCTOR = f"dr.martin@{B}"
PASSWORD = "demo password 2026"  # noqa: S105 (a throw-away account of a temporary folder)


class DemoFailed(MssgateError):
    pass


def _say(step: str, text: str) -> None:
    print(f"[{step:>8}] {text}", flush=True)


def _cli(*args: str, stdin: str | None = None) -> str:
    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out):
            code = run(list(args))
    finally:
        sys.stdin = old
    if code != 0:
        raise DemoFailed(f"setup step failed: mssgate {' '.join(args[:3])}")
    return out.getvalue()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Node:
    def __init__(self, root: Path, domain: str, ports: list[int]) -> None:
        self.data = root / domain
        self.domain = domain
        self.ports = dict(zip(("submission", "smtps", "mta", "api"), ports, strict=True))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data / "serve.log"

    @property
    def host(self) -> str:
        return f"mx.{self.domain}"

    @property
    def cfg(self) -> list[str]:
        return ["--config", str(self.data / "mssgate.toml")]

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
        env.update(
            MSSGATE_CONFIG=str(self.data / "mssgate.toml"),
            MSSGATE_SMTP__SUBMISSION_PORT=str(self.ports["submission"]),
            MSSGATE_SMTP__SMTPS_PORT=str(self.ports["smtps"]),
            MSSGATE_SMTP__MTA_PORT=str(self.ports["mta"]),
            MSSGATE_API__PORT=str(self.ports["api"]),
            MSSGATE_POLICY__ALLOW_TEST_INS="true",
            MSSGATE_RELAY__RETRY_FIRST_SECONDS="1",
            # The demo is about the message path; IMAP is shown by the tests (and `serve`).
            MSSGATE_IMAP__ENABLED="false",
            **extra,
        )
        return env

    def start(self, extra: dict[str, str]) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mssgate", "serve"],
                env=self.env(extra),
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        status = self.data / "run" / "serve.json"
        _wait(lambda: status.exists(), 30, f"gateway {self.domain} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    def events(self) -> Iterator[dict[str, Any]]:
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                yield json.loads(line)

    def event(self, name: str, timeout: float = 30, **fields: object) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [
                e
                for e in self.events()
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]
            return bool(found)

        _wait(seen, timeout, f"{self.domain}: no {name} event")
        return found[-1]

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.data / "certs" / "ca.crt.pem")

    def mailbox(self, address: str) -> list[Path]:
        local, domain = address.split("@")
        new = self.data / "mail" / domain / local / "Maildir" / "new"
        return sorted(new.iterdir()) if new.exists() else []


def _wait(check: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise DemoFailed(message)


def _api(node: Node, token: str, method: str, path: str, body: object = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"https://127.0.0.1:{node.ports['api']}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=node.tls(), timeout=30) as answer:  # noqa: S310
        return bytes(answer.read())


def _signature(message: EmailMessage, verifier: str) -> str:
    """What says the message is S/MIME-signed and that `verifier` checked it; raises if not.

    The receipt is evidence for the sender only if a forger could not have written it."""
    if message.get_content_type() not in ("multipart/signed", "application/pkcs7-mime"):
        raise DemoFailed(f"the MDN is not signed ({message.get_content_type()})")
    ours = [
        str(v)
        for v in message.get_all("Authentication-Results") or []
        if str(v).startswith(verifier)
    ]
    if not any("smime=pass" in v for v in ours):
        raise DemoFailed(f"{verifier} did not verify the MDN's signature: {ours}")
    return f"{message.get_content_type()}, smime=pass at {verifier}"


def _report_mail(smime_dir: Path) -> bytes:
    xdm = make_sample_xdm()
    msg = EmailMessage()
    msg["From"], msg["To"] = DOCTOR, RIS
    # The CI-SIS convention wants the birth date as dd/mm/yyyy: built, not written by hand.
    msg["Subject"] = build_ddm_subject("CR d'imagerie", "PAT-TROIS", "Dominique", "1979-03-28")
    msg["Message-ID"] = f"<demo-cr-img@{B}>"
    msg["Disposition-Notification-To"] = DOCTOR
    msg.set_content("Veuillez trouver ci-joint le compte rendu d'imagerie.")
    msg.add_attachment(xdm, maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
    return sign_message(
        msg.as_bytes(policy=SMTP_POLICY),
        key=load_private_key(smime_dir / f"{DOCTOR}.key.pem"),  # type: ignore[arg-type]
        cert=load_certificate(smime_dir / f"{DOCTOR}.crt.pem"),
    )


def _setup(root: Path) -> tuple[Node, Node, str]:
    ports = _free_ports(8)
    a, b = Node(root, A, ports[:4]), Node(root, B, ports[4:])
    for node in (a, b):
        _cli("init", "--data", str(node.data), "--domain", node.domain)
    _cli(*a.cfg, "directory", "add", RIS, "--name", "RIS imagerie", "--kind", "application")
    _cli(*a.cfg, "cert", "issue", RIS, "--out", str(a.data / "certs" / "mailboxes"))
    token = json.loads(_cli(*a.cfg, "consumer", "add", "ris", "--mailbox", RIS, "--json"))["token"]
    _cli(*b.cfg, "directory", "add", DOCTOR, "--name", "Claire Martin", "--rpps", "99700367909",
         "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    _cli(*b.cfg, "cert", "issue", DOCTOR, "--out", str(root / "smime"))
    for here, there in ((a, b), (b, a)):
        _cli(*here.cfg, "domain", "trust", there.domain,
             "--relay", f"127.0.0.1:{there.ports['mta']}",
             "--ca", str(there.data / "certs" / "ca.crt.pem"))  # fmt: skip
    return a, b, token


def _dkim_overrides(a: Node, b: Node) -> dict[str, str]:
    records = {}
    for node in (a, b):
        key = load_private_key(node.data / "certs" / "dkim.key.pem")
        records[f"mssgate._domainkey.{node.domain}"] = dkim_dns_record(key.public_key())
    return {"MSSGATE_DKIM__DNS_OVERRIDES": json.dumps(records)}


def run_demo(root: Path) -> None:
    _say("setup", f"two gateways in {root}: {A} (RIS mailbox {RIS}) and {B} ({DOCTOR})")
    a, b, token = _setup(root)
    extra = _dkim_overrides(a, b)
    try:
        a.start(extra)
        b.start(extra)
        _say("serve", f"{A}: SMTP {a.ports['submission']}/{a.ports['smtps']}, "
             f"peers {a.ports['mta']}, RIS API {a.ports['api']}")  # fmt: skip
        _say(
            "serve", f"{B}: SMTP {b.ports['submission']}/{b.ports['smtps']}, peers {b.ports['mta']}"
        )
        mail = _report_mail(root / "smime")
        client = smtplib.SMTP("127.0.0.1", b.ports["submission"], timeout=30)
        client.starttls(context=b.tls())
        client.login(DOCTOR, PASSWORD)
        tls = client.sock.version() if isinstance(client.sock, ssl.SSLSocket) else "?"
        _say("submit", f"{DOCTOR} sends a signed CR-IMG (IHE_XDM.ZIP) over {tls} to {RIS}")
        client.sendmail(DOCTOR, [RIS], mail)
        client.quit()
        accepted = b.event("smtp.accept", listener="submission")
        _say("accept", f"{B} verified the signature and spooled it as {accepted['queue_id']}")
        inbound = a.event("smtp.accept", listener="mta")
        tls_in = a.event("smtp.tls", listener="mta")
        _say("relay", f"{B} relayed it to {A} over mutual TLS ({tls_in['version']}, "
             f"{tls_in['cipher']}); {A} queued it as {inbound['queue_id']}")  # fmt: skip
        ingested = a.event("documents.ingested", documents=1)
        [queued] = json.loads(_cli(*a.cfg, "queue", "list", "--state", "ready", "--json"))
        _say("queued", f"{A} queued document {queued['id']} for {queued['mailbox']} "
             f"(from message {ingested['queue_id']}), ready for the RIS")  # fmt: skip
        [delivered] = a.mailbox(RIS) or [Path()]
        fields = BytesParser(policy=default_policy).parsebytes(delivered.read_bytes())
        ours = next(
            str(v)
            for v in fields.get_all("Authentication-Results") or []
            if str(v).startswith(a.host)
        )
        checks = [r.split()[0] for r in ours.split(";")[1:] if r.strip()]
        _say("verify", f"{A} checked it: {', '.join(checks)}")
        leased = json.loads(_api(a, token, "POST", "/v1/leases", {"max": 1, "lease_seconds": 60}))
        lease = leased["leases"][0]
        doc = lease["document"]
        if doc["id"] != queued["id"]:
            raise DemoFailed(f"leased {doc['id']}, not the queued {queued['id']}")
        _say("lease", f"the RIS leased document {doc['id']} until {lease['expires_at']} "
             "(POST /v1/leases)")  # fmt: skip
        _say("INS", f"patient INS {doc['ins']['value']} ({doc['ins']['kind']}, OID "
             f"{doc['ins']['oid']}, qualified={doc['ins']['qualified']})")  # fmt: skip
        _say("document", f"{doc['document']['format']} {doc['document']['type_code']} "
             f"\"{doc['document']['title']}\"")  # fmt: skip
        for pointer in doc["imaging"]:
            _say("imaging", f"study {pointer['study_instance_uid']} "
                 f"accession {pointer['accession_number']}")  # fmt: skip
        hl7 = _api(a, token, "GET", f"/v1/documents/{doc['id']}/hl7").decode()
        _say("HL7", "MDM message for the RIS:")
        for segment in hl7.replace("\r\n", "\r").split("\r"):
            if segment:
                print("           " + (segment if len(segment) < 110 else segment[:107] + "..."))
        _api(a, token, "POST", f"/v1/documents/{doc['id']}/ack", {"lease_id": lease["lease_id"]})
        _say("ack", "the RIS acknowledged the document")
        _wait(lambda: bool(b.mailbox(DOCTOR)), 60, "no MDN came back")
        mdn = BytesParser(policy=default_policy).parsebytes(b.mailbox(DOCTOR)[0].read_bytes())
        _say("receipt", f'{DOCTOR} received the MDN: "{mdn["Subject"]}" from {mdn["From"]}')
        _say("receipt", f"the MDN is signed: {_signature(mdn, b.host)}")
        _say("done", "every step passed")
    finally:
        for node in (b, a):
            node.stop()


def demo(keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="mssgate-demo-"))
    try:
        run_demo(root)
    except MssgateError as exc:
        print(f"demo failed: {exc} (logs kept in {root})", file=sys.stderr)
        return 1
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0
