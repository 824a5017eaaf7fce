"""Table definitions (SQLAlchemy Core), the one description of the schema the code reads.

Migrations in `migrations/versions/` create the same tables; a test compares the two.
Types stay portable (no JSON column, no ARRAY) so that SQLite and PostgreSQL behave alike.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

professionals = Table(
    "professionals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(254), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("id_type", String(5)),
    Column("idnat", String(12)),
    Column("profession_code", String(16)),
    Column("kind", String(3), nullable=False),
    Column("state", String(9), nullable=False),
    # A local mailbox is hosted here; otherwise a known correspondent (from the Annuaire).
    Column("local", Boolean, nullable=False),
    Column("password_hash", String(200)),
    Column("source", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The node whose mail store holds the mailbox (its home); NULL for mailboxes made before
    # revision 0010 and for correspondents: no home chosen, delivered where they arrive.
    Column("node", String(63)),
    CheckConstraint("kind IN ('PER', 'ORG', 'APP')", name="ck_professionals_kind"),
    CheckConstraint("state IN ('active', 'suspended')", name="ck_professionals_state"),
    CheckConstraint("id_type IS NULL OR id_type IN ('RPPS', 'ADELI')", name="ck_prof_idtype"),
    # Hosted mailboxes per node (node list, the admin console) among a whole Annuaire of
    # correspondents (revision 0012).
    Index("ix_professionals_local_node", "local", "node"),
)

certificates = Table(
    "certificates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "professional_id",
        Integer,
        ForeignKey("professionals.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("fingerprint_sha256", String(64), nullable=False),
    Column("serial", String(64), nullable=False),
    Column("subject", Text, nullable=False),
    Column("issuer", Text, nullable=False),
    Column("not_before", DateTime(timezone=True), nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=False),
    Column("pem", Text, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("professional_id", "fingerprint_sha256", name="uq_certificates_prof_fp"),
)

domains = Table(
    "domains",
    metadata,
    Column("name", String(253), primary_key=True),
    Column("kind", String(7), nullable=False),
    Column("relay_host", String(253)),
    Column("relay_port", Integer),
    Column("ca_pem", Text),
    Column("operator_dn", Text),
    Column("added_at", DateTime(timezone=True), nullable=False),
    # S/MIME encryption policy of the domain; NULL: the global `policy.encryption`.
    Column("encryption", String(13)),
    # Content encryption towards a peer domain; NULL: AES-GCM.
    Column("cipher", String(7)),
    # Sign-then-encrypt for a person: 'accept' (NULL) delivers it still encrypted, 'verify'
    # opens it first with the person's key when the gateway holds it, 'refuse' refuses it.
    Column("signature_inside_encryption", String(6)),
    CheckConstraint("kind IN ('local', 'trusted')", name="ck_domains_kind"),
    CheckConstraint(
        "encryption IS NULL OR encryption IN ('required', 'opportunistic', 'off')",
        name="ck_domains_encryption",
    ),
    CheckConstraint("cipher IS NULL OR cipher IN ('aes-gcm', 'aes-cbc')", name="ck_domains_cipher"),
    CheckConstraint(
        "signature_inside_encryption IS NULL"
        " OR signature_inside_encryption IN ('accept', 'verify', 'refuse')",
        name="ck_domains_signature_inside_encryption",
    ),
)

consumers = Table(
    "consumers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("mailbox", String(254), nullable=False),
    # SHA-256 of a 256-bit random token: a slow hash adds nothing to that much entropy and
    # would cost every API call.
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("pgp_key", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    # The SHA-256 of the client certificate its MLLP connections present (mssgate.mllp).
    Column("mllp_cert_sha256", String(64)),
    # mllp://host:port its mailbox's queue is pushed to, and the CA (PEM) checking that server.
    Column("push_url", String(300)),
    Column("push_ca", Text),
    # The token `consumer token` replaced, still accepted until previous_token_until (its
    # grace, so that a RIS switches without downtime); then refused, and dropped at the next.
    Column("previous_token_sha256", String(64)),
    Column("previous_token_until", DateTime(timezone=True)),
    UniqueConstraint("mllp_cert_sha256", name="uq_consumers_mllp_cert"),
    Index("ix_consumers_previous_token", "previous_token_sha256", unique=True),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# One row (id = 1): the chain's head. Appenders update it first, which takes the write lock
# on SQLite and a row lock on PostgreSQL, so two appenders never fork the chain.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

# The durable spool: a message's bytes live in a file under the data folder; these rows say
# who it is for and how far each delivery went. A row exists only once the file is fsynced,
# and the SMTP 250 is sent only once the row is committed.
spool_messages = Table(
    "spool_messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("listener", String(16), nullable=False),
    Column("sender", String(254), nullable=False),
    Column("identity", String(254)),
    Column("peer", String(64)),
    Column("size", Integer, nullable=False),
    Column("state", String(8), nullable=False),
    CheckConstraint("state IN ('queued', 'done')", name="ck_spool_messages_state"),
    # The node whose data folder holds the file: only it delivers, relays, recovers the
    # entry. NULL: written before revision 0010; the node holding the file adopts it at
    # start (Spool.recover).
    Column("node", String(63)),
    Index("ix_spool_messages_node", "node", "state"),
    # RFC 3461 RET and ENVID (decoded) of MAIL FROM, revision 0018.
    Column("dsn_ret", String(4)),
    Column("dsn_envid", String(100)),
    # The admin console counts queued messages among every done one kept (revision 0012).
    Index("ix_spool_messages_state", "state"),
)

# The gateways sharing this database (docs/operator-guide.md, "Nodes"). A node's row is made
# by `init` or `node add`; `serve` stamps started_at at start and heartbeat_at every
# `node.heartbeat_seconds`.
nodes = Table(
    "nodes",
    metadata,
    Column("name", String(63), primary_key=True),
    # host:port other nodes use for node-to-node traffic.
    Column("address", String(300), nullable=False),
    # The data folder the node was last started from: two folders serving under one name
    # would each deliver the other's entries without their files.
    Column("data_dir", Text),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
)

spool_recipients = Table(
    "spool_recipients",
    metadata,
    Column(
        "spool_id",
        String(32),
        ForeignKey("spool_messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("recipient", String(254), primary_key=True),
    Column("route", String(8), nullable=False),
    Column("state", String(9), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # RFC 3461 NOTIFY ("SUCCESS,FAILURE") and ORCPT ("rfc822;xtext") of RCPT, revision 0018.
    Column("dsn_notify", String(32)),
    Column("dsn_orcpt", Text),
    CheckConstraint("route IN ('local', 'relay')", name="ck_spool_recipients_route"),
    Index("ix_spool_recipients_pending", "state", "next_attempt_at"),
    CheckConstraint(
        "state IN ('pending', 'delivered', 'failed', 'held')", name="ck_spool_recipients_state"
    ),
)

# Messages delivered to a mailbox that a RIS consumes, still to go through the document
# pipeline. The row is written in the transaction that records the delivery, and the spool
# keeps the message (and its file) until the row is done: the pipeline runs apart from
# delivery, in killable worker processes, and a crash in between repeats it (at least once;
# ingesting the same delivery twice changes nothing).
spool_documents = Table(
    "spool_documents",
    metadata,
    Column(
        "spool_id",
        String(32),
        ForeignKey("spool_messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("mailbox", String(254), primary_key=True),
    Column("state", String(7), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("state IN ('pending', 'done', 'held')", name="ck_spool_documents_state"),
    Index("ix_spool_documents_due", "state", "next_attempt_at"),
)

# The RIS integration queue. A document row is written once with its envelope and record;
# its bytes (and the HL7 MDM built at enqueue time) live in `queue_contents`, apart, so that
# leasing and listing never drag megabytes of blob through the database.
queue_documents = Table(
    "queue_documents",
    metadata,
    # Arrival order: the autoincrement key is the per-mailbox order consumers see.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    # One delivery of one document: (mailbox, spool entry, place in the message, bytes),
    # hashed. Only a replay of that delivery is the same row; a resend is a new one.
    Column("delivery_key", String(64), nullable=False),
    # The mailbox's earliest entry with the same bytes, when this one came in a new message.
    Column("duplicate_of", String(32)),
    Column("mailbox", String(254), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("sender", String(254), nullable=False),
    Column("message_id", Text),
    Column("subject", Text),
    Column("record", Text, nullable=False),
    # The original header block, kept for the MDN; `receipt_to` is set only when the sender
    # asked for one in a way we may honour automatically.
    Column("headers", Text, nullable=False),
    Column("receipt_to", String(254)),
    Column("encrypted", Boolean, nullable=False),
    Column("state", String(6), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("lease_id", String(32)),
    Column("lease_consumer", String(64)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("last_code", Integer),
    Column("last_reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        "state IN ('ready', 'leased', 'done', 'dead')", name="ck_queue_documents_state"
    ),
    Index("ix_queue_documents_claim", "mailbox", "state", "seq"),
    Index("ix_queue_documents_sha256", "mailbox", "sha256", "seq"),
    # The admin console counts ready and leased documents among the done ones (0012).
    Index("ix_queue_documents_state", "state"),
    UniqueConstraint("delivery_key", name="uq_queue_documents_delivery_key"),
    # The message the document came in (stored_messages); NULL before revision 0008 and for
    # a mailbox stored encrypted, whose MDM keeps its e-mail inside its own ciphertext.
    Column("message_ref", String(64)),
    # SHA-256 of the document's uniqueId (a hostile id of any length in a fixed-size key);
    # NULL for a withdrawal and without a uniqueId: who sent the mailbox the document a
    # withdrawal or replacement names (mssgate.queue.withdrawal, revision 0021).
    Column("unique_id_sha256", String(64)),
    Index("ix_queue_documents_unique_id", "mailbox", "unique_id_sha256"),
)

queue_contents = Table(
    "queue_contents",
    metadata,
    Column(
        "document_id",
        String(32),
        ForeignKey("queue_documents.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("content", LargeBinary, nullable=False),
    Column("hl7", LargeBinary, nullable=False),
    # Where the e-mail's base64 (OBX-2) goes back into `hl7` when it is read: the MDM is
    # stored without it, the message once in stored_messages. NULL: `hl7` is whole.
    Column("hl7_email_at", Integer),
)

# Each received message once per mailbox, however many documents and quarantined entries
# came out of it: they reference it (`message_ref`). Keyed by (mailbox, message digest,
# clear or sealed), so a replay finds its row; `content` is sealed for a RIS that registered
# an OpenPGP key when `encrypted`.
stored_messages = Table(
    "stored_messages",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("mailbox", String(254), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("encrypted", Boolean, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Documents the pipeline would not pass, held for an operator with the untouched bytes and
# the whole message they came in (so that `release` can run the pipeline again).
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(32), primary_key=True),
    # One row per (mailbox, message, place in the message, bytes): ingesting twice is a no-op.
    Column("dedup_key", String(64), nullable=False, unique=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("mailbox", String(254), nullable=False),
    Column("sender", String(254), nullable=False),
    Column("message_id", Text),
    Column("subject", Text),
    Column("code", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("origin", Text, nullable=False),
    Column("document", Text),
    Column("state", String(8), nullable=False),
    # NULL: the held bytes are the message itself (a message held whole).
    Column("content", LargeBinary),
    # Inline only in rows written before revision 0008; since, NULL and `message_ref` set.
    Column("message", LargeBinary),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("state IN ('held', 'released')", name="ck_quarantine_state"),
    CheckConstraint("code BETWEEN 900 AND 999", name="ck_quarantine_code"),
    Column("message_ref", String(64)),
    # The admin console pages through the entries newest first (keyset on both).
    Index("ix_quarantine_received", "received_at", "id"),
    # ...and counts the held entries among the released ones (revision 0012).
    Index("ix_quarantine_state", "state"),
)

# MDNs built when a RIS acks or gives up on a document; the mail side drains this table (or
# takes them from the callback) and signs and sends them.
receipts_outbox = Table(
    "receipts_outbox",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("document_id", String(32), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("recipient", String(254), nullable=False),
    Column("sender", String(254), nullable=False),
    Column("outcome", String(9), nullable=False),
    Column("mdn", LargeBinary, nullable=False),
    Column("state", String(7), nullable=False),
    Column("handed_at", DateTime(timezone=True)),
    CheckConstraint("state IN ('pending', 'handed')", name="ck_receipts_outbox_state"),
    CheckConstraint("outcome IN ('processed', 'error')", name="ck_receipts_outbox_outcome"),
)

# The admin console's bearer token (mssgate admin token): one row, the token's SHA-256 only,
# and the key that signs the console's session cookies; a new token replaces both, so the
# old token and every session opened with it stop working together.
admin_token = Table(
    "admin_token",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("token_sha256", String(64), nullable=False),
    Column("session_key", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("id = 1", name="ck_admin_token_one"),
)

# The document policy each `serve` runs with, published at its start (one row per node):
# `quarantine release` in the CLI applies the server's policy, not the CLI's own environment
# (mssgate/server_policy.py). JSON text, as every other structured value here.
server_policy = Table(
    "server_policy",
    metadata,
    Column("node", String(63), primary_key=True),
    Column("policy_json", Text, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False),
)

# Practitioners' S/MIME signing keys the gateway signs with for them (revision 0014): one
# per mailbox, the PKCS#8 key sealed with AES-256-GCM under the installation's key
# encryption key (`smime.key_encryption_key_file`, named by `kek_id`), never in clear here.
escrowed_keys = Table(
    "escrowed_keys",
    metadata,
    Column(
        "professional_id",
        Integer,
        ForeignKey("professionals.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("fingerprint_sha256", String(64), nullable=False),
    Column("cert_pem", Text, nullable=False),
    Column("kek_id", String(32), nullable=False),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
)

# Whether the gateway signs unsigned submissions for a local domain's users (revision
# 0014); no row: `missing`, the default.
domain_signing = Table(
    "domain_signing",
    metadata,
    Column("name", String(253), ForeignKey("domains.name", ondelete="CASCADE"), primary_key=True),
    Column("sign_for_users", String(7), nullable=False),
    CheckConstraint(
        "sign_for_users IN ('off', 'missing', 'always')", name="ck_domain_signing_mode"
    ),
)

# The hand-overs a home node took from other nodes (revision 0015, mssgate.handovers): the
# sending node's spool queue id and the recipient; a resend after a lost 250 (a timeout once
# the home node had spooled it) finds its row and is answered 250 without a second copy.
# Rows expire (handovers.REMEMBER).
node_handovers = Table(
    "node_handovers",
    metadata,
    Column("handover_id", String(64), primary_key=True),
    Column("recipient", String(320), primary_key=True),
    Column("queue_id", String(64), nullable=False),
    Column("accepted_at", DateTime(timezone=True), nullable=False),
    Index("ix_node_handovers_accepted_at", "accepted_at"),
)

# Messages a RIS sent through the gateway (mssgate.outbound, revision 0016): unique per
# consumer and MSH-10, so that a submission posted twice is sent once, on any node.
outbound_messages = Table(
    "outbound_messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("consumer_id", Integer, nullable=False),
    Column("control_id", String(64), nullable=False),
    Column("event", String(8), nullable=False),
    Column("sender", String(254), nullable=False),
    Column("unique_id", String(300)),
    Column("submitted_at", DateTime(timezone=True), nullable=False),
    # The ACK answered the first time, answered again to a repeat.
    Column("ack", Text, nullable=False),
    # A routing rule's forward: the envelope sender of the document it forwarded (0027).
    Column("origin_sender", Text),
    UniqueConstraint("consumer_id", "control_id", name="uq_outbound_consumer_control"),
    # A forward's "sent this document to this address already?" (revision 0026).
    Index("ix_outbound_messages_unique_id", "consumer_id", "unique_id"),
)

# One per recipient: the spool entry carrying its copy (its state is the status) and the
# copy's Message-ID (what a receipt names in Original-Message-ID).
outbound_recipients = Table(
    "outbound_recipients",
    metadata,
    Column(
        "outbound_id",
        String(32),
        ForeignKey("outbound_messages.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("recipient", String(254), primary_key=True),
    Column("spool_id", String(32), nullable=False),
    Column("message_id", String(300), nullable=False),
    # The recipient's read receipt (MDN), revision 0017.
    Column("read_at", DateTime(timezone=True)),
    Column("disposition", String(200)),
    # What a DSN from the recipient's domain reported (Action delivered or failed, its
    # Status and Diagnostic-Code), revision 0018.
    Column("dsn_action", String(16)),
    Column("dsn_status", String(16)),
    Column("dsn_detail", String(400)),
    Column("dsn_at", DateTime(timezone=True)),
    Index("ix_outbound_recipients_message_id", "message_id"),
    # Its ZAM^Z02 is in outbound_acks (revision 0020): the sweeper looks only at copies
    # without one, the few in flight, not at every copy ever sent.
    Column("reception_zam", Boolean, nullable=False, server_default=false()),
    Index("ix_outbound_recipients_reception_zam", "reception_zam"),
)

# The business acknowledgements (ZAM) of outbound messages, each once, leasable by the
# consumer that sent the message (POST /v1/leases?kind=ack, mssgate.outbound.zamqueue).
# `id` is the ZAM's MSH-10: unique, so that a ZAM made twice (two sweepers, a sweeper and
# a read receipt) is one item.
outbound_acks = Table(
    "outbound_acks",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False),
    Column(
        "outbound_id",
        String(32),
        ForeignKey("outbound_messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("consumer_id", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("trigger", String(3), nullable=False),
    Column("recipient", String(254), nullable=False),
    Column("accepted", Boolean, nullable=False),
    Column("er7", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state", String(6), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("lease_id", String(32)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("state IN ('ready', 'leased', 'done')", name="ck_outbound_acks_state"),
    CheckConstraint("trigger IN ('Z02', 'Z03')", name="ck_outbound_acks_trigger"),
    UniqueConstraint("id", name="uq_outbound_acks_id"),
    Index("ix_outbound_acks_claim", "consumer_id", "state", "seq"),
    Index("ix_outbound_acks_outbound", "outbound_id", "position", "trigger"),
)

# Routing rules written with `mssgate route add` (mssgate.routing.store); the configuration's
# `[[routing.rule]]` are not stored. `rule` is the rule's JSON (match, actions); `position`
# its order (lower first, then by name). Read at each ingest, so a change applies to the next
# message on every node without a restart (revision 0023).
routing_rules = Table(
    "routing_rules",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("rule", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The labels routing rules put on queued documents (`tag`), one row each, so that a consumer
# leases only the documents with one (POST /v1/leases?tag=...); the record shows them too.
queue_document_tags = Table(
    "queue_document_tags",
    metadata,
    Column(
        "document_id",
        String(32),
        ForeignKey("queue_documents.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("tag", String(64), primary_key=True),
)

# Each message this gateway accepted for a patient's mailbox (`<INS>@patient.mssante.fr`):
# its Message-ID, the patient's INS and the professional mailbox that sent it, written in the
# spool's acceptance transaction (mssgate.patients.conversations). A patient's reply must
# name one of these ids sent to the same INS by the mailbox it answers; the pair's latest
# row says whether the professional ended the conversation (X-MSS-MES: FIN) (revision 0024).
patient_messages = Table(
    "patient_messages",
    metadata,
    # Order of acceptance: the pair's latest message decides whether it is ended.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(255), nullable=False),
    Column("ins", String(15), nullable=False),
    Column("mailbox", String(254), nullable=False),
    Column("spool_id", String(32), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("ends_conversation", Boolean, nullable=False),
    Index("ix_patient_messages_reply", "ins", "message_id"),
    Index("ix_patient_messages_pair", "ins", "mailbox", "seq"),
)

# The second readings (L2) of breast-cancer screening under way (mssgate.screening): one row
# per CANCER-D2LM interpretation form the d2lm preset sent to a CRCDC, closed when the CRCDC
# sends the L2 result for the same form (same setId, or a relatedDocument naming it). Only
# what the deadline and the L2 result's routing need; the form itself stays in the queue
# (revision 0025).
screening_cases = Table(
    "screening_cases",
    metadata,
    Column("id", String(32), primary_key=True),
    # The mailbox the L1 form came to (whose consumer sees the case), and its queue entry.
    Column("mailbox", String(254), nullable=False),
    Column("queue_document_id", String(32), nullable=False),
    Column("document_id", String(200), nullable=False),
    Column("set_id", String(200)),
    Column("ins", String(64)),
    Column("ins_oid", String(64)),
    # The mammogram's date (the form's; the day it was received when the form gives none).
    Column("exam_date", Date, nullable=False),
    Column("exam_date_known", Boolean, nullable=False),
    Column("departement", String(3)),
    Column("crcdc", String(254), nullable=False),
    Column("l1_rpps", String(200)),
    Column("l1_email", String(200)),
    Column("gp_rpps", String(200)),
    Column("gp_email", String(200)),
    Column("state", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    # The L2 result that closed it: its queue entry and its CDA id.
    Column("result_queue_document_id", String(32)),
    Column("result_document_id", String(200)),
    UniqueConstraint("mailbox", "document_id", name="uq_screening_cases_form"),
    Index("ix_screening_cases_open", "state", "exam_date"),
    Index("ix_screening_cases_set", "crcdc", "set_id"),
)
