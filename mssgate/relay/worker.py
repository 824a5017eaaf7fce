"""The relay worker: drains due relay deliveries from the spool to peer operators' gateways.

Unit of work: one message and its due recipients at one peer domain, over one connection.
Domains are served concurrently, each domain's messages one after the other (a slow or
dead peer holds up only its own queue).

Ordering that matters (docs/relay.md):
- recipients the peer accepted are marked delivered as soon as the final DATA reply is in,
  before QUIT, DSNs or logs; the only duplicate window is a crash between the peer's 250 and
  that commit (and a connection lost after our final dot, before the peer's reply);
- a DSN is handed to `on_dsn` before the failure is committed: a crash in between bounces
  twice rather than never.
One worker per spool: the spool has no lease, two workers would both send.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from mssgate import metrics
from mssgate.config import RelayConfig
from mssgate.directory import Directory
from mssgate.directory.timeutil import now
from mssgate.errors import MssgateError, NotFound, PKIError, ValidationFailed
from mssgate.logs import event
from mssgate.relay.backoff import retry_delay
from mssgate.relay.client import Outcome, RecipientOutcome, Timeouts, relay_message
from mssgate.relay.dsn import RecipientFailure, build_dsn
from mssgate.relay.encryption import Batch, OutgoingEncryption, Plan
from mssgate.spool.store import MessageEnvelope, PendingDelivery, Spool
from mssgate.supervisor import PassHealth
from mssgate.tls import client_context

log = logging.getLogger("mssgate.relay")

Clock = Callable[[], datetime]
# (DSN bytes, its recipient: the original envelope sender). Called in a worker thread; it
# must make the DSN durable (spool it with a null sender) before it returns.
OnDsn = Callable[[bytes, str], None]

_SMTP_REPLY = re.compile(r"[45]\d\d(?: |$)")


@dataclass(frozen=True)
class _Peer:
    host: str
    port: int
    ca_pem: str | None


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class RelayWorker:
    def __init__(
        self,
        spool: Spool,
        directory: Directory,
        *,
        our_cert: Path,
        our_key: Path,
        config_relay: RelayConfig,
        hostname: str,
        on_dsn: OnDsn,
        postmaster: str | None = None,
        clock: Clock = now,
        rng: random.Random | None = None,
        tls_server_names: Mapping[str, str] | None = None,
        encryption: OutgoingEncryption | None = None,
        mss_nil: str | None = None,
    ) -> None:
        """`postmaster`: the DSN's From; by default mailer-daemon@ the bounced sender's own
        domain when it is local, else @`hostname`. `tls_server_names` maps a peer domain to
        the name its certificate must carry, when that is not its relay host (an IP).
        `encryption`: the S/MIME encryption policy towards peers (None: send as spooled)."""
        self._spool = spool
        self._directory = directory
        self._cert = our_cert
        self._key = our_key
        self._config = config_relay
        self._timeouts = Timeouts.from_config(config_relay)
        self._hostname = hostname
        self._on_dsn = on_dsn
        self._postmaster = postmaster
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not crypto)
        self._server_names = dict(tls_server_names or {})
        self._encryption = encryption
        self._mss_nil = mss_nil
        self._max_age = timedelta(seconds=config_relay.max_age_seconds)
        self._wake = asyncio.Event()
        self._failed_units = 0
        self.delivered = 0
        self.health = PassHealth()  # for /healthz: passes that keep failing

    def wake(self) -> None:
        self._wake.set()

    async def run_once(self) -> int:
        """One pass over what is due; returns how many deliveries it looked at."""
        batch = await asyncio.to_thread(self._spool.due, route="relay", limit=self._config.batch)
        queues: dict[str, dict[str, list[PendingDelivery]]] = {}
        for item in batch:
            queues.setdefault(_domain_of(item.recipient), {}).setdefault(item.spool_id, []).append(
                item
            )
        self._failed_units = 0
        # Every domain's queue ends before the pass does: a failure left running siblings
        # behind, which the next pass (after a restart) met sending the same messages.
        results = await asyncio.gather(
            *(self._domain_queue(d, msgs) for d, msgs in queues.items()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(batch)

    async def run(self) -> None:
        while True:
            try:
                done = await self.run_once()
            except (MssgateError, SQLAlchemyError, OSError) as exc:
                # The database or the data folder: nothing to do but wait and try again.
                event(log, "relay.pass_failed", level=logging.ERROR, error=str(exc))
                self.health.failed(type(exc).__name__)
                done = 0
            else:
                # A unit that failed met the database or the disk (see _domain_queue).
                if self._failed_units:
                    self.health.failed(f"{self._failed_units} messages failed (relay.unit_failed)")
                else:
                    self.health.succeeded()
            # A unit that broke left its rows due: going round at once would spin on them.
            if done and not self._failed_units:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._config.poll_seconds)

    async def _domain_queue(self, domain: str, messages: dict[str, list[PendingDelivery]]) -> None:
        for spool_id, items in messages.items():
            try:
                await self._unit(domain, spool_id, items)
            except (MssgateError, SQLAlchemyError, OSError) as exc:
                self._failed_units += 1
                event(
                    log,
                    "relay.unit_failed",
                    level=logging.ERROR,
                    queue_id=spool_id,
                    domain=domain,
                    error=str(exc),
                )
            except Exception as exc:
                # This message's own trouble (a bug that its bytes or its recipients' records
                # reach): set aside with the reason, visible to `spool list`, so that the
                # messages behind it go on. A recipient already delivered stays delivered.
                reason = f"{type(exc).__name__}: {exc}"[:480]
                for item in items:
                    await asyncio.to_thread(self._spool.hold, item, reason=reason)
                metrics.delivery("relay", "held")
                event(
                    log,
                    "relay.held",
                    level=logging.ERROR,
                    queue_id=spool_id,
                    domain=domain,
                    reason=reason,
                    traceback="".join(traceback.format_exception(exc)),
                )

    def _peer(self, domain: str) -> _Peer | None:
        try:
            found = self._directory.domains.get(domain)
        except (NotFound, ValidationFailed):
            return None
        if found.kind != "trusted" or found.relay_host is None or found.relay_port is None:
            return None
        return _Peer(
            found.relay_host, found.relay_port, self._directory.domains.peer_ca_pem(domain)
        )

    async def _unit(self, domain: str, spool_id: str, items: list[PendingDelivery]) -> None:
        envelope = await asyncio.to_thread(self._spool.envelope, spool_id)
        try:
            content: bytes | None = await asyncio.to_thread(self._spool.read, spool_id)
        except NotFound:
            content = None
        peer = await asyncio.to_thread(self._peer, domain)
        if self._clock() - envelope.received_at >= self._max_age:
            await self._expire(envelope, content, items, peer)
            return
        if peer is None:
            failures = [
                RecipientFailure(
                    i.recipient,
                    "5.7.1",
                    explanation=f"{domain} is not on the trust list of this gateway",
                )
                for i in items
            ]
            await self._fail(envelope, content, items, failures)
            return
        if content is None:
            # The row outlived its file (a restore, a hand-edited spool): nothing to send.
            failures = [
                RecipientFailure(i.recipient, "5.3.0", explanation="the message file was lost")
                for i in items
            ]
            await self._fail(envelope, b"", items, failures)
            return
        plan = Plan([Batch(tuple(i.recipient for i in items), content)])
        if self._encryption is not None:
            plan = await asyncio.to_thread(
                self._encryption.plan, content, domain, [i.recipient for i in items]
            )
        by_recipient = {i.recipient: i for i in items}
        if plan.refused:
            refused = [by_recipient[r.recipient] for r in plan.refused]
            failures = [
                RecipientFailure(r.recipient, r.status, explanation=r.explanation)
                for r in plan.refused
            ]
            await self._fail(envelope, content, refused, failures)
        for batch in plan.batches:
            subset = [by_recipient[r] for r in batch.recipients]
            if batch.encrypted:
                event(log, "relay.encrypted", queue_id=spool_id, domain=domain)
            # The DSN of a failure quotes the message as spooled, never a copy made for
            # another recipient.
            outcomes = await self._send(domain, peer, envelope, batch.content, subset)
            await self._record(envelope, content, subset, outcomes, peer)

    async def _send(
        self,
        domain: str,
        peer: _Peer,
        envelope: MessageEnvelope,
        content: bytes,
        items: list[PendingDelivery],
    ) -> list[RecipientOutcome]:
        recipients = [i.recipient for i in items]
        if peer.ca_pem is None:
            # Without the peer's CA we cannot tell its gateway from anyone's: no fallback to
            # the system store, whose CAs the MSSanté trust model does not include.
            return [
                _local_temporary(r, peer, f"no CA on the trust list for {domain}", "4.7.5")
                for r in recipients
            ]
        try:
            tls = client_context(ca_pem=peer.ca_pem, cert=self._cert, key=self._key)
        except (PKIError, OSError) as exc:
            return [
                _local_temporary(r, peer, f"our TLS client setup failed: {exc}", "4.7.5")
                for r in recipients
            ]
        by_recipient = {i.recipient: i for i in items}

        async def commit_delivered(outcomes: list[RecipientOutcome]) -> None:
            accepted = [
                by_recipient[o.recipient] for o in outcomes if o.outcome is Outcome.DELIVERED
            ]
            for item in accepted:
                await asyncio.to_thread(self._spool.delivered, item)

        return await relay_message(
            peer.host,
            peer.port,
            sender=envelope.sender,
            recipients=recipients,
            content=content,
            tls=tls,
            helo_name=self._hostname,
            timeouts=self._timeouts,
            tls_server_name=self._server_names.get(domain),
            on_result=commit_delivered,
            dsn=envelope.dsn,
            rcpt_dsn={i.recipient: i.dsn for i in items},
        )

    async def _record(
        self,
        envelope: MessageEnvelope,
        content: bytes,
        items: list[PendingDelivery],
        outcomes: list[RecipientOutcome],
        peer: _Peer,
    ) -> None:
        by_recipient = {i.recipient: i for i in items}
        failed: list[tuple[PendingDelivery, RecipientFailure]] = []
        relayed: list[RecipientFailure] = []
        stamp = self._clock()
        deadline = envelope.received_at + self._max_age
        for o in outcomes:
            item = by_recipient[o.recipient]
            if o.outcome is Outcome.DELIVERED:
                self.delivered += 1
                metrics.delivery("relay", "delivered")
                event(
                    log,
                    "relay.delivered",
                    queue_id=item.spool_id,
                    domain=_domain_of(o.recipient),
                    remote=peer.host,
                    reply=o.reply,
                )
                if item.dsn.wants_success and not o.peer_dsn:
                    # RFC 3461 5.2.2: the next hop will not report; we say it left us.
                    relayed.append(
                        RecipientFailure(o.recipient, "2.0.0", remote_mta=o.remote_mta,
                                         diagnostic=o.reply, last_attempt=stamp,
                                         action="relayed",
                                         original_recipient=item.dsn.orcpt_text())
                    )  # fmt: skip
            elif o.outcome is Outcome.PERMANENT:
                metrics.delivery("relay", "failed")
                status = o.status if o.status.startswith("5.") else "5.0.0"
                failed.append(
                    (
                        item,
                        RecipientFailure(
                            o.recipient,
                            status,
                            diagnostic=o.reply if o.from_server else None,
                            remote_mta=o.remote_mta,
                            explanation=None if o.from_server else o.reply,
                            last_attempt=stamp,
                        ),
                    )
                )
            elif stamp >= deadline:
                metrics.delivery("relay", "failed")
                failed.append((item, _expired(o.recipient, o.reply, peer, stamp, self._max_age)))
            else:
                retry = min(retry_delay(item.attempts, self._config, self._rng), deadline - stamp)
                await asyncio.to_thread(
                    self._spool.attempt_failed,
                    item,
                    error=o.reply,
                    permanent=False,
                    retry_in=max(retry, timedelta(0)),
                )
                metrics.delivery("relay", "deferred")
                if _ambiguous(o):
                    metrics.delivery_retried_after_ambiguous_failure("relay")
                event(
                    log,
                    "relay.deferred",
                    queue_id=item.spool_id,
                    domain=_domain_of(o.recipient),
                    attempts=item.attempts + 1,
                    retry_in=retry.total_seconds(),
                    error=o.reply,
                )
        if relayed and envelope.sender and not envelope.reported_to_its_ris:
            await self._report_success(envelope, content, relayed)
        if failed:
            await self._fail(envelope, content, [i for i, _ in failed], [f for _, f in failed])

    async def _report_success(
        self, envelope: MessageEnvelope, content: bytes, reports: list[RecipientFailure]
    ) -> None:
        """A success DSN (Action relayed): the deliveries are committed already, so a DSN
        that cannot be spooled is logged, not retried (the sender asked; nothing is lost)."""
        try:
            await self._send_dsn(envelope, content, reports)
        except Exception as exc:  # whatever the sink raised
            event(log, "relay.dsn_failed", level=logging.ERROR, queue_id=envelope.id,
                  action="relayed", error=f"{exc.__class__.__name__}: {exc}")  # fmt: skip
            return
        event(log, "relay.dsn", queue_id=envelope.id, to=envelope.sender,
              recipients=len(reports), action="relayed")  # fmt: skip

    async def _send_dsn(
        self, envelope: MessageEnvelope, content: bytes, reports: list[RecipientFailure]
    ) -> None:
        """The DSN of `reports` to the envelope's sender, handed to the sink (which raises)."""
        dsn = build_dsn(
            content,
            reporting_mta=self._hostname,
            failures=reports,
            postmaster=await asyncio.to_thread(self._postmaster_for, envelope.sender),
            arrival=envelope.received_at,
            envelope_sender=envelope.sender,
            date=self._clock(),
            mss_nil=self._mss_nil,
            envid=envelope.envid,
        )
        await asyncio.to_thread(self._on_dsn, dsn, envelope.sender)

    async def _expire(
        self,
        envelope: MessageEnvelope,
        content: bytes | None,
        items: list[PendingDelivery],
        peer: _Peer | None,
    ) -> None:
        failures = []
        for item in items:
            state = await asyncio.to_thread(
                self._spool.recipient_state, item.spool_id, item.recipient
            )
            failures.append(
                _expired(item.recipient, state.last_error, peer, self._clock(), self._max_age)
            )
        await self._fail(envelope, content or b"", items, failures)

    async def _fail(
        self,
        envelope: MessageEnvelope,
        content: bytes | None,
        items: list[PendingDelivery],
        failures: list[RecipientFailure],
    ) -> None:
        # RFC 3461: NOTIFY=NEVER (or a NOTIFY without FAILURE) asks for no failure report;
        # without NOTIFY, failures are reported as they always were.
        failures = [
            dataclasses.replace(f, original_recipient=i.dsn.orcpt_text())
            for i, f in zip(items, failures, strict=True)
        ]
        reported = [f for i, f in zip(items, failures, strict=True) if i.dsn.wants_failure]
        if envelope.reported_to_its_ris:
            reported = []
        if envelope.sender and reported:
            try:
                await self._send_dsn(envelope, content or b"", reported)
            except Exception as exc:  # whatever the sink raised: see below
                # No durable DSN, so no final failure: the whole unit comes back later and
                # ends the same way, this time with its DSN.
                event(
                    log,
                    "relay.dsn_failed",
                    level=logging.ERROR,
                    queue_id=envelope.id,
                    error=f"{exc.__class__.__name__}: {exc}",
                )
                for item, failure in zip(items, failures, strict=True):
                    retry = retry_delay(item.attempts, self._config, self._rng)
                    await asyncio.to_thread(
                        self._spool.attempt_failed,
                        item,
                        error=_error_text(failure),
                        permanent=False,
                        retry_in=retry,
                    )
                return
            event(
                log, "relay.dsn", queue_id=envelope.id, to=envelope.sender, recipients=len(reported)
            )
        elif envelope.sender:
            reason = (
                "a RIS's copy: its status and ZAM say it"
                if envelope.reported_to_its_ris
                else "NOTIFY asks for no failure report"
            )
            event(log, "relay.dsn_suppressed", queue_id=envelope.id, recipients=len(failures),
                  reason=reason)  # fmt: skip
        else:
            # RFC 5321 4.5.5: a message with a null sender (itself a DSN or a receipt) is
            # never answered by another DSN; the failure is logged and audited only.
            event(log, "relay.dsn_suppressed", queue_id=envelope.id, recipients=len(failures))
        for item, failure in zip(items, failures, strict=True):
            await asyncio.to_thread(
                self._spool.attempt_failed,
                item,
                error=_error_text(failure),
                permanent=True,
                retry_in=timedelta(0),
            )
            event(
                log,
                "relay.failed",
                queue_id=item.spool_id,
                domain=_domain_of(item.recipient),
                status=failure.status,
                error=_error_text(failure),
            )

    def _postmaster_for(self, sender: str) -> str:
        if self._postmaster is not None:
            return self._postmaster
        return postmaster_for(self._directory, self._hostname, sender)


def postmaster_for(directory: Directory, hostname: str, sender: str) -> str:
    """The From of a DSN to `sender`: mailer-daemon@ its own domain when we host it (whose
    key `mssgate init` makes), else @ our host name."""
    domain = _domain_of(sender)
    if domain in directory.domains.local_names():
        return f"mailer-daemon@{domain}"
    return f"mailer-daemon@{hostname}"


def _ambiguous(outcome: RecipientOutcome) -> bool:
    # Our final dot went out and no reply came: the peer may have queued the message, and
    # the retry may deliver it twice (RFC 5321 6.1 accepts duplicates over losses).
    return not outcome.from_server and outcome.reply.startswith("data end:")


def _local_temporary(recipient: str, peer: _Peer, text: str, status: str) -> RecipientOutcome:
    return RecipientOutcome(recipient, Outcome.TEMPORARY, None, status, text, peer.host)


def _expired(
    recipient: str, last_error: str | None, peer: _Peer | None, stamp: datetime, age: timedelta
) -> RecipientFailure:
    from_server = last_error is not None and _SMTP_REPLY.match(last_error) is not None
    days = age.total_seconds() / 86_400
    why = f"no delivery within {days:g} days"
    if last_error:
        why += f"; last error: {last_error}"
    return RecipientFailure(
        recipient,
        "5.4.7",
        diagnostic=last_error if from_server else None,
        remote_mta=peer.host if peer is not None else None,
        explanation=why,
        last_attempt=stamp,
    )


def _error_text(failure: RecipientFailure) -> str:
    return f"{failure.status} {failure.diagnostic or failure.explanation or ''}".strip()
