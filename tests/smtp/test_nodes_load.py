"""Two `mssgate serve` processes on one PostgreSQL under load (issue 13's acceptance tests).

Mail alternates between the two accepting nodes and the two home nodes; each message is
counted by its Message-ID in the home node's Maildir, and the sender's mailbox (homed on A)
must stay empty on both nodes: a DSN would land there.
"""

from __future__ import annotations

import contextlib
import email
import signal
import smtplib
import threading
import time
from collections import Counter

import pytest

from tests.conftest import Cli
from tests.smtp.conftest import DOMAIN, Gateway, message
from tests.smtp.test_nodes_serve import ALICE, two_nodes

pytestmark = pytest.mark.postgres
__all__ = ["two_nodes"]  # the fixture, shared with test_nodes_serve

ON_A = f"imagerie@{DOMAIN}"  # homed on node a
ON_B = f"cardiologie@{DOMAIN}"  # homed on node b


def message_ids(node: Gateway, address: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for path in node.mailbox(address):
        found[str(email.message_from_bytes(path.read_bytes())["Message-ID"])] += 1
    return found


def wait_ids(node: Gateway, address: str, wanted: set[str], timeout: float) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = message_ids(node, address)
        missing = wanted - set(found)
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{address}: {len(missing)} never arrived: {sorted(missing)[:5]}")
        time.sleep(0.2)


def home_both(cli: Cli, nodes: tuple[Gateway, Gateway]) -> None:
    for node, address in zip(nodes, (ON_A, ON_B), strict=True):
        cli.ok("--config", node.data / "mssgate.toml", "directory", "add", address,
               "--name", address.split("@")[0], "--kind", "organisation")  # fmt: skip


def one(i: int, tag: str) -> tuple[str, str, bytes]:
    """Message i: to the mailbox homed on a or b ((i // 2) % 2), its own Message-ID."""
    rcpt = (ON_A, ON_B)[(i // 2) % 2]
    mid = f"<{tag}-{i}@client.test>"
    raw = message(ALICE, rcpt, body=f"message {i}").replace(
        b"Message-ID: <t@client.test>", f"Message-ID: {mid}".encode()
    )
    return rcpt, mid, raw


def stop_all(nodes: tuple[Gateway, Gateway]) -> None:
    for node in nodes:
        if node.proc is not None:
            node.stop()


def test_a_hundred_messages_across_both_nodes_arrive_once_each(
    cli: Cli, two_nodes: tuple[Gateway, Gateway]
) -> None:
    home_both(cli, two_nodes)
    for node in two_nodes:
        node.start()
    try:
        sent: dict[str, set[str]] = {ON_A: set(), ON_B: set()}
        clients = [node.login(ALICE) for node in two_nodes]
        try:
            for i in range(100):
                rcpt, mid, raw = one(i, "hundred")
                # i % 2: the accepting node; (i // 2) % 2: the home node; all four pairs.
                clients[i % 2].sendmail(ALICE, [rcpt], raw)
                sent[rcpt].add(mid)
        finally:
            for client in clients:
                client.quit()
        node_a, node_b = two_nodes
        on_a = wait_ids(node_a, ON_A, sent[ON_A], timeout=60)
        on_b = wait_ids(node_b, ON_B, sent[ON_B], timeout=60)
        time.sleep(2)  # a duplicate or a DSN would come within ten delivery passes
        on_a, on_b = message_ids(node_a, ON_A), message_ids(node_b, ON_B)
        assert set(on_a) == sent[ON_A] and set(on_b) == sent[ON_B]
        assert max(on_a.values()) == 1 and max(on_b.values()) == 1, (on_a, on_b)
        assert node_b.mailbox(ON_A) == [] and node_a.mailbox(ON_B) == []
        assert [n.mailbox(ALICE) for n in two_nodes] == [[], []], "a DSN was sent"
    finally:
        stop_all(two_nodes)


def test_a_node_killed_under_load_loses_no_acknowledged_message(
    cli: Cli, two_nodes: tuple[Gateway, Gateway]
) -> None:
    node_a, node_b = two_nodes
    home_both(cli, two_nodes)
    for node in two_nodes:
        node.start()
    acked: dict[str, set[str]] = {ON_A: set(), ON_B: set()}
    refused: list[int] = []
    twenty = threading.Event()
    restarted = threading.Event()
    # Causal, not timed: the run goes on until the restarted A has acknowledged ten more
    # messages, however long the restart takes (a cap only stops a run that never ends).
    after_restart: list[int] = []

    def load() -> None:
        clients: list[smtplib.SMTP | None] = [None, None]
        for i in range(5000):
            if len(after_restart) >= 10:
                break
            rcpt, mid, raw = one(i, "kill")
            side = i % 2
            try:
                if clients[side] is None:
                    clients[side] = two_nodes[side].login(ALICE)
                client = clients[side]
                assert client is not None
                client.sendmail(ALICE, [rcpt], raw)
            except (OSError, smtplib.SMTPException):
                # Not acknowledged: the sender keeps it (and would send it again).
                refused.append(i)
                clients[side] = None
                time.sleep(0.1)  # the run goes on past the restart
                continue
            acked[rcpt].add(mid)
            if side == 0 and restarted.is_set():
                after_restart.append(i)
            if sum(map(len, acked.values())) >= 20:
                twenty.set()
            time.sleep(0.02)
        for c in clients:
            if c is not None:
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    c.quit()

    sender = threading.Thread(target=load)
    sender.start()
    try:
        assert twenty.wait(60)
        node_a.stop(signal.SIGKILL)  # mid-run: A holds acknowledged, undelivered entries
        time.sleep(1)
        node_a.start()
        restarted.set()
        sender.join(300)
        assert not sender.is_alive()
        on_a = wait_ids(node_a, ON_A, acked[ON_A], timeout=60)
        on_b = wait_ids(node_b, ON_B, acked[ON_B], timeout=60)
        time.sleep(2)
        on_a, on_b = message_ids(node_a, ON_A), message_ids(node_b, ON_B)
        dups = sum(n - 1 for n in on_a.values()) + sum(n - 1 for n in on_b.values())
        print(
            f"acknowledged {sum(map(len, acked.values()))}, not acknowledged {len(refused)}, "
            f"duplicates across the crash {dups}"
        )
        assert refused, "the kill fell outside the run"
        assert len(after_restart) >= 10, "the restarted node took no load"
        # Every acknowledged message arrived; an unacknowledged one may have too.
        assert acked[ON_A] <= set(on_a) and acked[ON_B] <= set(on_b)
        assert [n.mailbox(ALICE) for n in two_nodes] == [[], []], "a DSN was sent"
        lost = [e for n in two_nodes for e in n.events() if "lost" in str(e)]
        assert lost == []
    finally:
        restarted.set()
        sender.join(300)
        stop_all(two_nodes)
