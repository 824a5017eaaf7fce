"""The S/MIME encryption policy at RCPT and DATA (docs/smime.md, "Encryption policy").

- RCPT to a peer domain whose policy is `required`: the gateway must hold a certificate to
  encrypt to that recipient, or the recipient is refused.
- DATA: a local domain whose policy is `required` takes encrypted mail only; mail encrypted
  to application mailboxes whose key the gateway holds is decrypted here, before the
  signature check, so that a sign-then-encrypt message is verified and the document pipeline
  reads clear MIME; mail for persons whose key the gateway holds (escrow) is decrypted and
  verified the same way, then encrypted again to their certificate; mail encrypted to anyone
  else has its signature checked if it is outside the encryption, and otherwise passes
  unopened only from a local user's own client, encrypted to its recipients alone
  (`_sealed_for_recipients`), or from a peer operator that vouches for its author.

Functions over the message, the envelope and the directory; the SMTP policy sends the reply.
They run in a worker thread (directory queries, RSA).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.utils import getaddresses
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.directory import Directory
from mssgate.directory.domains import EncryptionSetting, effective_policy
from mssgate.directory.models import DomainKind, EncryptionPolicy, MailboxKind
from mssgate.directory.timeutil import now
from mssgate.errors import PKIError, ValidationFailed
from mssgate.identifiers import normalize_address
from mssgate.logs import event
from mssgate.smime import DecryptionError, EncryptionMode, decrypt, encrypt
from mssgate.smime.escrow import EscrowUnavailable, escrowed_key
from mssgate.smime.layers import Layering, encrypted_cms_type, layering, replace_entity
from mssgate.smime.mailbox_keys import MailboxKey, find_mailbox_key
from mssgate.smime.recipients import (
    KnownCertificates,
    UnreadableEnvelope,
    recipients_of,
    usable_for_encryption,
)
from mssgate.smtp import peer_trust, replies
from mssgate.smtp.replies import Reply

log = logging.getLogger("mssgate.smtp")


@dataclass(frozen=True)
class EncryptionSettings:
    """What the encryption policy needs from the configuration."""

    # `policy.encryption`: the policy of every domain that has none of its own.
    default: EncryptionPolicy = EncryptionPolicy.OPPORTUNISTIC
    # DATA/certs/mailboxes; None: the gateway holds no mailbox key (decrypts nothing).
    mailbox_keys: Path | None = None


def recipient_refusal(
    directory: Directory, address: str, domain: str, settings: EncryptionSettings
) -> Reply | None:
    """RCPT to a trusted peer domain: `required` needs a certificate for the recipient.

    Refused here rather than at DATA so that the other recipients of the message still go,
    and the sender learns which address is the problem. A client that encrypts by itself is
    held to the same rule: the gateway promises that nothing leaves in clear for that domain,
    and it can only keep the promise for a recipient it could encrypt to.
    """
    setting = directory.domains.encryption_settings().get(domain)
    if effective_policy(setting, settings.default) is not EncryptionPolicy.REQUIRED:
        return None
    if directory.certificates.encryption_certificate(address) is None:
        return replies.RECIPIENT_CERTIFICATE_MISSING
    return None


@dataclass(frozen=True)
class IncomingDecision:
    """What DATA does next: refuse with `reply`, or go on with `content`."""

    content: bytes
    reply: Reply | None = None
    # For the log and the audit trail (never sent): which rule decided.
    reason: str | None = None
    # False: the signature sits inside an encryption the gateway cannot open, and the peer
    # operator that sent it is vouched for by its TLS certificate (see `_peer_vouches`).
    verify_signature: bool = True
    # The application mailbox whose key opened the message, when it was decrypted here.
    decrypted_for: str | None = None
    # Encrypt-then-sign (or a triple wrap) to application mailboxes whose keys we hold: the
    # entity the outer signature covers is opened once that signature checked out
    # (`open_after_verification`), so the document pipeline reads clear MIME.
    open_after_verification: tuple[MailboxKey, ...] = ()
    # Decrypted with keys held for persons: once its signature is verified, the message is
    # encrypted again to these certificates (`reencrypt`), the way it came (GCM or CBC).
    reencrypt_to: tuple[x509.Certificate, ...] = ()
    reencrypt_mode: EncryptionMode = "aes-gcm"
    # Delivered still encrypted, its signature inside where the gateway cannot see it: a
    # local user's own message, encrypted to its recipients' registered certificates only.
    sealed: bool = False


def incoming(
    content: bytes,
    *,
    recipients: Sequence[str],
    froms: Sequence[str],
    directory: Directory,
    settings: EncryptionSettings,
    require_signature: bool,
    for_clients: bool,
    peer_certificate: x509.Certificate | None,
    null_sender: bool = False,
    sender: str | None = None,
    kek_file: Path | None = None,
    crls: Sequence[bytes] = (),
) -> IncomingDecision:
    """The encryption rules for one message at the end of DATA (before the signature check).

    `sender`: the authenticated identity on the submission listeners (None on the MTA's).
    `kek_file`: opens the keys the gateway holds for persons (`smime.escrow`); None: none.
    `crls`: the revocation lists in force; a certificate on one is no recipient's.

    `null_sender`: the envelope sender is <>, which only delivery and disposition
    notifications use (RFC 5321 §4.5.5), and only a peer gateway may send us. A `required`
    domain takes them in clear: the sending operator cannot know our recipients' keys, and
    refusing a bounce would leave our practitioner thinking a failed message arrived.
    """
    shape = layering(content)
    domains = directory.domains.encryption_settings()
    local = [r for r in recipients if _kind_of(domains, r) is DomainKind.LOCAL]
    if not shape.encrypted:
        if null_sender and not for_clients:
            return IncomingDecision(content)
        for recipient in local:
            policy = effective_policy(domains.get(_domain(recipient)), settings.default)
            if policy is EncryptionPolicy.REQUIRED:
                return IncomingDecision(
                    content, replies.ENCRYPTION_REQUIRED, reason="not-encrypted"
                )
        return IncomingDecision(content)
    keys = _application_keys(directory, recipients, settings)
    if shape is Layering.SIGNED_ENCRYPTED:
        # Encrypt-then-sign: the signature is outside and is checked as any other. With it
        # checked, the encrypted entity can be opened for application mailboxes; not before,
        # and not without it (signatures off), when nothing would catch a CBC alteration.
        if require_signature and keys and len(keys) == len(recipients):
            return IncomingDecision(content, open_after_verification=tuple(keys))
        return IncomingDecision(content)
    if keys and len(keys) == len(recipients):
        return _decrypt(content, keys, allow_cbc=require_signature)
    if keys:
        return IncomingDecision(
            content, replies.ENCRYPTED_MIXED_RECIPIENTS, reason="application-and-others"
        )
    if not require_signature:
        return IncomingDecision(content)
    held = _personal_keys(directory, recipients, domains, kek_file, crls)
    if held and len(held) == len(recipients):
        opened = _decrypt_for_persons(content, held)
        if opened.reply is None:
            return opened
        # Encrypted to another certificate of theirs (an old one a correspondent's address
        # book still has): not opened here, it goes on as if no key were held.
        event(log, "smime.held_key_unused", level=logging.INFO, reason=opened.reason)
    if not for_clients and _peer_vouches(directory, froms, peer_certificate):
        return IncomingDecision(content, verify_signature=False, reason="peer-encrypted")
    if for_clients and sender is not None:
        return _sealed_for_recipients(content, sender, recipients, directory, domains, crls)
    return IncomingDecision(
        content, replies.SIGNATURE_INSIDE_ENCRYPTION, reason="signature-inside-encryption"
    )


def _personal_keys(
    directory: Directory,
    recipients: Sequence[str],
    domains: dict[str, EncryptionSetting],
    kek_file: Path | None,
    crls: Sequence[bytes],
) -> list[MailboxKey]:
    """The key of every recipient that is a person's mailbox of a local domain set to
    `verify`, when the gateway holds it (`cert issue`, `cert import`: smime/escrow.py) and
    its certificate is valid and not revoked: the message opened with it is encrypted again
    to that certificate, and the gateway encrypts to no expired or revoked one."""
    if kek_file is None:
        return []
    found = []
    for recipient in recipients:
        setting = domains.get(_domain(recipient))
        if setting is None or not setting.verifies_signature_inside_encryption:
            continue
        mailbox = directory.professionals.find(recipient)
        if mailbox is None or not mailbox.local or mailbox.kind is MailboxKind.APP:
            continue
        try:
            held = escrowed_key(directory.engine, kek_file, mailbox.address)
        except EscrowUnavailable as exc:
            # The operator's to fix; meanwhile the message is handled as for a key not held.
            event(log, "smime.escrow_unusable", level=logging.ERROR, recipient=mailbox.address,
                  error=str(exc))  # fmt: skip
            continue
        # ECDH key agreement is not implemented: an EC key opens nothing here.
        if held is None or not isinstance(held.key, rsa.RSAPrivateKey):
            continue
        if not usable_for_encryption([held.cert], moment=now(), crls=crls):
            event(log, "smime.held_key_unused", level=logging.INFO, recipient=mailbox.address,
                  reason="held certificate expired or revoked")  # fmt: skip
            continue
        found.append(MailboxKey(held.address, held.key, held.cert))
    return found


def _decrypt_for_persons(content: bytes, keys: Sequence[MailboxKey]) -> IncomingDecision:
    """Sign-then-encrypt for persons whose keys the gateway holds: opened so that the
    signature inside is verified like any other, then sealed again for them alone
    (`reencrypt`). CBC is opened because that verification follows (`policy.require_signature`
    is on whenever this runs) and the sender's client chose it: the copy made again is CBC too,
    which is what the readers of that client's correspondents can open."""
    mode: EncryptionMode = (
        "aes-cbc" if encrypted_cms_type(content) == "enveloped_data" else "aes-gcm"
    )
    opened = _decrypt(content, keys, allow_cbc=True)
    if opened.reply is not None:
        return opened
    return replace(opened, reencrypt_to=tuple(key.cert for key in keys), reencrypt_mode=mode)


def reencrypt(message: bytes, decision: IncomingDecision) -> bytes:
    """The verified `message` encrypted again to the persons it was opened for."""
    return encrypt(message, list(decision.reencrypt_to), mode=decision.reencrypt_mode)


def _sealed_for_recipients(
    content: bytes,
    sender: str,
    recipients: Sequence[str],
    directory: Directory,
    domains: dict[str, EncryptionSetting],
    crls: Sequence[bytes],
) -> IncomingDecision:
    """Sign-then-encrypt from a local user's own client for mailboxes whose keys the gateway
    does not hold (the Encrypt button of Thunderbird, Outlook, NeoMutt): delivered as sent.

    The gateway cannot see the signature; the reader's client checks it. What the gateway
    can check: the author is the authenticated user (the From check ran before), the local
    domains involved (the sender's, each local recipient's) accept such mail, and the message
    is encrypted to nobody but its recipients: each RecipientInfo names a certificate
    registered for an envelope recipient or for the sender (clients encrypt to themselves, so
    that the copy in their Sent folder stays readable), valid now and not revoked. It catches
    a client's mistakes (a stranger's or an old certificate); the identifiers are the
    sender's to write, so it cannot prove who else holds the content key (smime/recipients.py).
    """
    involved = {_domain(sender), *(_domain(r) for r in recipients)}
    for name in sorted(involved):
        setting = domains.get(name)
        # Only a local domain can hold the setting (`domain set` refuses it for a peer).
        if setting is not None and setting.refuses_signature_inside_encryption:
            return IncomingDecision(
                content,
                replies.SIGNATURE_INSIDE_ENCRYPTION,
                reason=f"signature-inside-encryption: refused by {name}",
            )
    for recipient in recipients:
        # An application mailbox is read by a RIS, which verifies no S/MIME: it relies on the
        # gateway having checked the signature, and the pipeline could read nothing of it.
        # Passing unopened is for persons, whose own clients check what is inside.
        mailbox = directory.professionals.find(recipient)
        if mailbox is not None and mailbox.local and mailbox.kind is MailboxKind.APP:
            return IncomingDecision(
                content,
                replies.SIGNATURE_INSIDE_ENCRYPTION,
                reason=f"signature-inside-encryption: application mailbox {mailbox.address}",
            )
    try:
        named = recipients_of(content)
    except UnreadableEnvelope as exc:
        return IncomingDecision(
            content, replies.ENCRYPTION_UNREADABLE, reason=f"envelope-unreadable: {exc}"
        )
    # Registered, valid now and not revoked (`usable_for_encryption`): an expired or revoked
    # certificate counts as a stranger's, and does not make a message readable by its owner.
    moment = now()
    registered = {
        address: KnownCertificates.of(
            usable_for_encryption(
                (
                    x509.load_pem_x509_certificate(pem.encode("ascii"))
                    for pem in directory.certificates.registered_pems(address)
                ),
                moment=moment,
                crls=crls,
            )
        )
        for address in {sender, *recipients}
    }
    strangers = [r.description for r in named if not any(k.names(r) for k in registered.values())]
    if strangers:
        return IncomingDecision(
            content,
            replies.ENCRYPTED_TO_OTHERS,
            reason=f"encrypted-to-unregistered: {'; '.join(strangers[:3])[:300]}",
        )
    # And each recipient can read it: a client that encrypted to an old certificate, or only
    # to its own user, would have the gateway deliver what its reader cannot open.
    unreadable = [a for a in recipients if not any(registered[a].names(r) for r in named)]
    if unreadable:
        return IncomingDecision(
            content,
            replies.ENCRYPTED_TO_OTHERS,
            reason=f"not-encrypted-for-recipient: {', '.join(sorted(unreadable)[:3])}",
        )
    return IncomingDecision(
        content, verify_signature=False, reason="sealed-for-recipients", sealed=True
    )


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[1].lower()


def _kind_of(domains: dict[str, EncryptionSetting], address: str) -> DomainKind | None:
    setting = domains.get(_domain(address))
    return setting.kind if setting is not None else None


def _application_keys(
    directory: Directory, recipients: Sequence[str], settings: EncryptionSettings
) -> list[MailboxKey]:
    """The key of every recipient that is a local application mailbox we hold a key for."""
    if settings.mailbox_keys is None:
        return []
    found = []
    for recipient in recipients:
        mailbox = directory.professionals.find(recipient)
        if mailbox is None or not mailbox.local or mailbox.kind is not MailboxKind.APP:
            continue
        try:
            key = find_mailbox_key(settings.mailbox_keys, mailbox.address)
        except PKIError as exc:
            event(log, "smime.mailbox_key_unusable", level=logging.ERROR, error=str(exc))
            key = None
        if key is not None:
            found.append(key)
    return found


def _decrypt(content: bytes, keys: Sequence[MailboxKey], *, allow_cbc: bool) -> IncomingDecision:
    """Opens `content` with the first key it is encrypted to.

    CBC (EnvelopedData) is malleable: a modified ciphertext decrypts to modified plaintext
    without any error. It is accepted only when the signature check follows, since a
    signature over the plaintext is then what detects the change; GCM needs no such help.
    """
    if not allow_cbc and encrypted_cms_type(content) == "enveloped_data":
        return IncomingDecision(
            content, replies.CBC_NEEDS_SIGNATURE, reason="cbc-without-signature"
        )
    failure = "the message is not encrypted to any of its application mailboxes"
    for key in keys:
        try:
            entity = decrypt(content, key.key, key.cert, allow_cbc=allow_cbc)
        except DecryptionError as exc:
            failure = str(exc)
            continue
        return IncomingDecision(replace_entity(content, entity), decrypted_for=key.address)
    return IncomingDecision(content, replies.CANNOT_DECRYPT, reason=f"undecryptable: {failure}")


def open_verified(
    message: bytes, signed_entity: bytes, keys: Sequence[MailboxKey]
) -> IncomingDecision:
    """An encrypt-then-sign `message` whose outer signature passed, with the encrypted
    `signed_entity` (what that signature covers) opened under the message's own headers.

    The signature covered the ciphertext, so CBC is as safe here as GCM: an altered
    ciphertext would have failed it. What the entity decrypts to (the inner signed message of
    a triple wrap, or clear MIME) is what the application mailbox and the pipeline get.
    """
    opened = _decrypt(signed_entity, keys, allow_cbc=True)
    if opened.reply is not None:
        return opened
    # `opened.content` is the decrypted entity under the (Content-* only) fields of the
    # signed entity; only its Content-* fields and body go under the message's headers.
    return IncomingDecision(
        replace_entity(message, opened.content), decrypted_for=opened.decrypted_for
    )


def _peer_vouches(
    directory: Directory, froms: Sequence[str], peer_certificate: x509.Certificate | None
) -> bool:
    """Whether the peer gateway on this connection operates the author's domain.

    A message another operator's gateway encrypted (sign-then-encrypt, to a recipient whose
    key only the recipient holds) cannot have its signature checked here. That operator
    checked it when its practitioner submitted the message, and its CA is the one that
    vouches for every address of its domain anyway: the TLS client certificate of the From:
    domain's operator (`peer_trust`) stands for it. The recipient's client verifies the inner
    signature.
    """
    if peer_certificate is None:
        return False
    addresses = getaddresses(list(froms))
    if len(addresses) != 1:
        return False
    try:
        author = normalize_address(addresses[0][1])
    except ValidationFailed:
        return False
    peer = directory.domains.trusted_peer(_domain(author))
    # The MAIL check of the same certificate, for the From: domain (chain and operator DN).
    return peer is not None and peer_trust.refusal(peer_certificate, peer) is None
