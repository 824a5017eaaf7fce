"""DSN parameters across the node link (issue 15, review): a delivery handed to its mailbox's
home node keeps the RFC 3461 parameters it came with, so that the home node, which delivers
it, sends the success or failure DSN the sender asked for (a RIS's copy ends `delivered`).

Real TLS and LMTP between the sending side and node A's listener, as in test_nodelink.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select, update

from mssgate.db.schema import professionals, spool_messages, spool_recipients
from mssgate.db.tx import write
from mssgate.mailstore.maildir import MaildirStore
from mssgate.nodelink import CrossNodeDelivery, Homes, NodeHandOff
from mssgate.nodes import Nodes
from mssgate.smtp.dsnparams import MessageDsn, RecipientDsn
from mssgate.smtp.server import bound_port
from mssgate.spool import Spool, new_queue_id
from mssgate.spool.delivery import DeliveryWorker, Notifications
from tests.test_nodelink import BOB, SENDER, Link, _listening, _Lmtps, _node_context, message
from tests.test_nodelink import link as link  # the fixture


def _hand_over(link: Link, content: bytes, **dsn: object) -> None:
    cert, key, ca = link.tls

    async def scenario() -> None:
        server = await _listening(link)  # type: ignore[misc]
        try:
            handoff = NodeHandOff(cert=cert, key=key, ca=ca, timeout=10)
            address = f"127.0.0.1:{bound_port(server)}"
            await asyncio.to_thread(
                lambda: handoff.hand_over(address, BOB, content, queue_id="from-b",
                                          sender=SENDER, **dsn)  # type: ignore[arg-type]
            )  # fmt: skip
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def _spooled(link: Link) -> tuple[object, ...]:
    query = (
        select(
            spool_messages.c.dsn_ret,
            spool_messages.c.dsn_envid,
            spool_recipients.c.dsn_notify,
            spool_recipients.c.dsn_orcpt,
        )
        .select_from(spool_messages.join(spool_recipients))
        .where(spool_recipients.c.recipient == BOB)
    )
    with link.engine.connect() as conn:
        rows = conn.execute(query).all()
    assert len(rows) == 1
    return tuple(rows[0])


def test_a_hand_over_carries_the_dsn_parameters(link: Link) -> None:
    """Before: the home node spooled the copy without them, and sent no success DSN."""
    _hand_over(
        link,
        message(b"report\r\n"),
        dsn=MessageDsn(ret="HDRS", envid="Env id+1=x"),
        rcpt_dsn=RecipientDsn(
            notify=frozenset({"SUCCESS", "FAILURE"}), orcpt=("rfc822", "Imagerie+x@Hopital-A.test")
        ),
    )
    assert _spooled(link) == (
        "HDRS",
        "Env id+1=x",
        "SUCCESS,FAILURE",
        "rfc822;Imagerie+2Bx@Hopital-A.test",
    )


def test_a_hand_over_without_dsn_parameters_spools_none(link: Link) -> None:
    _hand_over(link, message(b"plain\r\n"))
    assert _spooled(link) == (None, None, None, None)


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("mail", "FROM:<a@hopital-a.test> ENVID=bad+zz"),
        ("mail", "FROM:<a@hopital-a.test> RET=MAYBE"),
        ("rcpt", f"TO:<{BOB}> NOTIFY=NEVER,SUCCESS"),
        ("rcpt", f"TO:<{BOB}> ORCPT=rfc822;a+0D+0Ab@x"),
    ],
)
def test_a_bad_dsn_parameter_on_the_node_link_is_refused(
    link: Link, command: str, line: str
) -> None:
    """The node listener reads the parameters as the SMTP listeners do: 501 5.5.4 (a CR
    decoded from an ORCPT would reach the DSN's fields)."""

    async def scenario() -> tuple[int, bytes]:
        server = await _listening(link)  # type: ignore[misc]

        def talk() -> tuple[int, bytes]:
            client = _Lmtps("127.0.0.1", bound_port(server), context=_node_context(link),
                            timeout=10)  # fmt: skip
            try:
                client.ehlo()
                assert client.has_extn("dsn")
                if command == "rcpt":
                    assert client.mail(SENDER)[0] == 250
                return client.docmd(command.upper(), line)
            finally:
                client.close()

        try:
            return await asyncio.to_thread(talk)
        finally:
            server.close()
            await server.wait_closed()

    code, text = asyncio.run(scenario())
    assert code == 501 and text.startswith(b"5.5.4"), (code, text)
    assert link.spooled_for(BOB) == []


def test_a_hand_over_refused_for_good_sends_the_failure_dsn(link: Link, tmp_path: Path) -> None:
    """Node B hands BOB's copy to A, whose listener refuses it for good (552, too large for
    it): B fails the delivery and (NOTIFY=FAILURE) tells the sender. Before: no DSN at all,
    though a local refusal sends one; a RIS's copy stayed `sent`."""
    cert, key, ca = link.tls
    spool_b = Spool(link.engine, tmp_path / "spool-b", node="b")
    queue_id = new_queue_id()
    content = message(b"z" * 998 + b"\r\n") + b"z" * 70 * 50_000
    spool_b.accept(
        queue_id=queue_id, content=content, listener="mta", sender=SENDER, identity=None,
        peer=None, recipients=[(BOB, "local")],
        rcpt_dsn={BOB: RecipientDsn(notify=frozenset({"FAILURE"}), orcpt=("rfc822", BOB))},
    )  # fmt: skip
    reports: list[tuple[bytes, str]] = []

    async def scenario() -> None:
        server = await _listening(link)  # type: ignore[misc]  # max_size 1 MB: 3 MB at most
        try:
            Nodes(link.engine, actor="test").set_address("a", f"127.0.0.1:{bound_port(server)}")
            with write(link.engine) as conn:
                conn.execute(
                    update(professionals).where(professionals.c.address == BOB).values(node="a")
                )
            worker = DeliveryWorker(
                spool_b,
                MaildirStore(tmp_path / "mail-b"),
                cross_node=CrossNodeDelivery(
                    Homes(link.engine, "b"), NodeHandOff(cert=cert, key=key, ca=ca, timeout=10)
                ),
                notifications=Notifications(
                    on_dsn=lambda dsn, to: reports.append((dsn, to)), hostname="b.test"
                ),
            )
            await worker.run_once()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert link.accepted == []  # A took nothing
    assert spool_b.recipient_state(queue_id, BOB).state == "failed"
    [(dsn, to)] = reports
    assert to == SENDER
    text = dsn.decode()
    assert f"Final-Recipient: rfc822; {BOB}\r\nAction: failed\r\n" in text
    assert f"Original-Recipient: rfc822;{BOB}\r\n" in text
