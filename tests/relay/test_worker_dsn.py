"""RFC 3461 through the relay: the parameters kept with a spool entry reach a peer that offers
DSN (ENVID and ORCPT xtext-encoded again); a peer without DSN gets none, and a requested
success is then reported as `relayed`; NOTIFY=NEVER suppresses the failure DSN."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mssgate.smtp.dsnparams import MessageDsn, RecipientDsn, parse_notify
from mssgate.spool import new_queue_id
from tests.relay.conftest import ALICE, DR_B, PeerGateway, PeerHandler, World, message
from tests.relay.test_worker import parse_dsn


class DsnPeerHandler(PeerHandler):
    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]]


class DsnPeerSMTP(SMTP):
    """aiosmtpd refuses parameters it does not know: this peer takes RFC 3461's off the line
    (recording the lines as sent) before its parser sees them."""

    lines: list[str]

    def _strip(self, arg: str | None) -> str | None:
        self.lines.append(arg or "")
        if arg is None:
            return arg
        keys = ("RET=", "ENVID=", "NOTIFY=", "ORCPT=")
        return " ".join(w for w in arg.split(" ") if not w.upper().startswith(keys))

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._strip(arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._strip(arg))


class DsnPeer(PeerGateway):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handler = DsnPeerHandler()
        self.lines: list[str] = []

    def _protocol(self) -> SMTP:
        protocol = DsnPeerSMTP(
            self.handler, hostname="mx.clinique-b.test", tls_context=self._ctx,
            require_starttls=True, decode_data=False,
        )  # fmt: skip
        protocol.lines = self.lines
        return protocol


def submit(
    world: World, notify: str, *, envid: str | None = "Copy+1 x", listener: str = "submission"
) -> str:
    queue_id = new_queue_id()
    world.spool.accept(
        queue_id=queue_id, content=message(), listener=listener, sender=ALICE, identity=ALICE,
        peer=None, recipients=[(DR_B, "relay")], dsn=MessageDsn(ret="HDRS", envid=envid),
        rcpt_dsn={DR_B: RecipientDsn(parse_notify(notify), ("rfc822", "Dr.B+x@clinique-b.test"))},
    )  # fmt: skip
    return queue_id


def run(world: World, peer: PeerGateway) -> None:
    async def scenario() -> None:
        await peer.start()
        try:
            await world.worker().run_once()
        finally:
            await peer.stop()

    asyncio.run(scenario())


def test_a_peer_offering_dsn_gets_the_parameters_and_reports_itself(world: World) -> None:
    queue_id = submit(world, "SUCCESS,FAILURE")
    peer = DsnPeer(world.pki, world.port, cert=world.pki.peer_cert, key=world.pki.peer_key)
    run(world, peer)
    assert world.state(queue_id) == "delivered"
    mail = next(line for line in peer.lines if line.upper().startswith("FROM:"))
    rcpt = next(line for line in peer.lines if line.upper().startswith("TO:"))
    assert mail.endswith(" RET=HDRS ENVID=Copy+2B1+20x")
    assert rcpt == f"TO:<{DR_B}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Dr.B+2Bx@clinique-b.test"
    assert world.dsns == []  # the peer reports from here


def test_a_peer_without_dsn_gets_none_and_a_success_is_reported_relayed(world: World) -> None:
    queue_id = submit(world, "SUCCESS")
    peer = world.peer()
    run(world, peer)
    assert world.state(queue_id) == "delivered"
    assert peer.handler.mail_options == ["SIZE=" + peer.handler.mail_options[0][5:]]
    [(raw, to)] = world.dsns
    assert to == ALICE
    msg, blocks = parse_dsn(raw)
    assert msg["Subject"] == "Successful Mail Delivery Report (message remis)"
    assert blocks[0]["Original-Envelope-Id"] == "Copy+2B1+20x"
    [rcpt] = blocks[1:]
    assert (rcpt["Action"], rcpt["Status"]) == ("relayed", "2.0.0")
    assert rcpt["Original-Recipient"] == "rfc822;Dr.B+2Bx@clinique-b.test"


def test_notify_never_suppresses_the_failure_dsn_and_failure_keeps_it(world: World) -> None:
    for notify, reports in (("NEVER", 0), ("FAILURE", 1)):
        world.dsns.clear()
        queue_id = submit(world, notify)
        peer = world.peer()
        peer.handler.rcpt_replies[DR_B] = "550 5.1.1 no such user"
        run(world, peer)
        assert world.state(queue_id) == "failed"
        assert len(world.dsns) == reports, notify


def test_a_ris_copy_gets_no_dsn_from_this_gateway(world: World) -> None:
    """A copy a RIS sent (mssgate.outbound: listener api or mllp) asks NOTIFY=SUCCESS,FAILURE
    for the peer's reports; what this gateway knows (relayed to a peer without DSN, refused)
    reaches the RIS as the copy's status and its ZAM. Before: a `relayed` DSN, or a failure
    DSN, per copy went to the application mailbox (signed, delivered, run through the
    document pipeline) for nothing: 50 recipients, 50 DSNs."""
    for listener in ("api", "mllp"):
        world.dsns.clear()
        relayed = submit(world, "SUCCESS,FAILURE", listener=listener)
        run(world, world.peer())
        assert world.state(relayed) == "delivered"
        refused = submit(world, "SUCCESS,FAILURE", listener=listener)
        peer = world.peer()
        peer.handler.rcpt_replies[DR_B] = "550 5.1.1 no such user"
        run(world, peer)
        assert world.state(refused) == "failed"
        assert world.dsns == [], listener


def test_the_outbound_channels_are_the_listeners_without_dsn() -> None:
    from typing import get_args

    from mssgate.outbound.service import Channel
    from mssgate.spool.store import OUTBOUND_LISTENERS

    # A routing rule's forward (channel "routing") has no RIS to tell: its failures reach
    # the sending application mailbox as DSNs, as any sender's do.
    assert set(get_args(Channel)) - {"routing"} == OUTBOUND_LISTENERS
    assert "routing" in get_args(Channel)
