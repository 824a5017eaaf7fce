"""The node link's commands for moving a mailbox (issue 13): `XDSYNC` pipes the connection to
the mailbox engine's dsync-server for a node only, and only for a mailbox of this
installation; `XMOVE` is refused to anyone but a node, and by a node that moves nothing.

In-process: one node's listener (real TLS, real LMTP); the engine is a real process standing
in for `doveadm` (it records its arguments and echoes the stream)."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Engine

from mssgate.config import load_config
from mssgate.mailmove import Doveadm, MailboxMover, MoveRefused
from mssgate.nodelink import Homes, start_node_listener
from mssgate.nodemove import MoveTimedOut, request_move
from mssgate.smtp.server import bound_port
from tests.conftest import Cli
from tests.test_nodelink import BOB, DOMAIN, Link, link  # noqa: F401 (the fixture)


class _Lmtps(smtplib.SMTP_SSL):
    ehlo_msg = "lhlo"


def _context(who: str, link: Link, cli: Cli, tmp_path: Path) -> ssl.SSLContext:  # noqa: F811
    cert, key, ca = link.tls
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    if who == "node":
        ctx.load_cert_chain(cert, key)
    elif who == "practitioner":
        out = tmp_path / "out"
        cli.ok("--config", tmp_path / "a" / "mssgate.toml", "cert", "issue", BOB, "--out", out)
        ctx.load_cert_chain(out / f"{BOB}.crt.pem", out / f"{BOB}.key.pem")
    elif who == "other-installation":
        other = tmp_path / "other"
        cli.ok("init", "--data", other, "--domain", DOMAIN, "--node", "a")
        tls = load_config(other / "mssgate.toml").tls
        assert tls.cert is not None and tls.key is not None
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def _exchange(link: Link, ctx: ssl.SSLContext, doveadm: Doveadm,  # noqa: F811
              commands: list[str]) -> list[object]:  # fmt: skip
    cert, key, ca = link.tls
    outcome: list[object] = []

    async def scenario() -> None:
        server = await start_node_listener(
            bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
            spool=link.spool, homes=Homes(link.engine, "a"), max_size=1_000_000,
            on_accepted=link.accepted.append, doveadm=doveadm,
        )  # fmt: skip

        def talk() -> None:
            try:
                client = _Lmtps("127.0.0.1", bound_port(server), context=ctx, timeout=10)
                client.ehlo()
                for command in commands:
                    verb, _, arg = command.partition(" ")
                    code, text = client.docmd(verb, arg)
                    outcome.append((code, text))
                    if code == 250 and verb == "XDSYNC":  # the connection is dsync's stream now
                        client.send(b"dsync bytes\n")
                        outcome.append(client.file.readline())  # type: ignore[union-attr]
                        break
                client.close()
            except (OSError, smtplib.SMTPException) as exc:
                outcome.append(type(exc).__name__)

        try:
            await asyncio.to_thread(talk)
            # The engine process reaped before the loop closes: asyncio.run would cancel its
            # task and leave the process to the garbage collector, reported as an unclosed
            # transport in whatever test comes next (seen in a loaded clean-clone run with
            # a 10-s bound here). A bound, not a timing: a loaded machine takes what it takes.
            for _ in range(1200):
                if asyncio.all_tasks() == {asyncio.current_task()}:
                    break
                await asyncio.sleep(0.05)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    return outcome


@pytest.fixture
def engine_script(tmp_path: Path) -> tuple[Doveadm, Path]:
    ran = tmp_path / "ran"
    script = tmp_path / "doveadm"
    script.write_text(f'#!/bin/sh\necho "$@" >> {ran}\nexec cat\n')
    script.chmod(0o755)
    return Doveadm(tmp_path / "dovecot.conf", binary=str(script)), ran


@pytest.mark.parametrize("who", ["node", "none", "practitioner", "other-installation"])
def test_only_a_node_opens_a_dsync_stream_for_a_mailbox_of_this_installation(
    link: Link,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    who: str,
    engine_script: tuple[Doveadm, Path],
) -> None:
    doveadm, ran = engine_script
    ctx = _context(who, link, cli, tmp_path)
    commands = [f"XDSYNC nobody@{DOMAIN}", "XDSYNC not an address", f"XDSYNC {BOB}"]
    outcome = _exchange(link, ctx, doveadm, commands)
    if who == "node":
        assert outcome[0][0] == 550 and outcome[1][0] == 501, outcome  # type: ignore[index]
        assert outcome[2:] == [(250, b"2.0.0 dsync"), b"dsync bytes\n"], outcome
        conf = tmp_path / "dovecot.conf"
        assert ran.read_text() == f"-c {conf} dsync-server -u {BOB}\n"
    else:
        assert not any(isinstance(o, tuple) and o[0] == 250 for o in outcome), outcome
        assert not ran.exists()


@pytest.mark.parametrize("who", ["node", "practitioner"])
def test_xmove_is_refused_to_anyone_but_a_node_and_by_a_node_that_moves_nothing(
    link: Link,  # noqa: F811
    cli: Cli,
    tmp_path: Path,
    who: str,
    engine_script: tuple[Doveadm, Path],
) -> None:
    doveadm, ran = engine_script
    outcome = _exchange(link, _context(who, link, cli, tmp_path), doveadm, [f"XMOVE {BOB} b"])
    if who == "node":
        # This listener was given no mover (a node without Dovecot, say).
        assert outcome == [(502, b"5.5.1 this node moves no mailboxes")], outcome
    else:
        assert outcome == ["SMTPServerDisconnected"], outcome
    assert not ran.exists()


class _SlowMover:
    """Stands in for MailboxMover: a move that takes longer than the requester waits, or one
    the home node refuses."""

    def __init__(self, refuse: bool) -> None:
        self._refuse = refuse
        self.asked: list[tuple[str, str, bool]] = []

    async def request(self, user: str, target: str, *, finish: bool = False) -> object:
        self.asked.append((user, target, finish))
        if self._refuse:
            raise MoveRefused(451, "node b is down: both nodes must be up to move mail")
        await asyncio.sleep(30)
        raise AssertionError("the requester should have given up")


@pytest.mark.parametrize("refuse", [False, True])
def test_the_requester_gets_the_refusal_or_gives_up_at_its_timeout(
    link: Link,  # noqa: F811
    refuse: bool,
) -> None:
    cert, key, ca = link.tls
    mover = _SlowMover(refuse)
    caught: list[BaseException] = []

    async def scenario() -> None:
        server = await start_node_listener(
            bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
            spool=link.spool, homes=Homes(link.engine, "a"), max_size=1_000_000,
            on_accepted=link.accepted.append, mover=cast(MailboxMover, mover),
        )  # fmt: skip
        try:
            await asyncio.to_thread(
                request_move, f"127.0.0.1:{bound_port(server)}", BOB, "b", cert=cert, key=key,
                ca=ca, timeout=2, finish=True,
            )  # fmt: skip
        except (MoveRefused, MoveTimedOut) as exc:
            caught.append(exc)
        finally:
            server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()
            await server.wait_closed()

    asyncio.run(scenario())
    assert mover.asked == [(BOB, "b", True)]
    [exc] = caught
    if refuse:
        assert isinstance(exc, MoveRefused) and exc.code == 451
        assert str(exc) == "node b is down: both nodes must be up to move mail", str(exc)
    else:
        assert isinstance(exc, MoveTimedOut), exc
        assert "goes on on its home node" in str(exc)


def test_a_dsync_started_by_a_node_dies_when_the_node_is_killed(tmp_path: Path) -> None:
    """kill -9 of the moving node mid-sync: before, its `doveadm sync` ran on, and after the
    restart synced beside the next attempt (and read a copy being removed)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "engine.pid"
    script = tmp_path / "doveadm"
    script.write_text(f"#!/bin/sh\necho $$ > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\n"
                      "exec sleep 300\n")  # fmt: skip
    script.chmod(0o755)
    node = subprocess.Popen(
        [sys.executable, "-c", "import asyncio, sys; from pathlib import Path;"
         " from mssgate.mailmove import Doveadm;"
         " asyncio.run(Doveadm(Path(sys.argv[1]), binary=sys.argv[2]).run('sync'))",
         str(tmp_path / "dovecot.conf"), str(script)],
    )  # fmt: skip
    engine = 0
    try:
        while not pidfile.exists():  # the engine started (no bound: the test's own timeout)
            assert node.poll() is None, "the node ended before starting its engine"
            time.sleep(0.05)
        engine = int(pidfile.read_text())
        node.send_signal(signal.SIGKILL)
        node.wait()
        # Liveness, not speed: the signal is sent by the kernel when the node dies.
        for _ in range(600):
            try:
                os.kill(engine, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the engine (pid {engine}) outlived its node")
        engine = 0
    finally:
        if node.poll() is None:
            node.kill()
        if engine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(engine, signal.SIGKILL)


@pytest.mark.parametrize("arg", [f"{BOB} b finsh", f"{BOB} b finish now", f"{BOB}"])
def test_an_xmove_with_words_it_does_not_know_moves_nothing(link: Link, arg: str) -> None:  # noqa: F811
    """Before, a mistyped 'finish' started a whole move (the home switched)."""
    cert, key, ca = link.tls
    mover = _SlowMover(refuse=True)
    replies: list[tuple[int, bytes]] = []

    async def scenario() -> None:
        server = await start_node_listener(
            bind="127.0.0.1", port=0, cert=cert, key=key, ca=ca, hostname="a.test",
            spool=link.spool, homes=Homes(link.engine, "a"), max_size=1_000_000,
            on_accepted=link.accepted.append, mover=cast(MailboxMover, mover),
        )  # fmt: skip

        def talk() -> None:
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.check_hostname = False
            ctx.load_cert_chain(cert, key)
            client = _Lmtps("127.0.0.1", bound_port(server), context=ctx, timeout=10)
            client.ehlo()
            replies.append(client.docmd("XMOVE", arg))
            client.close()

        try:
            await asyncio.to_thread(talk)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert mover.asked == []
    assert [code for code, _ in replies] == [501], replies


def test_a_move_stopped_while_it_waits_for_a_mailbox_gate_leaves_it_open() -> None:
    """serve stopping cancels a move waiting for a mailbox's gate (a delivery holds it).
    Before, the thread that waited took the lock once the delivery gave it back and kept it:
    the mailbox's next deliveries waited for ever."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from mssgate.mailmove import MailboxGates

    gates = MailboxGates()
    held, go = threading.Event(), threading.Event()

    def delivery() -> None:
        with gates.hold(BOB):
            held.set()
            go.wait()

    async def scenario() -> bool:
        # One worker: a call made after the gate's waiting thread runs once it has returned.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        deliverer = threading.Thread(target=delivery)
        deliverer.start()
        await asyncio.to_thread(held.wait)
        lock = gates._locks[BOB].lock

        async def move() -> None:
            async with gates.hold_async(BOB):
                raise AssertionError("the gate was the delivery's")

        moving = asyncio.create_task(move())
        while gates._locks[BOB].users < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # the move waits in the gate's thread
        moving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await moving
        go.set()
        await asyncio.to_thread(deliverer.join)  # after the gate's waiting thread took it
        await asyncio.to_thread(lambda: None)
        for _ in range(3):
            await asyncio.sleep(0)
        return lock.locked()

    assert asyncio.run(scenario()) is False


def test_a_second_move_of_a_mailbox_waits_for_the_first_whichever_node_is_asked(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """A's move of BOB to B has switched its home (directory show names B) and its final sync
    is still running. Before, a second move asked of B (BOB -> C) went ahead: B removed its
    copy while A's final sync was still bringing it the last mail. Now B refuses (451)
    until A's move is done, on the database all nodes share."""
    from mssgate.directory import Directory
    from mssgate.directory.models import MailboxKind, NewProfessional
    from mssgate.mailmove import MailboxGates
    from mssgate.nodes import Nodes

    directory = Directory(pg_engine, actor="test")
    directory.domains.add_local(DOMAIN)
    new = NewProfessional(address=BOB, display_name="Imagerie", kind=MailboxKind.ORG)
    directory.professionals.add(new, node="a")
    registry = Nodes(pg_engine, actor="test")
    for name in ("a", "b", "c"):
        registry.add(name, address="127.0.0.1:1")
        registry.beat(name)
    # The engine stand-in: A's second sync (its final one) waits to be let go.
    conf_a, release, synced = tmp_path / "a.conf", tmp_path / "release", tmp_path / "synced"
    script = tmp_path / "doveadm"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$2" = "{conf_a}" ] && [ "$3" = sync ]; then\n'
        f"  if [ -e {synced} ]; then while [ ! -e {release} ]; do sleep 0.05; done; fi\n"
        f"  touch {synced}\n"
        "fi\nexit 0\n"
    )  # fmt: skip
    script.chmod(0o755)
    tls = (tmp_path / "cert", tmp_path / "key", tmp_path / "ca")  # not read by the stand-in

    def mover(me: str, conf: Path) -> MailboxMover:
        return MailboxMover(
            pg_engine, me=me, doveadm=Doveadm(conf, binary=str(script)), mail_root=None,
            gates=MailboxGates(), sessions=None, link=tls, down_after=timedelta(hours=1),
        )  # fmt: skip

    def home() -> str | None:
        return directory.professionals.get(BOB).node

    async def scenario() -> BaseException | object:
        first = asyncio.create_task(mover("a", conf_a).move(BOB, "b"))
        try:
            while await asyncio.to_thread(home) != "b":  # A switched; its final sync runs
                assert not first.done(), first
                await asyncio.sleep(0.05)
            try:
                return await mover("b", tmp_path / "b.conf").move(BOB, "c")
            except MoveRefused as exc:
                return exc
        finally:
            release.touch()
            await first

    second = asyncio.run(scenario())
    assert isinstance(second, MoveRefused), second
    assert second.code == 451 and "under way" in str(second), second
    assert home() == "b"


def test_a_message_whose_lost_hand_over_was_taken_is_not_delivered_again_once_home_here(
    link: Link,  # noqa: F811
    tmp_path: Path,
) -> None:
    """This node (a) handed an entry to BOB's home then, b, which took it (its row in
    node_handovers) but whose 250 was lost; BOB moved back to a before a's next attempt.
    Before, a delivered its own copy here, and b's copy came by b's hand-over: twice."""
    from sqlalchemy import update

    from mssgate.db.schema import professionals
    from mssgate.db.tx import write
    from mssgate.handovers import HandOvers
    from mssgate.mailstore.maildir import MaildirStore
    from mssgate.nodelink import CrossNodeDelivery, NodeHandOff
    from mssgate.spool import new_queue_id
    from mssgate.spool.delivery import DeliveryWorker
    from tests.test_nodelink import SENDER, message

    cert, key, ca = link.tls
    queue_id = new_queue_id()
    link.spool.accept(queue_id=queue_id, content=message(b"handed over once\r\n"),
                      listener="mta", sender=SENDER, identity=None, peer="127.0.0.1",
                      recipients=[(BOB, "local")])  # fmt: skip
    [item] = link.spool.due(route="local")
    # The first attempt: b took it (b's listener records this), a heard no 250.
    HandOvers(link.engine).record(queue_id, BOB, "B-SPOOL-ID")
    link.spool.attempt_failed(item, error="LMTP session failed in DATA: timed out",
                              permanent=False, retry_in=timedelta(0))  # fmt: skip
    with write(link.engine) as conn:  # BOB is homed here (a) again
        conn.execute(update(professionals).where(professionals.c.address == BOB)
                     .values(node="a"))  # fmt: skip
    store = MaildirStore(tmp_path / "mail")
    worker = DeliveryWorker(
        link.spool, store,
        cross_node=CrossNodeDelivery(Homes(link.engine, "a"),
                                     NodeHandOff(cert=cert, key=key, ca=ca, timeout=10)),
    )  # fmt: skip
    assert asyncio.run(worker.run_once()) == 1
    assert link.spool.due(route="local") == []
    assert not list((tmp_path / "mail").rglob("new/*")), "delivered a second copy here"


def test_the_target_holds_its_deliveries_while_another_node_finishes_the_move(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """After the switch the target (b) is the home and delivers BOB's mail, while the moving
    node's final sync writes into the same Maildir. Before, such a delivery raced dsync's
    UID-conflict resolution ("Expunged message reappeared, giving a new UID") and the
    message was kept twice (tests/smtp/test_nodes_move.py failed so, now and then). Now b
    waits until the move is done; a node's own move does not hold its deliveries."""
    from sqlalchemy import update

    from mssgate.db.schema import spool_recipients
    from mssgate.db.tx import write
    from mssgate.directory.timeutil import now
    from mssgate.mailmove import MailboxGates
    from mssgate.mailstore.maildir import MaildirStore
    from mssgate.spool import Spool, new_queue_id
    from mssgate.spool.delivery import DeliveryWorker
    from tests.test_nodelink import SENDER, message

    tls = (tmp_path / "cert", tmp_path / "key", tmp_path / "ca")  # not read here

    def mover(me: str, gates: MailboxGates) -> MailboxMover:
        return MailboxMover(
            pg_engine, me=me, doveadm=None, mail_root=None, gates=gates, sessions=None,
            link=tls, down_after=timedelta(hours=1),
        )  # fmt: skip

    moving = mover("a", MailboxGates())._lock(BOB)  # a's move under way
    assert moving is not None
    gates_b = MailboxGates()
    mover("b", gates_b)
    spool = Spool(pg_engine, tmp_path / "spool", node="b")
    spool.accept(queue_id=new_queue_id(), content=message(b"during the final sync\r\n"),
                 listener="node", sender=SENDER, identity=None, peer=None,
                 recipients=[(BOB, "local")])  # fmt: skip
    store = MaildirStore(tmp_path / "mail")
    worker = DeliveryWorker(spool, store, gates=gates_b)
    asyncio.run(worker.run_once())
    delivered = list((tmp_path / "mail").rglob("new/*"))
    assert delivered == [], "delivered while another node's final sync wrote to the mailbox"
    assert spool.due(route="local") == []  # waiting for its retry
    mover("a", MailboxGates())._unlock(moving, BOB)  # the move is done
    with write(pg_engine) as conn:  # its retry is due now
        conn.execute(update(spool_recipients).values(next_attempt_at=now() - timedelta(1)))
    asyncio.run(worker.run_once())
    assert len(list((tmp_path / "mail").rglob("new/*"))) == 1
