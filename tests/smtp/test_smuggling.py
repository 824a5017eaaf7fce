"""SMTP smuggling and injection regressions, at the protocol level (raw sockets, openssl).

The end of DATA is CRLF "." CRLF and nothing else; a bare LF or CR anywhere in a command or
in the data is refused, the data's connection closed; nothing pipelined before STARTTLS
survives it (CVE-2024-34083); the cases of aiosmtpd's own smuggling tests are included.
"""

from __future__ import annotations

import base64
import subprocess
import time

import pytest

from tests.smtp.conftest import ALICE, BOB, PASSWORD, Gateway, Raw

AUTH = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())


def session(gateway: Gateway) -> Raw:
    raw = Raw(gateway.ports["smtps"], tls=gateway.client_context())
    assert raw.reply().startswith(b"220 ")
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"AUTH PLAIN " + AUTH).startswith(b"235 2.7.0")
    return raw


HEAD = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: s\r\n\r\n".encode()
SMUGGLED = f"MAIL FROM:<{ALICE}>\r\nRCPT TO:<{BOB}>\r\nDATA\r\nFrom: {ALICE}\r\n\r\nevil\r\n"


@pytest.mark.parametrize(
    "terminator",
    [
        b"\n.\r\n",  # CVE-2023-51764 style (Postfix)
        b"\r\n.\n",
        b"\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
    ],
    ids=["lf-dot-crlf", "crlf-dot-lf", "lf-dot-lf", "cr-dot-crlf", "crlf-dot-cr", "nul-dot"],
)
def test_fake_end_of_data_cannot_smuggle_a_second_message(
    gateway: Gateway, terminator: bytes
) -> None:
    raw = session(gateway)
    raw.cmd(f"MAIL FROM:<{ALICE}>".encode())
    raw.cmd(f"RCPT TO:<{BOB}>".encode())
    assert raw.cmd(b"DATA").startswith(b"354")
    raw.send(HEAD + b"first" + terminator + SMUGGLED.encode() + b"\r\n.\r\n")
    answer = raw.reply()
    if terminator == b"\r\n\x00.\r\n":
        # No bare newline at all: one well-formed message whose body holds the text.
        assert answer.startswith(b"250 2.0.0")
        assert raw.cmd(b"QUIT").startswith(b"221")
        [only] = gateway.wait_delivered(BOB, 1)
        assert b"evil" in only.read_bytes()
    else:
        assert answer.startswith(b"550 5.6.0"), answer
        assert raw.closed()  # nothing after it is read as a command
    raw.close()
    time.sleep(0.5)
    # Never a second message: at most the one the client meant.
    assert len(gateway.mailbox(BOB)) == (1 if terminator == b"\r\n\x00.\r\n" else 0)


@pytest.mark.parametrize(
    "line",
    [b"NOOP\n", b"NOOP\r", b"NO\rOP\r\n", b"MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\r\n"],
)
def test_bare_cr_or_lf_in_commands(gateway: Gateway, line: bytes) -> None:
    raw = session(gateway)
    raw.send(line)
    if line == b"NOOP\r":
        raw.send(b"\r\n")  # the CR alone does not end a line; CRLF after it does
    assert raw.reply().startswith(b"500 5.5.2")
    assert raw.closed()  # what came after the bare newline is never executed
    raw.close()


def test_bare_lf_inside_a_data_line(gateway: Gateway) -> None:
    # aiosmtpd 1.4.6 alone passes this through.
    raw = session(gateway)
    raw.cmd(f"MAIL FROM:<{ALICE}>".encode())
    raw.cmd(f"RCPT TO:<{BOB}>".encode())
    raw.cmd(b"DATA")
    raw.send(HEAD + b"a line\nwith a bare LF\r\n.\r\n")
    assert raw.reply().startswith(b"550 5.6.0")
    assert raw.closed()
    raw.close()


def test_dot_stuffing_and_pipelined_commands_after_data(gateway: Gateway) -> None:
    raw = session(gateway)
    raw.cmd(f"MAIL FROM:<{ALICE}>".encode())
    raw.cmd(f"RCPT TO:<{BOB}>".encode())
    raw.cmd(b"DATA")
    # The final dot and the next commands in one write: the commands must still be answered.
    raw.send(HEAD + b"..one dot\r\n.\r\n" + b"NOOP\r\nQUIT\r\n")
    assert raw.reply().startswith(b"250 2.0.0 Ok: queued as")
    assert raw.reply().startswith(b"250")
    assert raw.reply().startswith(b"221")
    raw.close()
    [msg] = gateway.wait_delivered(BOB, 1)
    assert msg.read_bytes().endswith(b"\r\n.one dot\r\n")


def test_starttls_command_injection_is_discarded(gateway: Gateway) -> None:
    raw = Raw(gateway.ports["submission"])
    raw.reply()
    raw.cmd(b"EHLO client.test")
    # Plaintext pipelined behind STARTTLS must not be executed inside TLS.
    raw.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n")
    assert raw.reply().startswith(b"220")
    raw.sock = gateway.client_context().wrap_socket(raw.sock, server_hostname="localhost")
    raw.buf = b""
    assert raw.cmd(b"NOOP").startswith(b"250")  # the first answer is to NOOP, not to RSET
    assert raw.cmd(b"EHLO client.test").startswith(b"250-")
    raw.close()


def test_openssl_s_client_starttls_session(gateway: Gateway) -> None:
    script = b"EHLO client.test\nAUTH PLAIN " + AUTH + b"\nQUIT\n"  # -crlf adds the CRs
    out = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{gateway.ports['submission']}",
            "-starttls", "smtp", "-CAfile", str(gateway.ca), "-verify_return_error",
            "-crlf", "-quiet", "-ign_eof",
        ],
        input=script, capture_output=True, timeout=30,
    )  # fmt: skip
    assert b"235 2.7.0" in out.stdout, out.stdout + out.stderr
    assert b"221" in out.stdout


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_old_tls_versions_are_refused(gateway: Gateway, version: str) -> None:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.ports['smtps']}", version],
        input=b"", capture_output=True, timeout=30,
    )  # fmt: skip
    assert out.returncode != 0
    event = gateway.wait_event("smtp.tls_failed", listener="smtps")
    assert "\n" not in str(event["error"])
    assert "Traceback" not in gateway.logs()


def test_non_forward_secret_cipher_is_refused(gateway: Gateway) -> None:
    out = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{gateway.ports['smtps']}",
            "-tls1_2", "-cipher", "AES128-GCM-SHA256",
        ],
        input=b"", capture_output=True, timeout=30,
    )  # fmt: skip
    assert out.returncode != 0


def test_tls_scan_leaves_one_line_per_failure(gateway: Gateway) -> None:
    for _ in range(20):
        subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.ports['smtps']}", "-tls1"],
            input=b"", capture_output=True, timeout=30,
        )  # fmt: skip
    time.sleep(0.5)
    failures = [e for e in gateway.events() if e.get("event") == "smtp.tls_failed"]
    assert len(failures) == 20
    assert "Traceback" not in gateway.logs()
    lines = gateway.logs().splitlines()
    assert all(line.startswith("{") for line in lines if line.strip())  # only JSON events
