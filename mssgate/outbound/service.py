"""A RIS's submission end to end: read and check the HL7, build one signed message per
recipient, record the submission (once per consumer and MSH-10), spool the copies.

The copies go to the spool as a submission does (mssgate.smtp.policy): a trace field, the
Return-Path cut, the MSSanté fields and DKIM on what leaves for a peer, then `Spool.accept`
(file fsynced, row committed) before the 202; local delivery or the relay (with its
encryption policy) takes them from there like any accepted message.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Literal

import hl7  # type: ignore[import-untyped]

from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.directory.models import AccountState, Consumer, EncryptionPolicy
from mssgate.dkim import dkim_sign
from mssgate.documents import mss_headers
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.pipeline import process_message
from mssgate.errors import PKIError, StorageError
from mssgate.logs import event
from mssgate.outbound import hl7in
from mssgate.outbound.ack import build_ack
from mssgate.outbound.compose import build_message, xdm_archive
from mssgate.outbound.hl7in import OTHER, Rejection, Rules, Submission, refuse
from mssgate.outbound.receipts import DeliveryReport, delivery_report, may_report, read_receipt
from mssgate.outbound.store import NewRecipient, OutboundStatus, OutboundStore, Stored
from mssgate.outbound.zamqueue import ZamQueue
from mssgate.patients.conversations import PatientMessage, patient_ins
from mssgate.queue.service import QueueSettings
from mssgate.returnpath import strip_return_path
from mssgate.smime import sign_message
from mssgate.smime.mailbox_keys import MailboxKey, find_mailbox_key, mailbox_keys_dir
from mssgate.smtp import encryption
from mssgate.smtp.dsnparams import MessageDsn, RecipientDsn
from mssgate.smtp.encryption import EncryptionSettings
from mssgate.spool import Spool, new_queue_id
from mssgate.spool.store import Route

log = logging.getLogger("mssgate.outbound")
# How the RIS handed the message over (POST /v1/outbound, or the [hl7] MLLP listener): the
# spool's listener and the copies' trace say which, for whoever follows a message back.
# A routing rule's forward (mssgate.outbound.forward) is made by the gateway itself.
Channel = Literal["api", "mllp", "routing"]
_CHANNEL_TRACE: dict[Channel, tuple[str, str]] = {
    "api": ("HL7 v2 over HTTPS", "HTTPS"),
    "mllp": ("HL7 v2 over MLLP", "MLLP"),
    "routing": ("a routing rule's forward", "LOCAL"),
}
# A submission recorded this long ago with a copy still not in the spool was cut short by a
# crash: a repeat of its MSH-10 spools what is missing. Spooling takes well under a second.
RESUME_AFTER = timedelta(seconds=60)
# How long a repeat waits for the first request to finish spooling before answering 503: the
# first one signs a copy per recipient, which a loaded machine makes slow; a repeat that
# answered 503 too soon would make a RIS retry what is already being sent.
_REPEAT_WAIT_SECONDS = 30.0
# Our ids (mssgate.spool.new_queue_id): any other is unknown without asking the database,
# where a NUL made PostgreSQL raise (a 500 instead of the 404).
_OUTBOUND_ID = re.compile(r"[0-9A-F]{1,32}")


def _new_message_id(sender: str) -> str:
    return f"<{uuid.uuid4().hex}@{sender.rsplit('@', 1)[1]}>"


@dataclass(frozen=True)
class Answer:
    """What the API answers: HTTP status, the HL7 ACK, and the Location of a submission."""

    status: int
    ack: str
    outbound_id: str | None = None


@dataclass(frozen=True)
class _Copy:
    """One recipient's copy before its content is built: its content is made (signed) only
    when it is spooled, so a request holds one copy at a time, not one per recipient."""

    recipient: str
    route: Route
    queue_id: str
    message_id: str


@dataclass(frozen=True)
class _Prepared:
    """What every copy shares: checked (refusals happen here, before any record)."""

    submission: Submission
    sender: str
    key: MailboxKey
    xdm: bytes
    mss_fields: dict[str, str]
    now: datetime
    channel: Channel = "api"
    # A paragraph before the text, and headers beside the MSSanté fields (a forward's).
    note: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


class Outbound:
    def __init__(
        self,
        config: Config,
        directory: Directory,
        spool: Spool,
        *,
        on_spooled: Callable[[], None] = lambda: None,
        dkim_key: bytes | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._config = config
        self._directory = directory
        self._spool = spool
        self._store = OutboundStore(directory.engine)
        self._on_spooled = on_spooled
        self._dkim_key = dkim_key
        self._keys: Path = mailbox_keys_dir(config)
        self._limits = DocumentLimits.from_config(config.documents)
        self._rules = Rules(
            limits=self._limits,
            allow_test_oids=config.policy.allow_test_ins,
            patient_domain=config.policy.patient_domain,
        )
        self._encryption = EncryptionSettings(
            default=EncryptionPolicy(config.policy.encryption), mailbox_keys=self._keys
        )
        self._hostname = config.server.hostname
        # The ZAMs of this gateway's outbound messages, leasable as items of kind `ack`.
        self.zams = ZamQueue(
            directory.engine,
            facility=self._hostname,
            settings=QueueSettings.from_config(config.queue),
            clock=clock,
        )

    def submit(self, consumer: Consumer, body: bytes, *, channel: Channel = "api") -> Answer:
        try:
            message = hl7in.parse_er7(body)
            envelope = hl7in.envelope_of(message)
            stored = self._store.find(consumer.id, envelope.control_id)
            if stored is not None:
                return self._repeat(consumer, message, stored, channel)
            submission = hl7in.read_submission(message, self._rules)
            routes = self._routes(submission)
            return self._send(consumer, submission, routes, channel)
        except Rejection as exc:
            event(log, "outbound.refused", consumer=consumer.name, ack=exc.ack_code,
                  codes=[p.code for p in exc.problems])  # fmt: skip
            ack = build_ack(exc.ack_code, exc.envelope, facility=self._hostname,
                            problems=exc.problems)  # fmt: skip
            return Answer(exc.status, ack)

    def _repeat(
        self, consumer: Consumer, message: hl7.Message, stored: Stored, channel: Channel
    ) -> Answer:
        """The same MSH-10 again: the first answer, once every copy is in the spool.

        A copy recorded but not spooled is either being spooled now (by the first request,
        maybe on another node: wait a little) or was lost to a crash between the record and
        the spool; past RESUME_AFTER it is the latter, and this request spools it."""
        deadline = time.monotonic() + _REPEAT_WAIT_SECONDS
        missing = self._store.unspooled(stored.id)
        while missing and time.monotonic() < deadline:
            time.sleep(0.05)
            missing = self._store.unspooled(stored.id)
        if missing:
            if self._clock() - stored.submitted_at < RESUME_AFTER:
                raise StorageError("the first submission of this MSH-10 is still being spooled")
            submission = hl7in.read_submission(message, self._rules)
            wanted = {m.address: m for m in missing}
            routes = [r for r in self._routes(submission) if r[0] in wanted]
            if (submission.event, submission.unique_id) != (stored.event, stored.unique_id) or len(
                routes
            ) != len(wanted):
                # The copies still owed are the first message's: another document (or a
                # list without them) under this MSH-10 would send that instead, or lose them.
                text = "this MSH-10 was first submitted with another document or recipients"
                raise refuse(OTHER, "MSH", 10, text, submission.envelope)
            prepared = self._prepare(submission, consumer.mailbox, self._clock(), channel)
            for recipient, route in routes:
                copy = _Copy(recipient, route, new_queue_id(), wanted[recipient].message_id)
                # The row first: a crash before the spool leaves it missing, resumed again.
                self._store.respooled(stored.id, copy.recipient, copy.queue_id)
                self._accept(copy, self._content(prepared, copy), prepared)
            event(log, "outbound.resumed", outbound_id=stored.id, recipients=len(routes))
            self._on_spooled()
        event(log, "outbound.repeated", outbound_id=stored.id, consumer=consumer.name)
        return Answer(202, stored.ack, stored.id)

    def _accept(self, copy: _Copy, content: bytes, prepared: _Prepared) -> None:
        # A relayed copy asks its peer for DSNs (RFC 3461): the success one turns it
        # `delivered` and gives the RIS its ACK_RECEPTION_MSS; ENVID is the copy's spool id,
        # which the DSN echoes (docs/relay.md, "DSN").
        rcpt_dsn = (
            {copy.recipient: RecipientDsn(frozenset({"SUCCESS", "FAILURE"}),
                                          ("rfc822", copy.recipient))}
            if copy.route == "relay"
            else None
        )  # fmt: skip
        # A copy for a patient's mailbox (DESTMSSANTEPAT) starts a conversation from the
        # application mailbox: recorded with the copy, so that the patient's reply is taken.
        ins = patient_ins(copy.recipient, self._config.policy.patient_domain)
        patients = (
            []
            if ins is None
            else [PatientMessage(copy.message_id, ins, prepared.sender, ends_conversation=False)]
        )
        self._spool.accept(
            queue_id=copy.queue_id, content=content, listener=prepared.channel,
            sender=prepared.sender, identity=prepared.sender, peer=None,
            recipients=[(copy.recipient, copy.route)],
            dsn=MessageDsn(ret="HDRS", envid=copy.queue_id) if rcpt_dsn else None,
            rcpt_dsn=rcpt_dsn, patients=patients,
        )  # fmt: skip

    def status(self, consumer: Consumer, outbound_id: str) -> OutboundStatus | None:
        if not _OUTBOUND_ID.fullmatch(outbound_id):
            return None
        return self._store.status(consumer.id, outbound_id)

    def observe(self, mailbox: str, content: bytes, sender: str = "") -> None:
        """A message delivered to an application mailbox, and its envelope sender: a read
        receipt (MDN) for one of its copies marks that copy read, a DSN from the recipient's
        domain marks it delivered or failed (mssgate.outbound.receipts)."""
        report = delivery_report(content)
        if report is not None:
            if sender:
                # A DSN goes out with the null reverse path (RFC 3461 6.2): one with a sender
                # is someone's message shaped like one (a practitioner of the recipient's
                # domain whose operator let the From: through), never its mail system's.
                event(log, "outbound.dsn_ignored", reason="a DSN comes with the null reverse path")
                return
            self._observe_dsn(mailbox, report)
            return
        receipt = read_receipt(content)
        if receipt is None or not receipt.read:
            return
        found = self._store.mark_read(
            mailbox=mailbox,
            message_id=receipt.original_message_id,
            reader=receipt.reader,
            disposition=receipt.disposition,
            at=self._clock(),
            then=self.zams.materialise,
        )
        if found is not None:
            event(log, "outbound.read", outbound_id=found)

    def _observe_dsn(self, mailbox: str, report: DeliveryReport) -> None:
        for r in report.recipients:
            if not may_report(report.reporter, r.recipient):
                # Anyone may mail the RIS's mailbox: only the recipient's own domain's mail
                # system may say what became of its copy.
                event(log, "outbound.dsn_ignored", reason="reporter is not the recipient's"
                      " domain's mail system")  # fmt: skip
                continue
            found = self._store.mark_delivery(
                mailbox=mailbox, recipient=r.recipient, action=r.action, status=r.status,
                detail=r.diagnostic, at=self._clock(), envid=report.envid,
                message_id=report.original_message_id, then=self.zams.materialise,
            )  # fmt: skip
            if found is not None:
                event(log, f"outbound.{r.action}", outbound_id=found, status=r.status)

    def acks(self, consumer: Consumer, outbound_id: str) -> list[str] | None:
        """The ZAM business acknowledgements produced so far (None: unknown or another's):
        those the status warrants are recorded first, so this list and the items of kind
        `ack` a consumer leases are the same ZAMs, byte for byte."""
        if not _OUTBOUND_ID.fullmatch(outbound_id):
            return None
        if self._store.submitted(consumer.id, outbound_id) is None:
            return None
        self.zams.status_changed(outbound_id)
        return self.zams.listed(outbound_id)

    def _routes(self, submission: Submission) -> list[tuple[str, Route]]:
        """Each recipient's route, checked as RCPT checks a practitioner's: a local mailbox
        must exist and be active, a peer's domain be trusted (and its encryption policy
        met); anything else refuses the whole submission."""
        env = submission.envelope
        locals_ = self._directory.domains.local_names()
        routes: list[tuple[str, Route]] = []
        for address in submission.recipients:
            domain = address.rsplit("@", 1)[1]
            if domain in locals_:
                found = self._directory.professionals.find(address)
                if found is None or not found.local or found.state is not AccountState.ACTIVE:
                    raise refuse(OTHER, "PRT", 15, f"no active mailbox {address}", env)
                routes.append((address, "local"))
            elif self._directory.domains.peer_ca_pem(domain) is not None:
                refusal = encryption.recipient_refusal(
                    self._directory, address, domain, self._encryption
                )
                if refusal is not None:
                    raise refuse(OTHER, "PRT", 15, f"{address}: {refusal.text}", env)
                routes.append((address, "relay"))
            else:
                text = f"{domain} is neither a local domain nor a trusted peer"
                raise refuse(OTHER, "PRT", 15, text, env)
        return routes

    def _prepare(
        self, submission: Submission, sender: str, now: datetime, channel: Channel
    ) -> _Prepared:
        """The signing key, the archive and the MSSanté fields every copy shares."""
        env = submission.envelope
        try:
            key = find_mailbox_key(self._keys, sender)
        except PKIError as exc:
            raise refuse(OTHER, "MSH", None, f"signing key unusable: {exc}", env,
                         ack="AR", status=503) from None  # fmt: skip
        if key is None:
            text = f"no signing key for {sender} (mssgate consumer add, or cert install-key)"
            raise refuse(OTHER, "MSH", None, text, env, ack="AR", status=503)
        xdm = xdm_archive(submission, now, sender=sender)
        mss_fields = self._mss_fields(submission, sender, xdm, now)
        return _Prepared(submission, sender, key, xdm, mss_fields, now, channel)

    def _content(self, prepared: _Prepared, copy: _Copy) -> bytes:
        """The signed copy to `copy.recipient`, as it goes to the spool."""
        unsigned = build_message(
            prepared.submission, sender=prepared.sender, recipient=copy.recipient,
            message_id=copy.message_id,
            mss_fields={**prepared.mss_fields, **dict(prepared.headers)},
            now=prepared.now, xdm=prepared.xdm, note=prepared.note,
        )  # fmt: skip
        signed = sign_message(unsigned, key=prepared.key.key, cert=prepared.key.cert)
        del unsigned
        content = self._trace(copy.queue_id, copy.recipient, prepared.now, prepared.channel)
        content += strip_return_path(signed)
        del signed
        if copy.route == "relay":
            content = self._outgoing(content, prepared.sender)
        return content

    def _send(
        self,
        consumer: Consumer,
        submission: Submission,
        routes: list[tuple[str, Route]],
        channel: Channel,
    ) -> Answer:
        env = submission.envelope
        sender = consumer.mailbox
        now = self._clock()
        prepared = self._prepare(submission, sender, now, channel)
        copies = [_Copy(r, route, new_queue_id(), _new_message_id(sender)) for r, route in routes]
        outbound_id = new_queue_id()
        ack = build_ack("AA", env, facility=self._hostname)
        stored = self._store.record(
            outbound_id=outbound_id, consumer_id=consumer.id, consumer_name=consumer.name,
            control_id=env.control_id, event=submission.event, sender=sender,
            unique_id=submission.unique_id, submitted_at=now, ack=ack,
            recipients=[NewRecipient(c.recipient, c.queue_id, c.message_id) for c in copies],
        )  # fmt: skip
        if stored is None:  # the same MSH-10 posted at the same moment, on this or another node
            again = self._store.find(consumer.id, env.control_id)
            assert again is not None
            return Answer(202, again.ack, again.id)
        spooled = 0
        try:
            for copy in copies:
                self._accept(copy, self._content(prepared, copy), prepared)
                spooled += 1
        except (StorageError, OSError) as exc:
            if spooled == 0:
                # Nothing went: the RIS's retry submits it anew at once.
                self._store.forget(outbound_id)
            # Else the retry, past RESUME_AFTER, spools the copies still missing.
            event(log, "outbound.spool_failed", level=logging.ERROR, outbound_id=outbound_id,
                  spooled=spooled, error=str(exc))  # fmt: skip
            raise StorageError("the message could not be spooled; submit it again") from exc
        event(log, "outbound.accepted", outbound_id=outbound_id, consumer=consumer.name,
              event_type=submission.event, recipients=len(copies))  # fmt: skip
        self._on_spooled()
        return Answer(202, ack, outbound_id)

    def _mss_fields(
        self, submission: Submission, sender: str, xdm: bytes, now: datetime
    ) -> dict[str, str]:
        """X-MSS-CODECDA / X-MSS-INS as the pipeline reads them from the message itself;
        and the message must pass our own pipeline, or nothing is sent."""
        try:
            probe = build_message(
                submission, sender=sender, recipient=sender, message_id="<probe@invalid>",
                mss_fields={}, now=now, xdm=xdm,
            )  # fmt: skip
        except ValueError:
            # A line break in a name or title of the CDA: no mail header may carry it.
            text = "the CDA's title or patient names cannot be written in a Subject"
            raise refuse(OTHER, "OBX", 5, text, submission.envelope) from None
        result = process_message(
            probe,
            # No PDF text: the one step no in-process check bounds in time, and this runs in
            # the request (the SMTP path reads these headers the same way).
            limits=self._limits.model_copy(update={"read_pdfs": False}),
            allow_test_oids=self._rules.allow_test_oids,
            require_birthplace=self._config.policy.require_birthplace,
        )
        if result.quarantined:
            held = result.quarantined[0]
            raise refuse(int(held.code), "OBX", 5, f"our own pipeline would hold the "
                         f"document: {held.reason}", submission.envelope)  # fmt: skip
        try:
            return mss_headers(result)
        except ValueError:
            text = "the CDA's code cannot be written in X-MSS-CODECDA"
            raise refuse(OTHER, "OBX", 5, text, submission.envelope) from None

    def _trace(self, queue_id: str, recipient: str, now: datetime, channel: Channel) -> bytes:
        how, protocol = _CHANNEL_TRACE[channel]
        return (
            f"Received: from {channel} ({how})\r\n"
            f"\tby {self._hostname} (mssgate) with {protocol}\r\n"
            f"\tid {queue_id}\r\n\tfor <{recipient}>; {format_datetime(now)}\r\n"
        ).encode("ascii", "replace")

    def _outgoing(self, message: bytes, sender: str) -> bytes:
        """What leaves for a peer: X-MSS-NIL, then DKIM over it (as a submission's)."""
        message = f"X-MSS-NIL: {self._config.policy.mss_nil}\r\n".encode() + message
        if self._dkim_key is None:
            return message
        return dkim_sign(
            message,
            selector=self._config.dkim.selector,
            domain=sender.rsplit("@", 1)[1],
            key_pem=self._dkim_key,
        )
