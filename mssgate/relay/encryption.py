"""S/MIME encryption of what the relay sends to a peer domain (docs/smime.md).

Per peer domain, its policy (or the global `policy.encryption`):
- `off`: sent as it is;
- `opportunistic`: encrypted to each recipient whose certificate the directory holds, sent as
  it is to the others;
- `required`: encrypted to each recipient, and a recipient without a certificate is not sent
  to (permanent failure, DSN). RCPT refuses such recipients already; this catches a
  certificate that expired or was removed while the message waited.
A message that is already encrypted (by its author, or signed around an encrypted entity) is
never encrypted again.

Encryption happens here, when the message leaves, rather than at DATA: one spooled message can
go to local mailboxes (in clear, they are ours) and to several peer domains with different
policies. Each recipient gets a copy encrypted to them alone, in its own transaction: the
copies differ, and the peer can then decrypt for an application mailbox without the message
also naming recipients it holds no key for. The client's signature is inside (the signed
entity is what is encrypted). The DKIM signature made at DATA covered the clear message, so it
is removed and made again over what leaves: DKIM signs the ciphertext, after encryption.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509

from mssgate.directory import Directory
from mssgate.directory.domains import effective_policy
from mssgate.directory.models import Cipher, EncryptionPolicy
from mssgate.dkim import dkim_sign
from mssgate.logs import event
from mssgate.smime import EncryptionError, EncryptionMode, encrypt
from mssgate.smime.layers import layering
from mssgate.smime.rawmime import header_fields, join_fields, split_head_body

log = logging.getLogger("mssgate.relay")

_TAG = re.compile(rb"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Batch:
    """One transaction: these recipients get this content."""

    recipients: tuple[str, ...]
    content: bytes
    encrypted: bool = False


@dataclass(frozen=True)
class Refusal:
    recipient: str
    status: str
    explanation: str


@dataclass(frozen=True)
class Plan:
    batches: list[Batch] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


class OutgoingEncryption:
    def __init__(
        self,
        directory: Directory,
        *,
        default: EncryptionPolicy,
        dkim_selector: str,
        dkim_key_pem: bytes | None,
    ) -> None:
        self._directory = directory
        self._default = default
        self._selector = dkim_selector
        self._dkim_key = dkim_key_pem

    def plan(self, content: bytes, domain: str, recipients: Sequence[str]) -> Plan:
        """How `content` goes to `recipients` at the peer `domain` (called in a thread)."""
        setting = self._directory.domains.encryption_settings().get(domain)
        policy = effective_policy(setting, self._default)
        everyone = Batch(tuple(recipients), content)
        if policy is EncryptionPolicy.OFF or layering(content).encrypted:
            return Plan([everyone])
        cipher = setting.cipher if setting is not None and setting.cipher else Cipher.AES_GCM
        plan = Plan()
        clear: list[str] = []
        # Our DKIM signature is taken off once: each recipient's copy is signed again.
        stripped, dkim_domain = self._without_our_dkim(content)
        for recipient in recipients:
            cert = self._directory.certificates.encryption_certificate(recipient)
            sealed = (
                self._encrypt(stripped, dkim_domain, cert, cipher) if cert is not None else None
            )
            if sealed is not None:
                plan.batches.append(Batch((recipient,), sealed, encrypted=True))
            elif policy is EncryptionPolicy.REQUIRED:
                why = "no usable certificate" if cert is None else "encryption failed"
                plan.refused.append(
                    Refusal(
                        recipient,
                        "5.7.1" if cert is None else "5.7.5",
                        f"{domain} requires S/MIME encryption and the gateway has {why}"
                        " for this recipient",
                    )
                )
            else:
                clear.append(recipient)
        if clear:
            plan.batches.append(Batch(tuple(clear), content))
        return plan

    def _encrypt(
        self, stripped: bytes, dkim_domain: str | None, cert: x509.Certificate, cipher: Cipher
    ) -> bytes | None:
        mode: EncryptionMode = "aes-gcm" if cipher is Cipher.AES_GCM else "aes-cbc"
        try:
            sealed = encrypt(stripped, [cert], mode=mode)
        except EncryptionError as exc:
            event(log, "relay.encrypt_failed", level=logging.WARNING, error=str(exc))
            return None
        if dkim_domain is not None and self._dkim_key is not None:
            sealed = dkim_sign(
                sealed, selector=self._selector, domain=dkim_domain, key_pem=self._dkim_key
            )
        return sealed

    def _without_our_dkim(self, message: bytes) -> tuple[bytes, str | None]:
        """`message` without the DKIM-Signature fields we made at DATA, and their d=.

        Ours: our selector and a local domain. Any other signature is kept (it breaks with
        the encryption, as any signature over the clear message must).
        """
        head, separator, body = split_head_body(message)
        local = self._directory.domains.local_names()
        kept = []
        domain: str | None = None
        for f in header_fields(head):
            if f.name == "dkim-signature":
                tags = _tags(f.value)
                d = tags.get("d", "").lower()
                if tags.get("s") == self._selector and d in local:
                    domain = domain or d
                    continue
            kept.append(f)
        return join_fields(kept) + separator + body, domain


def _tags(value: bytes) -> dict[str, str]:
    tags = {}
    for part in value.split(b";"):
        match = _TAG.match(part)
        if match is not None:
            raw = re.sub(rb"\s+", b"", match.group(2))
            tags[match.group(1).decode("ascii")] = raw.decode("ascii", "replace")
    return tags
