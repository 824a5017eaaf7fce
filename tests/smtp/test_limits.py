"""Connection, command and time limits, and what the logs say about them."""

from __future__ import annotations

import socket
import time

from tests.smtp.conftest import ALICE, BOB, Gateway, Raw, message


def test_connections_per_ip(gateway: Gateway) -> None:
    gateway.stop()
    gateway.start(extra_env={"MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP": "3"})
    held = [Raw(gateway.ports["submission"]) for _ in range(3)]
    for raw in held:
        assert raw.reply().startswith(b"220 ")
    extra = Raw(gateway.ports["submission"])
    assert extra.reply().startswith(b"421 4.7.0")
    assert extra.closed()
    extra.close()
    held.pop().close()
    time.sleep(0.3)
    again = Raw(gateway.ports["submission"])
    assert again.reply().startswith(b"220 ")
    for raw in [*held, again]:
        raw.close()


def test_commands_before_auth(gateway: Gateway) -> None:
    gateway.stop()
    gateway.start(extra_env={"MSSGATE_SMTP__MAX_COMMANDS_BEFORE_AUTH": "5"})
    raw = Raw(gateway.ports["submission"])
    raw.reply()
    answers = [raw.cmd(b"NOOP") for _ in range(5)]
    assert all(a.startswith(b"250") for a in answers)
    assert raw.cmd(b"NOOP").startswith(b"421 4.7.0")
    assert raw.closed()
    raw.close()


def test_idle_timeout(gateway: Gateway) -> None:
    gateway.stop()
    gateway.start(extra_env={"MSSGATE_SMTP__IDLE_TIMEOUT_SECONDS": "1"})
    raw = Raw(gateway.ports["submission"])
    raw.reply()
    time.sleep(2)
    assert raw.reply().startswith(b"421 4.4.2")
    assert raw.closed()
    raw.close()


def test_oversized_command_line(gateway: Gateway) -> None:
    raw = Raw(gateway.ports["submission"])
    raw.reply()
    assert raw.cmd(b"NOOP " + b"x" * 2000).startswith(b"500 5.5.6")
    # Even one far over the reader's buffer is drained, not held.
    assert raw.cmd(b"NOOP " + b"y" * 200_000).startswith(b"500 5.5.6")
    assert raw.cmd(b"NOOP").startswith(b"250")
    raw.close()


def test_client_dropping_mid_data_leaves_nothing(gateway: Gateway) -> None:
    client = gateway.login()
    client.mail(ALICE)
    client.rcpt(BOB)
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(message()[:40])
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    time.sleep(0.5)
    assert gateway.mailbox(BOB) == []
    assert list((gateway.data / "spool" / "msg").iterdir()) == []
    assert "Traceback" not in gateway.logs()


def test_second_serve_on_the_same_data_dir_refuses(gateway: Gateway) -> None:
    import subprocess

    from tests.smtp.conftest import MSSGATE

    out = subprocess.run(
        [MSSGATE, "serve"], env=gateway.env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    assert "another 'mssgate serve'" in out.stderr
    assert out.stderr.count("\n") == 1


def test_failed_handshakes_give_their_slot_back(gateway: Gateway) -> None:
    import subprocess

    gateway.stop()
    gateway.start(extra_env={"MSSGATE_SMTP__MAX_CONNECTIONS_PER_IP": "3"})
    for _ in range(10):
        for args in (
            ["-connect", f"127.0.0.1:{gateway.ports['smtps']}", "-tls1"],
            ["-connect", f"127.0.0.1:{gateway.ports['submission']}", "-starttls", "smtp",
             "-tls1"],
        ):  # fmt: skip
            subprocess.run(["openssl", "s_client", *args], input=b"", capture_output=True,
                           timeout=30)  # fmt: skip
    time.sleep(0.5)
    held = [Raw(gateway.ports["submission"]) for _ in range(3)]
    try:
        assert all(raw.reply().startswith(b"220 ") for raw in held)
    finally:
        for raw in held:
            raw.close()


def test_a_large_message_goes_through_a_spill_file_intact(gateway_setup: Gateway) -> None:
    # A 64 KB spill threshold: a 3 MB message arrives in an anonymous file, not in memory.
    gateway_setup.env["MSSGATE_SMTP__SPILL_THRESHOLD"] = str(64 * 1024)
    gateway_setup.start()
    try:
        lines = [f"{i:08d} ".encode() + b"y" * 70 for i in range(40_000)]
        lines[5] = b".a line that starts with a dot, stuffed on the wire"
        body = b"\r\n".join(lines).decode()
        client = gateway_setup.login()
        client.sendmail(ALICE, [BOB], message(body=body))
        client.quit()
        [delivered] = gateway_setup.wait_delivered(BOB, 1)
        content = delivered.read_bytes()
        assert content.endswith(body.encode() + b"\r\n")
        assert b"\r\n.a line that starts with a dot" in content
        # Nothing of it stays behind in the spool's temporary folder.
        assert list((gateway_setup.data / "spool" / "tmp").iterdir()) == []
    finally:
        gateway_setup.stop()


def test_delivery_attempts_come_from_the_configuration(gateway_setup: Gateway) -> None:
    # A file where Bob's mailbox folder should be: every delivery to him fails (even as
    # root), temporarily; with one attempt allowed, the first failure is the last.
    bob_local, domain = BOB.split("@")
    (gateway_setup.data / "mail" / domain).mkdir(parents=True)
    (gateway_setup.data / "mail" / domain / bob_local).write_bytes(b"")
    gateway_setup.start(extra_env={"MSSGATE_DELIVERY__MAX_ATTEMPTS": "1"})
    try:
        client = gateway_setup.login()
        client.mail(ALICE)
        client.rcpt(BOB)
        code, text = client.data(message())
        client.quit()
        assert code == 250
        queue_id = text.split()[-1].decode()
        failed = gateway_setup.wait_event("delivery.failed", queue_id=queue_id)
        assert failed["permanent"] is True and failed["attempts"] == 1
    finally:
        gateway_setup.stop()
