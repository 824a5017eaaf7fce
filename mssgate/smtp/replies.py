"""SMTP replies with RFC 3463 enhanced status codes, and the ones our policy sends.

Texts are client-safe: they say what class of thing went wrong, never which internal check,
file, policy value or patient datum was involved (those go to the log and the audit trail).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400


# Default enhanced status per basic code, for replies aiosmtpd builds without one.
_DEFAULT_STATUS = {
    211: "2.0.0", 214: "2.0.0", 221: "2.0.0", 235: "2.7.0", 250: "2.0.0", 251: "2.1.5",
    252: "2.5.0", 421: "4.3.0", 450: "4.2.0", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0",
    534: "5.7.9", 535: "5.7.8", 538: "5.7.11", 550: "5.0.0", 551: "5.1.6", 552: "5.3.4",
    553: "5.1.3", 554: "5.0.0", 555: "5.5.4",
}  # fmt: skip
_HAS_STATUS = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


def with_enhanced_status(line: bytes) -> bytes:
    """Adds the default enhanced status to a final reply that lacks one (RFC 2034 §3)."""
    if len(line) < 4 or _HAS_STATUS.match(line) or not line[:3].isdigit():
        return line
    code = int(line[:3])
    status = _DEFAULT_STATUS.get(code)
    if status is None or line[3:4] not in (b" ", b"-"):
        return line
    # aiosmtpd's "Error: " prefix tells a client nothing the code does not.
    text = line[4:].removeprefix(b"Error: ")
    return line[:4] + status.encode() + b" " + text


OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
TLS_ALREADY_ACTIVE = Reply(554, "5.5.1", "TLS already active")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address, try later")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands before authentication, closing")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
BARE_NEWLINE_COMMAND = Reply(
    500, "5.5.2", "Bare CR or LF in command line (RFC 5321 2.3.8), closing"
)
COMMAND_TOO_LONG = Reply(500, "5.5.6", "Command line too long")
SENDER_NOT_IDENTITY = Reply(553, "5.7.1", "Sender address must be the address you authenticated as")
FROM_NOT_IDENTITY = Reply(
    553, "5.7.1", "From: header must hold exactly one address, the one you authenticated as"
)
NULL_SENDER_REFUSED = Reply(553, "5.7.1", "Null sender not accepted from clients")
ACCOUNT_DISABLED = Reply(535, "5.7.8", "Authentication credentials invalid")
SENDER_DOMAIN_UNTRUSTED = Reply(550, "5.7.1", "Sender domain is not on the trust list")
PEER_CERT_MISMATCH = Reply(
    550, "5.7.1", "Your certificate does not belong to the sender's operator"
)
PEER_CERT_REQUIRED = Reply(530, "5.7.0", "A client certificate is required")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
NO_SUCH_USER = Reply(550, "5.1.1", "No such mailbox here")
MAILBOX_DISABLED = Reply(550, "5.2.1", "Mailbox disabled")
BAD_ADDRESS = Reply(553, "5.1.3", "Bad address syntax")
BAD_PATIENT_MAILBOX = Reply(
    553, "5.1.3", "A patient mailbox address must be an INS (15 characters) whose key checks"
)
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
LINE_TOO_LONG = Reply(550, "5.6.0", "Message has a line longer than allowed (RFC 5322 2.1.1)")
BARE_NEWLINE_DATA = Reply(
    550, "5.6.0", "Bare CR or LF in message data is not allowed (RFC 5321 2.3.8), closing"
)
FROM_REQUIRED = Reply(550, "5.7.1", "Message must have exactly one From: address")
AUTHOR_DOMAIN_UNTRUSTED = Reply(550, "5.7.1", "Author domain is not on the trust list")
AUTHOR_NOT_SENDER_DOMAIN = Reply(
    550, "5.7.1", "The From: domain must be the envelope sender's domain"
)
AUTHOR_NOT_PEER = Reply(
    550, "5.7.1", "Your certificate does not belong to the From: domain's operator"
)
MALFORMED_HEADERS = Reply(550, "5.6.0", "Message headers are malformed")
TEMPORARY_FAILURE = Reply(451, "4.3.0", "Temporary failure, please try again later")
# S/MIME encryption policy (docs/smime.md, "Encryption policy"). 5.7.1: the policy refuses;
# 5.7.5: a key the check needs is not ours, or decryption failed (RFC 3463).
ENCRYPTION_REQUIRED = Reply(
    550, "5.7.1", "Message refused: the recipient's domain accepts only S/MIME-encrypted messages"
)
RECIPIENT_CERTIFICATE_MISSING = Reply(
    550,
    "5.7.1",
    "The recipient's domain requires encryption and no certificate is registered for"
    " this recipient",
)
SIGNATURE_INSIDE_ENCRYPTION = Reply(
    550,
    "5.7.5",
    "Message refused: its signature is inside the encryption, where the gateway cannot check"
    " it; sign the encrypted message (encrypt, then sign) or send it signed and unencrypted",
)
ENCRYPTED_TO_OTHERS = Reply(
    550,
    "5.7.1",
    "Message refused: it must be encrypted to the registered certificate of each of its"
    " recipients (and may be to yours), and to no other key",
)
ENCRYPTION_UNREADABLE = Reply(
    554, "5.7.5", "Message refused: the recipients of its S/MIME encryption cannot be read"
)
# An unsigned submission from a user whose domain lets the gateway sign for its users, but
# who has no key held here: the reply says how to get one (docs/smime.md).
NO_SIGNING_KEY = Reply(
    550,
    "5.7.1",
    "Message refused: an S/MIME signature is required and the gateway holds no signing key"
    " for you: ask your administrator to issue one (mssgate cert issue) or to import your"
    " .p12 (mssgate cert import), or sign with your mail client",
)
# The key is held but this node cannot open it (its key encryption key file): ours to fix.
SIGNING_UNAVAILABLE = Reply(451, "4.3.5", "Try again later: the gateway cannot sign for you now")
CANNOT_DECRYPT = Reply(
    554, "5.7.5", "Message refused: the gateway cannot decrypt it for the application mailbox"
)
CBC_NEEDS_SIGNATURE = Reply(
    554,
    "5.7.5",
    "Message refused: AES-CBC encryption is accepted only around signed content; use AES-GCM",
)
ENCRYPTED_MIXED_RECIPIENTS = Reply(
    550,
    "5.7.1",
    "Message refused: encrypted mail for an application mailbox must have no other kind of"
    " recipient; send it separately",
)


def patient_refused(reason: str, *, malformed: bool = False) -> Reply:
    """A message to or from a patient's mailbox that the conversation rules refuse (5.7.1),
    or whose fields for them cannot be read (5.6.0) (mssgate.patients.conversations)."""
    return Reply(550, "5.6.0" if malformed else "5.7.1", f"Message refused: {reason}")


def sender_ok(queue_id: str) -> Reply:
    return Reply(250, "2.1.0", f"Sender OK, queue id {queue_id}")


def domain_not_trusted(domain: str) -> Reply:
    """To a practitioner writing to a domain off the trust list: the list is the national
    one, public, so naming the domain tells nothing a client may not know, and tells the
    sender what to check (the address, or the operator's `domain import-trust-list`)."""
    return Reply(550, "5.7.1", f"Relaying denied: domain {domain} is not on the trust list")


def not_a_local_domain(domain: str) -> Reply:
    """To a peer gateway: it may only deliver to our own domains, trust list or not."""
    return Reply(550, "5.7.1", f"Relaying denied: {domain} is not a domain of this gateway")


def recipient_ok(queue_id: str | None) -> Reply:
    if queue_id is None:
        return RECIPIENT_OK
    return Reply(250, "2.1.5", f"Recipient OK, queue id {queue_id}")


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")
