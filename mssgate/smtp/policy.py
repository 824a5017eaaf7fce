"""Who may send what to whom: the aiosmtpd handler hooks of our listeners.

Decisions read the directory at each call (no cache), so that a suspension or a new trust
entry made with the CLI applies to the next command without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import Envelope, Session
from cryptography import x509

from mssgate import audit, metrics
from mssgate.authresults import TlsInfo, authentication_results_field, remove_own_results
from mssgate.db.tx import write
from mssgate.directory import Directory
from mssgate.directory.models import AccountState, MailboxKind
from mssgate.dkim import DkimResult, dkim_sign, dkim_verify
from mssgate.documents import mss_headers
from mssgate.documents.limits import DocumentLimits
from mssgate.documents.signed import process_signed_message
from mssgate.errors import MssgateError, StorageError, ValidationFailed
from mssgate.headers import read_headers, sole_address
from mssgate.identifiers import normalize_address
from mssgate.ins import is_patient_mailbox_local_part
from mssgate.logs import event
from mssgate.patients import conversations, msgids
from mssgate.patients.conversations import (
    ConversationRefused,
    PatientMessage,
    PatientReply,
    Refusal,
)
from mssgate.returnpath import spooled_sender, strip_return_path
from mssgate.smime import SignatureVerdict, verify_signed_message
from mssgate.smime.crlfiles import CrlFiles
from mssgate.smime.gateway_sign import GatewaySigning, sign_for_sender
from mssgate.smime.rawmime import header_fields, join_fields, split_head_body
from mssgate.smtp import encryption, peer_trust, replies
from mssgate.smtp.body import MemoryBudget
from mssgate.smtp.encryption import EncryptionSettings
from mssgate.smtp.protocol import GatewayEnvelope, GatewaySMTP
from mssgate.smtp.replies import Reply
from mssgate.spool import Spool, new_queue_id
from mssgate.spool.store import Route

log = logging.getLogger("mssgate.smtp")

# The MSSanté headers of mail leaving for a peer need the XDM and CDA facts only: no PDF text
# (the one step no in-process check bounds in time), inside the SMTP transaction.
_HEADER_LIMITS = DocumentLimits(read_pdfs=False)

_RELAY_CHARS = frozenset('%!"[]:\\')
_OUR_MSS_FIELDS = frozenset({"x-mss-codecda", "x-mss-ins", "x-mss-nil"})


class Listener(StrEnum):
    SUBMISSION = "submission"
    SMTPS = "smtps"
    MTA = "mta"

    @property
    def for_clients(self) -> bool:
        return self is not Listener.MTA


@dataclass(frozen=True)
class PolicyLimits:
    max_recipients: int


@dataclass(frozen=True)
class TrustSettings:
    """What the DATA stage checks beyond the envelope (S/MIME, DKIM)."""

    require_signature: bool
    # Trust anchors of local practitioners' certificates (the `tls.ca` bundle).
    local_anchors: tuple[x509.Certificate, ...]
    # The CRL files, re-read when they change: ask `crls.current()` at each verification.
    crls: CrlFiles = field(default_factory=CrlFiles.empty)
    verify_dkim: bool = True
    dkim_dns: Callable[[str], bytes | None] | None = None
    patient_domain: str = "patient.mssante.fr"
    mss_nil: str = "1"
    # Test/demo INS OIDs count as INS (X-MSS-INS); a production gateway leaves this off.
    allow_test_ins: bool = False
    # Outgoing mail to peers is DKIM-signed with this key (PEM), d= the author's domain.
    dkim_selector: str = "mssgate"
    dkim_key_pem: bytes | None = None
    # S/MIME encryption policy: global default and the mailbox keys folder.
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)
    # Opens the practitioners' keys the gateway signs with for them; None: it signs nothing.
    key_encryption_key_file: Path | None = None


def _identity(session: Session) -> str | None:
    data: object = session.auth_data
    return data if isinstance(data, str) else None


def _peer_certificate(server: GatewaySMTP) -> x509.Certificate | None:
    obj = server.tls_object()
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def _clean_helo(name: str | None) -> str:
    # The HELO name goes into a header: keep it to the characters a host name may have.
    text = name or "unknown"
    return "".join(c if c.isalnum() or c in ".-_:[]" else "?" for c in text)[:100]


class SmtpPolicy:
    """Handler hooks for one listener (aiosmtpd calls handle_VERB)."""

    def __init__(
        self,
        *,
        listener: Listener,
        directory: Directory,
        spool: Spool,
        hostname: str,
        limits: PolicyLimits,
        trust: TrustSettings,
        on_accepted: Callable[[str], None],
        budget: MemoryBudget | None = None,
    ) -> None:
        self.listener = listener
        self._budget = budget if budget is not None else MemoryBudget(160 << 20)
        self._directory = directory
        self._spool = spool
        self._hostname = hostname
        self._limits = limits
        self._trust = trust
        self._on_accepted = on_accepted

    async def _reject(self, server: GatewaySMTP, stage: str, reply: Reply, **why: Any) -> str:
        event(log, "smtp.reject", listener=self.listener.value, peer=server.peer_ip,
              session=server.session_id, queue_id=server.queue_id, stage=stage,
              code=reply.code, status=reply.status, **why)  # fmt: skip
        metrics.message_rejected(self.listener.value, stage, reply.status)
        if stage == "DATA":
            # A refused message is as much an event of the trail as an accepted one.
            await asyncio.to_thread(self._audit_rejection, server, reply, why)
        return str(reply)

    def _audit_rejection(self, server: GatewaySMTP, reply: Reply, why: dict[str, Any]) -> None:
        envelope = server.envelope
        try:
            with write(self._directory.engine) as conn:
                audit.append(
                    conn,
                    actor=f"smtp:{self.listener.value}",
                    action="message.rejected",
                    subject=server.session_id,
                    detail={
                        "queue_id": server.queue_id,
                        "status": f"{reply.code} {reply.status}",
                        "sender": envelope.mail_from if envelope is not None else None,
                        "peer": server.peer_ip,
                        **{k: str(v) for k, v in why.items()},
                    },
                )
        except MssgateError:
            log.warning("audit of a rejection failed", exc_info=True)

    async def handle_EHLO(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # Advertise enhanced status codes (RFC 2034) and DSN (RFC 3461: NOTIFY, ORCPT, RET,
        # ENVID, read by GatewaySMTP) before the final line.
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", "250-DSN", responses[-1]]

    # ------------------------------------------------------------------ MAIL
    async def handle_MAIL(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        # The transaction's id from its first command, so that every line about it (a refused
        # MAIL included) and the 250s name it; a new MAIL after RSET or DATA gets a new one.
        queue_id = new_queue_id()
        if isinstance(envelope, GatewayEnvelope):
            envelope.queue_id = queue_id
        if self.listener.for_clients:
            reply = self._client_sender(session, address)
        else:
            reply = await asyncio.to_thread(self._peer_sender, server, address)
        if not reply.ok:
            refusal = await self._reject(server, "MAIL", reply)
            if isinstance(envelope, GatewayEnvelope):
                envelope.queue_id = None
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(replies.sender_ok(queue_id))

    def _client_sender(self, session: Session, address: str) -> Reply:
        identity = _identity(session)
        if identity is None:
            return replies.AUTH_REQUIRED
        if address in ("", "<>"):
            return replies.NULL_SENDER_REFUSED
        try:
            sender = normalize_address(address)
        except ValidationFailed:
            return replies.SENDER_NOT_IDENTITY
        return replies.SENDER_OK if sender == identity else replies.SENDER_NOT_IDENTITY

    def _peer_sender(self, server: GatewaySMTP, address: str) -> Reply:
        cert = _peer_certificate(server)
        if cert is None:
            return replies.PEER_CERT_REQUIRED
        peers = self._directory.domains.trusted_peers()
        presented = peer_trust.presented_chain(server.tls_object())
        if address in ("", "<>"):
            # A bounce or a receipt: it must come from one of our peers (domains sharing a CA
            # and an operator DN are one check).
            distinct = {peer for peer in peers.values() if peer.ca_pem}
            if any(peer_trust.refusal(cert, peer, presented) is None for peer in distinct):
                return replies.SENDER_OK
            return self._peer_refused(server, "<>", cert, "no trusted operator's certificate")
        try:
            sender = normalize_address(address)
        except ValidationFailed:
            return replies.BAD_ADDRESS
        domain = sender.rsplit("@", 1)[1]
        if domain not in peers:
            return replies.SENDER_DOMAIN_UNTRUSTED
        reason = peer_trust.refusal(cert, peers[domain], presented)
        if reason is not None:
            return self._peer_refused(server, sender, cert, reason)
        return replies.SENDER_OK

    def _peer_author(
        self, server: GatewaySMTP, envelope: Envelope, headers: Any
    ) -> tuple[Reply | None, dict[str, str]]:
        """Whether the peer may put this From: on our users' screens; (refusal, why).

        MAIL FROM checked the envelope sender's domain against the certificate; the author
        is what readers (and the S/MIME check, which trusts the author domain's CA) go by, so
        it is bound to the same operator: one domain for both, mapped by the trust list to
        the certificate presented. A null sender (a peer's DSN or MDN) has only its From: to
        check. Read again here, so that an untrust since MAIL applies.
        """
        author = _author(headers.get_all("From") or [])
        if author is None:
            return replies.FROM_REQUIRED, {}
        domain = author.rsplit("@", 1)[1]
        why = {"author_domain": domain}
        if envelope.mail_from not in (None, "", "<>"):
            sender = _normal_or_none(envelope.mail_from)
            sender_domain = sender.rsplit("@", 1)[1] if sender is not None else "?"
            if sender_domain != domain:
                return replies.AUTHOR_NOT_SENDER_DOMAIN, why | {"sender_domain": sender_domain}
        cert = _peer_certificate(server)
        peer = self._directory.domains.trusted_peers().get(domain)
        if cert is None or peer is None:
            return replies.AUTHOR_DOMAIN_UNTRUSTED, why
        reason = peer_trust.refusal(cert, peer, peer_trust.presented_chain(server.tls_object()))
        if reason is not None:
            return replies.AUTHOR_NOT_PEER, why | {
                "reason": reason,
                "certificate": cert.subject.rfc4514_string(),
            }
        return None, why

    def _peer_refused(
        self, server: GatewaySMTP, sender: str, cert: x509.Certificate, reason: str
    ) -> Reply:
        """A peer's certificate that may not speak for the sender: why, in the log and the
        audit trail (the client only reads that it is not the sender's operator's)."""
        reply = replies.PEER_CERT_MISMATCH
        why: dict[str, Any] = {
            "check": "peer-certificate",
            "reason": reason,
            "sender": sender,
            "certificate": cert.subject.rfc4514_string(),
        }
        event(log, "smtp.peer_refused", listener=self.listener.value, peer=server.peer_ip,
              session=server.session_id, queue_id=server.queue_id, **why)  # fmt: skip
        self._audit_rejection(server, reply, why)
        return reply

    # ------------------------------------------------------------------ RCPT
    async def handle_RCPT(
        self,
        server: GatewaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self._limits.max_recipients:
            return await self._reject(server, "RCPT", replies.TOO_MANY_RECIPIENTS)
        reply, normal = await asyncio.to_thread(self._recipient, address)
        if not reply.ok or normal is None:
            return await self._reject(server, "RCPT", reply)
        if normal not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(normal)
        envelope.rcpt_options.extend(options)
        return str(replies.recipient_ok(server.queue_id))

    def _recipient(self, address: str) -> tuple[Reply, str | None]:
        local, at, _ = address.rpartition("@")
        if not at or not local or set(address) & _RELAY_CHARS or "@" in local:
            # Unqualified, IP literal, percent hack, bang path, quoted local part: the old
            # ways to make a server relay. None of them is ours.
            return replies.RELAY_DENIED, None
        try:
            normal = normalize_address(address)
        except ValidationFailed:
            return replies.BAD_ADDRESS, None
        domain = normal.rsplit("@", 1)[1]
        if domain == self._trust.patient_domain and not is_patient_mailbox_local_part(
            normal.rsplit("@", 1)[0]
        ):
            return replies.BAD_PATIENT_MAILBOX, None
        if domain not in self._directory.domains.local_names():
            # Practitioners may write to a trusted peer operator's domain; peers may not use
            # us to reach a third party (never an open relay).
            if self.listener.for_clients and self._directory.domains.peer_ca_pem(domain):
                refusal = encryption.recipient_refusal(
                    self._directory, normal, domain, self._trust.encryption
                )
                return (refusal, None) if refusal is not None else (replies.RECIPIENT_OK, normal)
            if self.listener.for_clients:
                return replies.domain_not_trusted(domain), None
            return replies.not_a_local_domain(domain), None
        found = self._directory.professionals.find(normal)
        if found is None or not found.local:
            return replies.NO_SUCH_USER, None
        if found.state is not AccountState.ACTIVE:
            return replies.MAILBOX_DISABLED, None
        return replies.RECIPIENT_OK, normal

    # ------------------------------------------------------------------ DATA
    async def handle_DATA(self, server: GatewaySMTP, session: Session, envelope: Envelope) -> str:
        body = server.body
        assert body is not None
        async with self._budget.reserve(body.size):
            content = await asyncio.to_thread(body.read) if body.spilled else body.read()
            body.close()  # its memory or file is no longer needed: `content` has it all
            return await self._check_and_spool(server, session, envelope, content)

    async def _check_and_spool(
        self, server: GatewaySMTP, session: Session, envelope: Envelope, content: bytes
    ) -> str:
        headers = read_headers(content)
        if headers.defects:
            return await self._reject(server, "DATA", replies.MALFORMED_HEADERS)
        identity = _identity(session)
        patient_reply: PatientReply | None = None
        if not self.listener.for_clients:
            refusal, why = await asyncio.to_thread(self._peer_author, server, envelope, headers)
            if refusal is not None:
                return await self._reject(server, "DATA", refusal, check="peer-author", **why)
            # A patient's message: headers are needed, hence here (after DATA), before anything
            # is spooled; the peer's certificate was bound to the author's domain just above.
            # Checked again in the spool's transaction (a FIN accepted meanwhile ends it).
            refused, patient_reply = await asyncio.to_thread(self._patient_reply, envelope, headers)
            if refused is not None:
                return await self._reject(
                    server, "DATA", refused, check="patient-conversation", reason=refused.text
                )
        if self.listener.for_clients and (
            identity is None or _author(headers.get_all("From") or []) != identity
        ):
            return await self._reject(server, "DATA", replies.FROM_NOT_IDENTITY)
        patients: list[PatientMessage] = []
        if identity is not None:
            patients, refused = await asyncio.to_thread(
                self._to_patients, envelope, headers, identity
            )
            if refused is not None:
                return await self._reject(
                    server, "DATA", refused, check="patient-conversation", reason=refused.text
                )
        content = remove_own_results(content, self._hostname)
        signing = await self._sign_for_user(server, content, identity)
        if signing.reply is not None:
            return await self._reject(
                server, "DATA", signing.reply, check="smime", reason=signing.reason
            )
        content = signing.content
        crypt = await asyncio.to_thread(
            self._encryption, content, envelope, headers, server, identity
        )
        if crypt.reply is not None:
            return await self._reject(
                server, "DATA", crypt.reply, check="encryption", reason=crypt.reason
            )
        # DKIM signed what crossed the wire: the ciphertext, when it is decrypted here.
        received, content = content, crypt.content
        verdict: SignatureVerdict | None = None
        if self._trust.require_signature and crypt.verify_signature:
            anchors, registered, problem = await asyncio.to_thread(
                self._signer_expectations, headers.get_all("From") or [], identity
            )
            if problem is not None:
                return await self._reject(server, "DATA", problem, check="smime")
            verdict = await asyncio.to_thread(
                verify_signed_message,
                content,
                trust_anchors=anchors,
                registered=registered,
                crls=self._trust.crls.current(),
            )
            metrics.smime("pass" if verdict.ok else str(verdict.reason))
            if verdict.ok and signing.signed:
                verdict = dataclasses.replace(verdict, signed_by_gateway=True)
            if not verdict.ok:
                assert verdict.reply is not None and verdict.reason is not None
                line = verdict.reply
                reply = Reply(line.code, line.enhanced, line.text)
                return await self._reject(
                    server, "DATA", reply, check="smime", reason=verdict.reason.value,
                    signer=verdict.signer_fingerprint,
                )  # fmt: skip
            if crypt.open_after_verification and verdict.content is not None:
                opened = await asyncio.to_thread(
                    encryption.open_verified,
                    content,
                    verdict.content,
                    crypt.open_after_verification,
                )
                if opened.reply is not None:
                    return await self._reject(
                        server, "DATA", opened.reply, check="encryption", reason=opened.reason
                    )
                event(log, "smime.encrypted_in", listener=self.listener.value,
                      session=server.session_id, queue_id=server.queue_id, decrypted=True,
                      reason="encrypt-then-sign")  # fmt: skip
                content = opened.content
            if crypt.reencrypt_to:
                # Verified inside; sealed again for the persons it was opened for.
                content = await asyncio.to_thread(encryption.reencrypt, content, crypt)
        elif crypt.sealed:
            metrics.smime("sealed")
        dkim_result: DkimResult | None = None
        if not self.listener.for_clients and self._trust.verify_dkim:
            dkim_result = await asyncio.to_thread(self._dkim, received)
        obj = server.tls_object()
        tls = TlsInfo(
            version=obj.version() if obj is not None else None,
            cipher=(obj.cipher() or (None,))[0] if obj is not None else None,
            client_certificate_verified=_peer_certificate(server) is not None,
        )
        results = authentication_results_field(
            self._hostname, smime=verdict, dkim=dkim_result, auth_identity=identity, tls=tls,
            smime_sealed=crypt.sealed,
        )  # fmt: skip
        queue_id = server.queue_id or new_queue_id()  # set by MAIL; the fallback is for safety
        # A Return-Path that came with the message is the sender's claim, not the envelope:
        # cut it here (RFC 5321 §4.4); the mail store writes the envelope sender's at delivery.
        message = (
            self._trace_header(server, session, envelope, queue_id)
            + results
            + strip_return_path(content)
        )
        locals_ = await asyncio.to_thread(self._directory.domains.local_names)
        recipients: list[tuple[str, Route]] = [
            (r, "local" if r.rsplit("@", 1)[1] in locals_ else "relay") for r in envelope.rcpt_tos
        ]
        if identity is not None and any(route == "relay" for _, route in recipients):
            ends = any(p.ends_conversation for p in patients)
            message = await asyncio.to_thread(self._outgoing, message, identity, ends)
        try:
            await asyncio.to_thread(
                self._spool.accept,
                queue_id=queue_id,
                content=message,
                listener=self.listener.value,
                sender=spooled_sender(envelope.mail_from),
                identity=identity,
                peer=server.peer_ip,
                recipients=recipients,
                dsn=envelope.dsn if isinstance(envelope, GatewayEnvelope) else None,
                rcpt_dsn=envelope.rcpt_dsn if isinstance(envelope, GatewayEnvelope) else None,
                patients=patients,
                patient_reply=patient_reply,
            )
        except ConversationRefused as exc:
            refused = _patient_refused(exc.refusal)
            return await self._reject(
                server, "DATA", refused, check="patient-conversation", reason=refused.text
            )
        except (StorageError, OSError) as exc:
            event(log, "smtp.spool_failed", level=logging.ERROR, listener=self.listener.value,
                  peer=server.peer_ip, session=server.session_id, queue_id=queue_id,
                  error=str(exc))  # fmt: skip
            return str(replies.TEMPORARY_FAILURE)
        event(log, "smtp.accept", listener=self.listener.value, peer=server.peer_ip,
              session=server.session_id, queue_id=queue_id, size=len(message),
              recipients=len(recipients))  # fmt: skip
        metrics.message_accepted(self.listener.value)
        self._on_accepted(queue_id)
        return str(replies.queued(queue_id))

    async def _sign_for_user(
        self, server: GatewaySMTP, content: bytes, identity: str | None
    ) -> GatewaySigning:
        """The submission signed with its sender's key held here, when the sender's domain
        asks for it (mssgate.smime.gateway_sign); only where signatures are required."""
        kek_file = self._trust.key_encryption_key_file
        if (
            not self.listener.for_clients
            or identity is None
            or not self._trust.require_signature
            or kek_file is None
        ):
            return GatewaySigning(content)
        signing = await asyncio.to_thread(
            sign_for_sender,
            content,
            identity=identity,
            engine=self._directory.engine,
            kek_file=kek_file,
        )
        if signing.signed:
            event(log, "smime.signed_for_user", listener=self.listener.value,
                  session=server.session_id, queue_id=server.queue_id)  # fmt: skip
        return signing

    def _encryption(
        self,
        content: bytes,
        envelope: Envelope,
        headers: Any,
        server: GatewaySMTP,
        identity: str | None,
    ) -> encryption.IncomingDecision:
        decision = encryption.incoming(
            content,
            recipients=list(envelope.rcpt_tos),
            froms=[str(f) for f in headers.get_all("From") or []],
            directory=self._directory,
            settings=self._trust.encryption,
            require_signature=self._trust.require_signature,
            for_clients=self.listener.for_clients,
            peer_certificate=None if self.listener.for_clients else _peer_certificate(server),
            null_sender=envelope.mail_from in ("", "<>"),
            sender=identity if self.listener.for_clients else None,
            kek_file=self._trust.key_encryption_key_file,
            crls=self._trust.crls.current(),
        )
        if decision.decrypted_for is not None or decision.reason in (
            "peer-encrypted",
            "sealed-for-recipients",
        ):
            event(log, "smime.encrypted_in", listener=self.listener.value,
                  session=server.session_id, queue_id=server.queue_id,
                  decrypted=decision.decrypted_for is not None, reason=decision.reason)  # fmt: skip
        return decision

    def _signer_expectations(
        self, froms: list[Any], identity: str | None
    ) -> tuple[list[x509.Certificate], list[x509.Certificate] | None, Reply | None]:
        """Trust anchors and registered certificates the signature must match.

        A local practitioner signs with a certificate registered for them in the directory,
        chaining to our trust anchors. A peer's sender is registered at their operator: the
        signature must chain to the CA configured for that domain on the trust list.
        """
        if self.listener.for_clients:
            assert identity is not None  # the From check ran before
            pems = self._directory.certificates.registered_pems(identity)
            registered = [x509.load_pem_x509_certificate(p.encode()) for p in pems]
            return list(self._trust.local_anchors), registered, None
        author = _author(froms)
        if author is None:
            return [], None, replies.FROM_REQUIRED
        pem = self._directory.domains.peer_ca_pem(author.rsplit("@", 1)[1])
        if pem is None:
            return [], None, replies.AUTHOR_DOMAIN_UNTRUSTED
        # The whole bundle given to `domain trust --ca`: roots and intermediates alike.
        return x509.load_pem_x509_certificates(pem.encode()), None, None

    def _outgoing(self, message: bytes, identity: str, ends_conversation: bool = False) -> bytes:
        """What leaves for another operator: the MSSanté headers, then the DKIM signature
        over them. X-MSS-CODECDA and X-MSS-INS describe the CDA documents of an XDM (read
        from the message itself, never from the client's own X-MSS fields, which are
        replaced); X-MSS-NIL goes on every message; X-MSS-MES (the patient's "no reply")
        passes through untouched, except that a message to a patient that ends the
        conversation carries it as one `X-MSS-MES: FIN`, however the client wrote it (what
        we recorded is what the patient's operator reads)."""
        result = process_signed_message(
            message, limits=_HEADER_LIMITS, allow_test_oids=self._trust.allow_test_ins
        )
        fields = {"X-MSS-NIL": self._trust.mss_nil, **mss_headers(result)}
        ours = _OUR_MSS_FIELDS
        if ends_conversation:
            fields["X-MSS-MES"] = conversations.END_VALUE
            ours = ours | {"x-mss-mes"}
        head, separator, body = split_head_body(message)
        kept = [f for f in header_fields(head) if f.name not in ours]
        added = "".join(f"{name}: {value}\r\n" for name, value in fields.items()).encode()
        message = added + join_fields(kept) + separator + body
        return self._dkim_sign(message, identity)

    def _patient_reply(
        self, envelope: Envelope, headers: Any
    ) -> tuple[Reply | None, PatientReply | None]:
        """A message from the patient domain (MTA listener): (None, the reply to check again
        at the spool's commit) to accept it, else (the refusal, None). A patient may only
        reply within a conversation a professional started and has not ended
        (mssgate.patients.conversations). The patient operator's own notices (null sender,
        an author that is not an INS: a DSN) are not patients' messages."""
        domain = self._trust.patient_domain
        author = _author(headers.get_all("From") or [])
        sender = envelope.mail_from
        null_sender = sender in (None, "", "<>")
        if author is None or not conversations.at_patient_domain(author, domain):
            return None, None  # _peer_author bound the envelope sender's domain to the author's
        ins = conversations.patient_ins(author, domain)
        if ins is None:
            return (None if null_sender else _patient_refused(Refusal.AUTHOR_NOT_PATIENT)), None
        if not null_sender and _normal_or_none(sender or "") != author:
            return _patient_refused(Refusal.SENDER_NOT_AUTHOR), None
        reply = PatientReply(
            ins,
            tuple(envelope.rcpt_tos),
            tuple(
                msgids.referenced(
                    [str(v) for v in headers.get_all("In-Reply-To") or []],
                    [str(v) for v in headers.get_all("References") or []],
                )
            ),
        )
        with self._directory.engine.connect() as conn:
            refusal = conversations.refusal_on(conn, reply)
        return (None, reply) if refusal is None else (_patient_refused(refusal), None)

    def _to_patients(
        self, envelope: Envelope, headers: Any, identity: str
    ) -> tuple[list[PatientMessage], Reply | None]:
        """A practitioner's (or application's) message: what to record for its patient
        recipients, or why it may not go to them. Only a professional mailbox hosted here,
        active, starts a conversation with a patient."""
        domain = self._trust.patient_domain
        if not any(conversations.patient_ins(r, domain) for r in envelope.rcpt_tos):
            return [], None
        found = self._directory.professionals.find(identity)
        if (
            found is None
            or not found.local
            or found.state is not AccountState.ACTIVE
            or found.kind not in (MailboxKind.PER, MailboxKind.ORG, MailboxKind.APP)
        ):
            return [], _patient_refused(Refusal.NOT_A_PROFESSIONAL)
        records, refusal = conversations.outgoing(
            recipients=list(envelope.rcpt_tos),
            sender=identity,
            message_id=msgids.message_id([str(v) for v in headers.get_all("Message-ID") or []]),
            mes_values=[str(v) for v in headers.get_all("X-MSS-MES") or []],
            patient_domain=domain,
        )
        return records, None if refusal is None else _patient_refused(refusal)

    def _dkim_sign(self, message: bytes, identity: str) -> bytes:
        if self._trust.dkim_key_pem is None:
            return message
        return dkim_sign(
            message,
            selector=self._trust.dkim_selector,
            domain=identity.rsplit("@", 1)[1],
            key_pem=self._trust.dkim_key_pem,
        )

    def _dkim(self, content: bytes) -> DkimResult:
        lookup = self._trust.dkim_dns or _no_dns
        return dkim_verify(content, dns_txt=lookup)

    def _trace_header(
        self, server: GatewaySMTP, session: Session, envelope: Envelope, queue_id: str
    ) -> bytes:
        obj = server.tls_object()
        tls = f" ({obj.version()}:{(obj.cipher() or ('?',))[0]})" if obj is not None else ""
        proto = "ESMTPSA" if session.authenticated else "ESMTPS" if obj is not None else "ESMTP"
        single = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        when = format_datetime(datetime.now(UTC))
        return (
            f"Received: from {_clean_helo(session.host_name)} ([{server.peer_ip}])\r\n"
            f"\tby {self._hostname} (mssgate) with {proto}{tls}\r\n"
            f"\tid {queue_id}{single}; {when}\r\n"
        ).encode("ascii", "replace")


def _patient_refused(refusal: Refusal) -> Reply:
    malformed = refusal in (Refusal.MESSAGE_ID_REQUIRED, Refusal.BAD_END_VALUE)
    return replies.patient_refused(refusal.value, malformed=malformed)


def _no_dns(_name: str) -> bytes | None:
    return None


def _normal_or_none(address: str) -> str | None:
    try:
        return normalize_address(address)
    except ValidationFailed:
        return None


def _author(froms: list[Any]) -> str | None:
    """The message's one From: address, normalised; None when there is not exactly one
    that the parser read whole."""
    address = sole_address(froms)
    return None if address is None else _normal_or_none(address)
