"""`mssgate directory move ADDRESS --node NAME` (issue 13): a mailbox and its mail (folders,
flags, UIDs) move from node A to node B over the node link with Dovecot's dsync; afterwards
both nodes show the same mailbox (B's, A relaying), new mail lands on B, A's copy is gone.
Two real `serve` processes, each with its Dovecot, on one PostgreSQL schema."""

from __future__ import annotations

import imaplib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import update

from mssgate.config import load_config
from mssgate.db import open_engine
from mssgate.db.schema import professionals
from mssgate.db.tx import write
from tests.conftest import Cli
from tests.smtp.conftest import DOMAIN, PASSWORD, Gateway, message
from tests.smtp.test_nodes_imap import (  # noqa: F401 (the fixture)
    ALICE,
    BOB,
    pytestmark,
    two_imap_nodes,
)
from tests.test_cli_json import documented

FOLDER = "Dossiers"


def imap_on(node: Gateway) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(
        "127.0.0.1", node.ports["imaps"], ssl_context=node.client_context(), timeout=30
    )
    imap.login(BOB, PASSWORD)
    return imap


def snapshot(node: Gateway) -> dict[str, list[tuple[int, str, bytes]]]:
    """Folder -> [(UID, flags, body)] as a client of `node` sees the mailbox."""
    imap = imap_on(node)
    try:
        typ, listed = imap.list()
        assert typ == "OK"
        folders = sorted(
            re.sub(rb'^.*"[./]" ', b"", line).strip(b'"').decode()
            for line in listed
            if isinstance(line, bytes)
        )
        out: dict[str, list[tuple[int, str, bytes]]] = {}
        for folder in folders:
            typ, _ = imap.select(f'"{folder}"', readonly=True)
            assert typ == "OK", folder
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[TEXT])")
            items = []
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head = item[0].decode()
                uid = int(re.search(r"UID (\d+)", head).group(1))  # type: ignore[union-attr]
                flags = " ".join(sorted(re.search(r"FLAGS \(([^)]*)\)", head).group(1).split()))  # type: ignore[union-attr]
                items.append((uid, flags, item[1].strip()))
            out[folder] = sorted(items)
        return out
    finally:
        imap.logout()


def set_home(config: Path, node: str) -> None:
    engine = open_engine(load_config(config).database_url)
    try:
        with write(engine) as conn:
            conn.execute(
                update(professionals).where(professionals.c.address == BOB).values(node=node)
            )
    finally:
        engine.dispose()


def send(node: Gateway, body: str) -> None:
    with node.login(ALICE) as client:
        client.sendmail(ALICE, [BOB], message(ALICE, BOB, body=body))


def wait_inbox(node: Gateway, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(snapshot(node).get("INBOX", [])) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"INBOX never reached {count} messages")


def test_a_mailbox_moves_with_its_mail_to_another_node(
    cli: Cli,
    two_imap_nodes: tuple[Gateway, Gateway],  # noqa: F811
) -> None:
    node_a, node_b = two_imap_nodes
    conf_a = node_a.data / "mssgate.toml"
    conf_b = node_b.data / "mssgate.toml"
    node_a.start()
    node_b.start()
    node_a.wait_event("node.listening", timeout=20)
    node_b.wait_event("node.listening", timeout=20)
    for body in ("premier compte rendu", "second compte rendu", "troisieme"):
        send(node_a, body)
    wait_inbox(node_a, 3)

    # A folder of its own, a message copied there, flags in both.
    imap = imap_on(node_a)
    try:
        assert imap.create(FOLDER)[0] == "OK"
        imap.select("INBOX")
        assert imap.uid("COPY", "1", FOLDER)[0] == "OK"
        assert imap.uid("STORE", "2", "+FLAGS", r"(\Flagged \Seen)")[0] == "OK"
        assert imap.uid("STORE", "3", "+FLAGS", r"(\Answered)")[0] == "OK"
        imap.select(FOLDER)
        assert imap.uid("STORE", "1", "+FLAGS", r"(\Seen)")[0] == "OK"
    finally:
        imap.logout()
    before = snapshot(node_a)
    assert len(before["INBOX"]) == 3 and len(before[FOLDER]) == 1
    home_on_a = node_a.data / "mail" / DOMAIN / BOB.split("@")[0]
    assert (home_on_a / "Maildir").is_dir()

    # Mail keeps coming, through A and through B, while the move runs.
    moving = threading.Event()
    sent: list[str] = []

    def traffic() -> None:
        while moving.is_set() and len(sent) < 40:
            body = f"pendant le demenagement {len(sent)}"
            send((node_a, node_b)[len(sent) % 2], body)
            sent.append(body)

    moving.set()
    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        moved = cli.ok("--config", conf_a, "directory", "move", BOB, "--node", "b", "--json")
    finally:
        moving.clear()
        sender.join()
    outcome = moved.json()
    assert set(outcome) == documented()["directory move"][1]  # the guide's JSON table
    assert (outcome["source"], outcome["target"]) == ("a", "b")
    assert outcome["messages"] >= 4 and outcome["source_copy"] == "removed"
    assert outcome["folders"] >= 2

    [row] = [p for p in cli.ok("--config", conf_b, "directory", "list", "--json").json()
             if p["address"] == BOB]  # fmt: skip
    assert row["node"] == "b"
    # Every message sent during the move is in the new home, once.
    wait_inbox(node_b, 3 + len(sent))
    after = snapshot(node_b)
    bodies = [body for _uid, _flags, body in after["INBOX"]]
    assert sorted(bodies[3:]) == sorted(b.encode() for b in sent)
    # The same folders, messages, flags and UIDs on B as on A before, and on A (relayed).
    assert after[FOLDER] == before[FOLDER]
    assert after["INBOX"][:3] == before["INBOX"]
    assert set(after) == set(before)
    assert snapshot(node_a) == after
    assert not home_on_a.exists()
    node_a.wait_event("move.done", address=BOB)
    # The audit trail has the move.
    audit = cli.ok("--config", conf_a, "audit", "--action", "directory.move", "--json").json()
    assert [(e["subject"], e["detail"]["from"], e["detail"]["to"]) for e in audit] == [
        (BOB, "a", "b")
    ]

    # New mail submitted on A lands on B.
    send(node_a, "apres le demenagement")
    wait_inbox(node_b, 4 + len(sent))
    assert b"apres le demenagement" in snapshot(node_b)["INBOX"][-1][2]
    assert not home_on_a.exists()

    # A move whose source stopped between the switch and the final sync: A holds a copy from
    # the first sync and mail delivered there before the switch. Made by hand: the first sync
    # (the command the mover runs, here from B, two-way: the same), a delivery while A is the
    # home, then the switch.
    [a_row] = [n for n in cli.ok("--config", conf_b, "node", "list", "--json").json()
               if n["name"] == "a"]  # fmt: skip
    certs = node_b.data / "certs"
    subprocess.run(
        ["doveadm", "-c", str(node_b.data / "dovecot" / "dovecot.conf"), "sync", "-u", BOB,
         "--", sys.executable, "-m", "mssgate.nodesync", str(a_row["address"]), BOB,
         str(certs / "server.crt.pem"), str(certs / "server.key.pem"), str(certs / "ca.crt.pem")],
        check=True, timeout=120,
    )  # fmt: skip
    assert (home_on_a / "Maildir").is_dir()
    set_home(conf_a, "a")
    send(node_a, "reste sur a")
    wait_inbox(node_a, 5 + len(sent))
    set_home(conf_a, "b")
    refused = cli("--config", conf_a, "directory", "move", BOB, "--node", "b")
    assert refused.code == 1 and "--from SOURCE" in refused.err, refused.err
    finished = cli.ok(
        "--config", conf_a, "directory", "move", BOB, "--node", "b", "--from", "a", "--json"
    ).json()
    assert (finished["source"], finished["source_copy"]) == ("a", "removed")
    assert finished["messages"] == 6 + len(sent)  # INBOX and Dossiers, as A held them
    wait_inbox(node_b, 5 + len(sent))
    assert b"reste sur a" in snapshot(node_b)["INBOX"][-1][2]
    assert not home_on_a.exists()

    # Already there, unknown node, unknown address: one line each, nothing done.
    for args, said in (
        ((BOB, "--node", "b"), "homed on node b already"),
        ((BOB, "--node", "z"), "no node named 'z'"),
        ((f"nobody@{DOMAIN}", "--node", "a"), "nobody"),
    ):
        result = cli("--config", conf_a, "directory", "move", *args)
        assert result.code != 0 and said in result.err, result.err

    # The target down: refused at once, the home unchanged.
    node_a.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = cli.ok("--config", conf_b, "node", "list", "--json").json()
        if not next(n for n in listed if n["name"] == "a")["up"]:
            break
        time.sleep(0.2)
    result = cli("--config", conf_b, "directory", "move", BOB, "--node", "a")
    assert "node a is down" in result.err, result.err
    assert result.code != 0 and "both nodes must be up" in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    [row] = [p for p in cli.ok("--config", conf_b, "directory", "list", "--json").json()
             if p["address"] == BOB]  # fmt: skip
    assert row["node"] == "b"
