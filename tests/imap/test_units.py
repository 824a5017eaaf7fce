"""Pure parts: pre-auth syntax, the Dovecot config, LMTP replies mapped to DeliveryFailed
(and the delivery worker counting the retries that may deliver twice)."""

from __future__ import annotations

import asyncio
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mssgate import metrics
from mssgate.db import open_engine, upgrade
from mssgate.dovecot.conf import Layout, Users, render
from mssgate.imap.parse import Literal, ParseError, literal_at_end, start_command, tokens
from mssgate.mailstore import DeliveryFailed, LmtpStore
from mssgate.spool.delivery import DeliveryWorker
from mssgate.spool.store import Spool, new_queue_id


def test_literal_announcements() -> None:
    assert literal_at_end(b"a LOGIN {5}") == (b"a LOGIN ", Literal(5, True))
    assert literal_at_end(b"a LOGIN {52428800+}") == (b"a LOGIN ", Literal(52428800, False))
    assert literal_at_end(b"a LOGIN x y") == (b"a LOGIN x y", None)
    assert literal_at_end(b"a LOGIN {0000000000000000000005+}") == (b"a LOGIN ", Literal(5, False))
    # Past 32 bits, and past any count at all: still a literal (its bytes follow and must not
    # be read as commands), one that no limit admits; never a slow int() of the digits.
    assert literal_at_end(b"a LOGIN {99999999999+}")[1] == Literal(99999999999, False)
    for digits in (20, 5000):
        rest, literal = literal_at_end(b"a LOGIN {" + b"9" * digits + b"}")
        assert rest == b"a LOGIN " and literal is not None and literal.size >= 2**63
    assert literal_at_end(b"a LOGIN {}")[1] is None
    assert literal_at_end(b"a LOGIN {-5}")[1] is None
    assert literal_at_end(b"a LOGIN {\xd9\xa5}")[1] is None  # non-ASCII digits are not digits


def test_tokens() -> None:
    assert tokens(b'user "p\\"w d" NIL (a b)') == [b"user", b'p"w d', None, b"(", b"a", b"b", b")"]
    for bad in (b'"open', b'"bad \\x escape"', b"{"):
        with pytest.raises(ParseError):
            tokens(bad)


def test_start_command() -> None:
    assert start_command(b"a1 login x y") == ("a1", "LOGIN", b"x y")
    assert start_command(b"a1 NOOP") == ("a1", "NOOP", b"")
    for bad in (b"", b"a1", b"* LOGIN", b"a+ NOOP", b"a1 {5}"):
        with pytest.raises(ParseError):
            start_command(bad)


def _users(privileged: bool) -> Users:
    return Users(privileged, "mail", 8, 8, "dovecot", "dovecot", "dovenull", "root")


def _layout(data: str) -> Layout:
    return Layout(Path(data), Path("/run/mssgate/0123456789ab"), Path(data) / "mail")


def test_config_has_no_network_listener_and_keeps_its_files_in_the_layout() -> None:
    text = render(_layout("/srv/gw"), _users(True), instance="mssgate-a")
    assert 'base_dir = "/run/mssgate/0123456789ab"' in text
    assert 'state_dir = "/srv/gw/dovecot/state"' in text
    assert 'mail_home = "/srv/gw/mail/%d/%n"' in text
    assert "mail_location = maildir:~/Maildir" in text
    assert text.count("port = 0") == 2 and "inet_listener lmtp" not in text
    for flag in ("\\Sent", "\\Drafts", "\\Trash", "\\Junk"):
        assert f"special_use = {flag}" in text
    assert "chroot =" not in text
    assert "chroot =" in render(_layout("/srv/gw"), _users(False), instance="x")
    with pytest.raises(ValueError, match="not usable"):
        render(_layout('/srv/"gw'), _users(True), instance="x")


class _FakeLmtp(socketserver.StreamRequestHandler):
    rcpt_reply = b"250 2.1.5 OK"
    data_go = b"354 go"
    # None: read the message to its final dot, then hang up without a word (a Dovecot
    # killed between saving the message and its 250).
    data_reply: bytes | None = b"250 2.0.0 saved"

    def handle(self) -> None:
        self.wfile.write(b"220 fake LMTP\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"LHLO":
                self.wfile.write(b"250-fake\r\n250 PIPELINING\r\n")
            elif verb == b"RCPT":
                self.wfile.write(self.rcpt_reply + b"\r\n")
            elif verb == b"DATA":
                self.wfile.write(self.data_go + b"\r\n")
                if not self.data_go.startswith(b"354"):
                    continue
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                if self.data_reply is None:
                    return
                self.wfile.write(self.data_reply + b"\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


@pytest.fixture
def fake_lmtp(tmp_path: Path) -> Iterator[tuple[Path, type[_FakeLmtp]]]:
    path = tmp_path / "lmtp"

    class Handler(_FakeLmtp):
        pass

    server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, Handler
    server.shutdown()
    server.server_close()
    thread.join()


def test_lmtp_replies_map_to_delivery_results(fake_lmtp: tuple[Path, type[_FakeLmtp]]) -> None:
    path, handler = fake_lmtp
    store = LmtpStore(path, timeout=5)
    store.deliver("a@b.test", b"Subject: x\r\n\r\nhi\r\n", delivery_id="1", sender="s@b.test")
    handler.rcpt_reply = b"550 5.1.1 no such user"
    with pytest.raises(DeliveryFailed) as exc:
        store.deliver("a@b.test", b"x\r\n", delivery_id="2", sender="s@b.test")
    assert exc.value.permanent
    handler.rcpt_reply = b"250 2.1.5 OK"
    handler.data_reply = b"451 4.2.0 try later"
    with pytest.raises(DeliveryFailed) as exc:
        store.deliver("a@b.test", b"x\r\n", delivery_id="3", sender="s@b.test")
    assert not exc.value.permanent


def test_lmtp_unreachable_or_unsafe(tmp_path: Path) -> None:
    store = LmtpStore(tmp_path / "nothing-here", timeout=5)
    with pytest.raises(DeliveryFailed) as exc:
        store.deliver("a@b.test", b"x\r\n", delivery_id="1", sender="s@b.test")
    assert not exc.value.permanent
    with pytest.raises(DeliveryFailed) as exc:
        store.deliver("../x@b.test", b"x\r\n", delivery_id="1", sender="s@b.test")
    assert exc.value.permanent
    # An envelope sender that could break out of MAIL FROM or Return-Path: never sent.
    with pytest.raises(DeliveryFailed, match="unusable envelope sender") as exc:
        store.deliver("a@b.test", b"x\r\n", delivery_id="1", sender="s@b.test>\r\nRSET")
    assert exc.value.permanent


def test_lmtp_lost_after_the_data_is_ambiguous_and_a_refusal_is_not(
    fake_lmtp: tuple[Path, type[_FakeLmtp]],
) -> None:
    path, handler = fake_lmtp
    store = LmtpStore(path, timeout=5)
    handler.data_reply = None
    with pytest.raises(DeliveryFailed) as exc:
        store.deliver("a@b.test", b"Subject: x\r\n\r\nhi\r\n", delivery_id="1", sender="s@b.test")
    assert exc.value.ambiguous and not exc.value.permanent
    handler.data_reply = b"451 4.2.0 try later"
    with pytest.raises(DeliveryFailed) as exc:
        store.deliver("a@b.test", b"x\r\n", delivery_id="2", sender="s@b.test")
    assert not exc.value.ambiguous
    # DATA refused before any byte of the message: smtplib raises, the store must map it.
    handler.data_go = b"452 4.3.1 out of space"
    with pytest.raises(DeliveryFailed) as exc:
        store.deliver("a@b.test", b"x\r\n", delivery_id="3", sender="s@b.test")
    assert not exc.value.ambiguous and not exc.value.permanent
    assert "452" in str(exc.value)


def _ambiguous_retries() -> float:
    value = metrics.default().registry.get_sample_value(
        "mssgate_delivery_retried_after_ambiguous_failure_total", {"route": "local"}
    )
    return value or 0.0


def test_the_delivery_worker_counts_retries_that_may_duplicate(
    fake_lmtp: tuple[Path, type[_FakeLmtp]], tmp_path: Path
) -> None:
    path, handler = fake_lmtp
    engine = open_engine(f"sqlite:///{tmp_path / 'spool.db'}")
    upgrade(engine)
    spool = Spool(engine, tmp_path / "spool")
    worker = DeliveryWorker(spool, LmtpStore(path, timeout=5))

    def submit() -> str:
        queue_id = new_queue_id()
        spool.accept(queue_id=queue_id, content=b"Subject: x\r\n\r\nhi\r\n", listener="mta",
                     sender="s@peer.test", identity=None, peer=None,
                     recipients=[("a@b.test", "local")])  # fmt: skip
        return queue_id

    try:
        before = _ambiguous_retries()
        handler.data_reply = None
        lost = submit()
        assert asyncio.run(worker.run_once()) == 1
        assert _ambiguous_retries() == before + 1
        state = spool.recipient_state(lost, "a@b.test")
        assert (state.state, state.attempts) == ("pending", 1)
        # A plain refusal delivered nothing: it is retried, but not counted as a risk.
        handler.data_reply = b"451 4.2.0 try later"
        submit()
        assert asyncio.run(worker.run_once()) == 1
        assert _ambiguous_retries() == before + 1
    finally:
        engine.dispose()
