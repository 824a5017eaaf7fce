"""Two `mssgate serve` processes, two data folders, one PostgreSQL schema (issue 13).

The bug this reproduces: spool rows were shared but their files lived in the accepting node's
data folder, and `due()` took every row. Node A accepted a message for a peer; node B's relay
took the entry, found no file, marked it `failed | 5.3.0 the message file was lost` and
bounced the sender, though A still had the file and could have sent it.
"""

from __future__ import annotations

import signal
import smtplib
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import PG_URL, Cli
from tests.smtp.conftest import DOMAIN, PASSWORD, PEER_DOMAIN, Gateway, free_env, message

pytestmark = pytest.mark.postgres

ALICE = f"secretariat@{DOMAIN}"
PEER = f"dr.x@{PEER_DOMAIN}"
FAST = {
    "MSSGATE_NODE__PORT": "0",  # each node's listener on a free port, announced as bound
    "MSSGATE_DELIVERY__RETRY_FIRST_SECONDS": "0.5",
    "MSSGATE_DELIVERY__RETRY_MAX_SECONDS": "1",
    "MSSGATE_RELAY__POLL_SECONDS": "0.2",
    "MSSGATE_DELIVERY__POLL_SECONDS": "0.2",
    "MSSGATE_NODE__HEARTBEAT_SECONDS": "0.3",
    "MSSGATE_NODE__DOWN_AFTER_SECONDS": "2",
}


def spool_rows(cli: Cli, config: Path, *flags: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = cli.ok(
        "--config", config, "spool", "list", "--json", *flags
    ).json()
    return rows


def relay_state(cli: Cli, config: Path, queue_id: str) -> dict[str, object]:
    # --all: an entry failed for good is done, and must still be seen.
    [entry] = [e for e in spool_rows(cli, config, "--all") if e["id"] == queue_id]
    [rcpt] = [r for r in entry["recipients"] if r["recipient"] == PEER]  # type: ignore[attr-defined]
    return {"node": entry["node"], **rcpt}


def wait_for(what: str, check: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


@pytest.fixture
def two_nodes(
    cli: Cli,
    tmp_path: Path,
    pg_schema: str,
    peer_pki: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Gateway, Gateway]:
    assert PG_URL
    for key, value in FAST.items():  # the CLI's `node list` calls a node down as serve does
        monkeypatch.setenv(key, value)
    url = f"{PG_URL}?options=-csearch_path%3D{pg_schema}"
    a, b = tmp_path / "a", tmp_path / "b"
    cli.ok("init", "--data", a, "--domain", DOMAIN, "--database", url, "--node", "a")
    conf = a / "mssgate.toml"
    cli.ok("--config", conf, "directory", "add", ALICE, "--name", "Secretariat",
           "--kind", "organisation", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    # A peer whose relay refuses connections: each attempt fails for a while, and is retried.
    cli.ok("--config", conf, "domain", "trust", PEER_DOMAIN, "--relay", "127.0.0.1:1",
           "--ca", peer_pki["ca"])  # fmt: skip
    cli.ok("--config", conf, "node", "add", "b", "--data", b)
    return (
        Gateway(data=a, env={**free_env(a), **FAST}),
        Gateway(data=b, env={**free_env(b), **FAST}),
    )


def test_a_node_never_takes_another_nodes_entry(
    cli: Cli, two_nodes: tuple[Gateway, Gateway]
) -> None:
    node_a, node_b = two_nodes
    conf_a, conf_b = node_a.data / "mssgate.toml", node_b.data / "mssgate.toml"
    node_a.start()
    node_b.start()
    try:
        listed = cli.ok("--config", conf_b, "node", "list", "--json").json()
        assert [(n["name"], n["up"]) for n in listed] == [("a", True), ("b", True)]

        with node_a.login(ALICE) as client:
            client.sendmail(ALICE, [PEER], message(ALICE, PEER))
        [entry] = spool_rows(cli, conf_b)
        queue_id = str(entry["id"])
        assert entry["node"] == "a"
        # A's first attempt fails (connection refused): the entry waits on A, due later.
        wait_for("a first attempt", lambda: relay_state(cli, conf_a, queue_id)["attempts"])
        # Made by A (B never takes it): "connection refused", not a lost file.
        assert relay_state(cli, conf_a, queue_id)["state"] == "pending"
        # A crashes; its file stays in A's data folder. B runs on, and the entry is due now.
        node_a.stop(signal.SIGKILL)
        first = relay_state(cli, conf_b, queue_id)
        cli.ok("--config", conf_b, "spool", "flush")
        time.sleep(2)  # ten of B's relay passes
        after = relay_state(cli, conf_b, queue_id)
        # Before: failed | 5.3.0 the message file was lost, and a DSN spooled to the sender.
        assert after["state"] == "pending", after
        assert after["attempts"] == first["attempts"], "B attempted A's entry"
        assert "lost" not in str(after["last_error"])
        everything = spool_rows(cli, conf_b, "--all")
        assert [e["id"] for e in everything] == [queue_id], "a DSN was spooled"
        assert not [e for e in node_b.events() if e.get("event") == "task.crashed"]

        # A (down) is shown so by B's /healthz, without making B failing.
        wait_for("A seen down", lambda: node_b.healthz()[1].get("nodes_down"))
        code, body = node_b.healthz()
        assert code == 200 and list(body["nodes_down"]) == ["a"]  # type: ignore[call-overload]
        listed = cli.ok("--config", conf_b, "node", "list", "--json").json()
        assert [(n["name"], n["up"], n["spool_depth"]) for n in listed] == [
            ("a", False, 1),
            ("b", True, 0),
        ]
        refused = cli("--config", conf_b, "node", "remove", "a")
        assert refused.code == 1 and "holds 1 undelivered spool entry" in refused.err

        # A comes back, recovers its own entry and tries it again.
        node_a.start()
        cli.ok("--config", conf_b, "spool", "flush")
        wait_for(
            "A's next attempt",
            lambda: relay_state(cli, conf_b, queue_id)["attempts"] > first["attempts"],  # type: ignore[operator]
        )
        assert relay_state(cli, conf_b, queue_id)["state"] == "pending"
        assert node_a.data.joinpath("spool", "msg", f"{queue_id}.eml").exists()
    finally:
        for node in (node_a, node_b):
            if node.proc is not None:
                node.stop()


BOB = f"imagerie@{DOMAIN}"


class _Lmtps(smtplib.SMTP_SSL):
    ehlo_msg = "lhlo"


def test_mail_accepted_by_one_node_reaches_the_mailbox_on_its_home_node(
    cli: Cli, two_nodes: tuple[Gateway, Gateway]
) -> None:
    node_a, node_b = two_nodes
    conf_a, conf_b = node_a.data / "mssgate.toml", node_b.data / "mssgate.toml"
    # Homed on A (A's config); its mail submitted on B.
    cli.ok("--config", conf_a, "directory", "add", BOB, "--name", "Imagerie",
           "--kind", "organisation")  # fmt: skip
    node_a.start()
    node_b.start()
    try:
        with node_b.login(ALICE) as client:
            client.sendmail(ALICE, [BOB], message(ALICE, BOB, body="via B"))
        [delivered] = node_a.wait_delivered(BOB, 1)
        assert b"via B" in delivered.read_bytes()
        assert node_b.mailbox(BOB) == []
        node_b.wait_event("delivery.ok")
        # The node listener takes mail from the nodes only: a practitioner's certificate of
        # the same CA is not enough.
        [a] = [n for n in cli.ok("--config", conf_a, "node", "list", "--json").json()
               if n["name"] == "a"]  # fmt: skip
        host, port = str(a["address"]).rsplit(":", 1)
        cli.ok("--config", conf_a, "cert", "issue", ALICE, "--out", node_a.data / "out")
        ctx = ssl.create_default_context(cafile=node_a.ca)
        ctx.check_hostname = False
        ctx.load_cert_chain(node_a.data / "out" / f"{ALICE}.crt.pem",
                            node_a.data / "out" / f"{ALICE}.key.pem")  # fmt: skip
        # Past TLS (our CA issued it), cut by the pin before the greeting.
        with pytest.raises(smtplib.SMTPServerDisconnected):
            _Lmtps(host, int(port), context=ctx, timeout=10)
        node_a.wait_event("node.link_refused", reason="not a node of this installation")
        # Home node down: the mail waits on B (250 all the same), then arrives.
        node_a.stop()
        with node_b.login(ALICE) as client:
            client.sendmail(ALICE, [BOB], message(ALICE, BOB, body="while A was down"))
        node_b.wait_event("delivery.failed", permanent=False)
        pending = [e for e in spool_rows(cli, conf_b) if e["node"] == "b"]
        assert pending and all(
            r["state"] == "pending"
            for e in pending
            for r in e["recipients"]  # type: ignore[attr-defined]
        )
        node_a.start()
        files = node_a.wait_delivered(BOB, 2, timeout=30)
        assert any(b"while A was down" in f.read_bytes() for f in files)
        assert len(node_a.wait_delivered(BOB, 2)) == 2  # once each
        assert node_b.mailbox(BOB) == []
    finally:
        for node in (node_a, node_b):
            if node.proc is not None:
                node.stop()
