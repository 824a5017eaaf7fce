"""Directory records as they cross the edges (CLI JSON, API, server policy)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from mssgate.errors import ValidationFailed
from mssgate.identifiers import normalize_address, normalize_domain, parse_practitioner_id


class MailboxKind(StrEnum):
    """Mailbox kinds of the MSSanté directory (Type de BAL)."""

    PER = "PER"  # a person: a practitioner with an RPPS or ADELI number
    ORG = "ORG"  # an organisation or a department
    APP = "APP"  # an application (a RIS, a DPI) reading and sending by itself

    @classmethod
    def from_cli(cls, word: str) -> MailboxKind:
        aliases = {"person": cls.PER, "organisation": cls.ORG, "organization": cls.ORG}
        aliases["application"] = cls.APP
        key = word.strip().lower()
        if key in aliases:
            return aliases[key]
        try:
            return cls(word.strip().upper())
        except ValueError:
            raise ValueError(
                f"unknown mailbox kind {word!r}: use person, organisation or application"
            ) from None


class AccountState(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


_PROFESSION = re.compile(r"[A-Za-z0-9_./-]{1,16}")


def _check_profession(code: str | None) -> str | None:
    if code is not None and not _PROFESSION.fullmatch(code):
        raise ValueError("profession code: 1 to 16 letters, digits or _ . / -")
    return code


def _check_idnat(value: str | None) -> str | None:
    return None if value is None else parse_practitioner_id(value).idnat


def _check_name(value: str) -> str:
    v = " ".join(value.split())
    if not v:
        raise ValueError("a display name is required")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("control characters are not allowed in a display name")
    return v


Address = Annotated[str, AfterValidator(normalize_address)]
DomainName = Annotated[str, AfterValidator(normalize_domain)]
DisplayName = Annotated[str, Field(max_length=200), AfterValidator(_check_name)]
ProfessionCode = Annotated[str | None, AfterValidator(_check_profession)]
IdNat = Annotated[str | None, AfterValidator(_check_idnat)]


class NewProfessional(BaseModel):
    """What an administrator or an import supplies for one mailbox."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: Address
    display_name: DisplayName
    idnat: IdNat = None
    profession_code: ProfessionCode = None
    kind: MailboxKind = MailboxKind.PER

    @model_validator(mode="after")
    def _identifier_fits_kind(self) -> Self:
        check_identifier_for_kind(self.kind, self.idnat)
        return self


def check_identifier_for_kind(kind: MailboxKind, idnat: str | None) -> None:
    """The rule the Annuaire Santé applies: a personal mailbox (PER) belongs to a practitioner
    known by a national identifier, and only a person has one. `directory add` and the
    Annuaire import both go through NewProfessional, hence through this one check."""
    if kind is MailboxKind.PER and idnat is None:
        raise ValidationFailed(
            "a person's mailbox (PER) needs a national identifier (RPPS or ADELI);"
            " a service, a team or an application is an ORG or APP mailbox"
        )
    if kind is not MailboxKind.PER and idnat is not None:
        raise ValidationFailed(
            f"an RPPS or ADELI number identifies a person: not allowed on an {kind.value} mailbox"
        )


class Professional(BaseModel):
    model_config = ConfigDict(frozen=True)

    address: str
    display_name: str
    id_type: str | None
    idnat: str | None
    profession_code: str | None
    kind: MailboxKind
    state: AccountState
    local: bool
    has_password: bool
    source: str
    created_at: datetime
    updated_at: datetime
    # The home node: the one whose mail store holds the mailbox (None: none chosen, for a
    # mailbox made before nodes existed, an imported one, or a correspondent).
    node: str | None = None

    @property
    def rpps(self) -> str | None:
        return self.idnat[1:] if self.idnat and self.id_type == "RPPS" else None


class CertificateRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    address: str
    fingerprint_sha256: str
    serial: str
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    added_at: datetime


class DomainKind(StrEnum):
    LOCAL = "local"
    TRUSTED = "trusted"


class EncryptionPolicy(StrEnum):
    """S/MIME encryption for a domain (docs/smime.md, "Encryption policy").

    On a local domain it governs what may arrive (`required`: encrypted only); on a trusted
    peer domain, what the gateway does with mail leaving for it.
    """

    REQUIRED = "required"
    OPPORTUNISTIC = "opportunistic"
    OFF = "off"

    @classmethod
    def from_cli(cls, word: str) -> EncryptionPolicy:
        try:
            return cls(word.strip().lower())
        except ValueError:
            raise ValueError(
                f"invalid encryption policy {word!r}: use required, opportunistic or off"
            ) from None


class InnerSignature(StrEnum):
    """Sign-then-encrypt for a person's mailbox (docs/smime.md): delivered still encrypted
    when the gateway holds no key for it (`accept`, the default); also opened, verified and
    encrypted again when it holds the recipient's key (`verify`); or refused."""

    ACCEPT = "accept"
    VERIFY = "verify"
    REFUSE = "refuse"

    @classmethod
    def from_cli(cls, word: str) -> InnerSignature:
        try:
            return cls(word.strip().lower())
        except ValueError:
            raise ValueError(f"invalid choice {word!r}: use accept, verify or refuse") from None


class Cipher(StrEnum):
    """Content encryption the gateway uses towards a peer domain."""

    AES_GCM = "aes-gcm"  # AuthEnvelopedData (RFC 5083/5084): any modified byte is refused
    AES_CBC = "aes-cbc"  # EnvelopedData, for peers whose readers lack AuthEnvelopedData

    @classmethod
    def from_cli(cls, word: str) -> Cipher:
        try:
            return cls(word.strip().lower())
        except ValueError:
            raise ValueError(f"invalid cipher {word!r}: use aes-gcm or aes-cbc") from None


class SignForUsers(StrEnum):
    """Per local domain: whether the gateway signs its users' unsigned submissions
    (mssgate.directory.signing)."""

    # Today's rule: an unsigned submission is refused.
    OFF = "off"
    # The default: a submission that carries no signature at all is signed for its sender.
    MISSING = "missing"
    # Every submission whose whole message is not signed is signed for its sender (a client
    # signature over one part only gets the gateway's around the whole); a message the user
    # signed as a whole is left as it is.
    ALWAYS = "always"

    @classmethod
    def from_cli(cls, word: str) -> SignForUsers:
        try:
            return cls(word.strip().lower())
        except ValueError:
            raise ValueError(f"invalid choice {word!r}: use off, missing or always") from None


class Domain(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: DomainKind
    relay_host: str | None = None
    relay_port: int | None = None
    ca_subject: str | None = None
    operator_dn: str | None = None
    # None: the global `policy.encryption` applies.
    encryption: EncryptionPolicy | None = None
    # None: AES-GCM. Only meaningful for trusted peer domains (what the gateway sends them).
    cipher: Cipher | None = None
    # None: accept. Only meaningful for local domains (what their users and mailboxes may
    # exchange encrypted with the signature inside, unseen by the gateway).
    signature_inside_encryption: InnerSignature | None = None
    # A local domain's setting (its default when none is stored); None for a peer domain,
    # whose users are not ours to sign for.
    sign_for_users: SignForUsers | None = None
    added_at: datetime


class Consumer(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Never given twice, even after a removal: what tells apart in the audit two consumers
    # that bore the same name one after the other.
    id: int
    name: str
    mailbox: str
    has_pgp_key: bool
    created_at: datetime
    revoked_at: datetime | None
    # MLLP (mssgate.mllp): its client certificate's SHA-256, where its queue is pushed.
    mllp_cert_sha256: str | None = None
    push_url: str | None = None
    # Until when the token `consumer token` replaced was (or is) still accepted; None: never
    # rotated, or rotated without grace.
    old_token_until: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None
