"""Local domains (we host their mailboxes) and trusted peer domains (the trust list)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Row, Select, bindparam, delete, select

from mssgate import audit
from mssgate.db.schema import domain_signing, domains
from mssgate.db.tx import write
from mssgate.directory.models import (
    Cipher,
    Domain,
    DomainKind,
    EncryptionPolicy,
    InnerSignature,
    SignForUsers,
)
from mssgate.directory.signing import DEFAULT as SIGN_FOR_USERS_DEFAULT
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.identifiers import normalize_domain

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where a certificate is read: every CLI command builds a Directory,
# and most of them read none (issue 17, start-up time).

SMTP_PORT = 25


def parse_relay(value: str) -> tuple[str, int]:
    """`host[:port]` (or `[v6][:port]`) of a peer operator's MTA; MTAs listen on 25, so a
    relay given without a port is that."""
    text = value.strip()
    if (text.startswith("[") and text.endswith("]")) or (text and ":" not in text):
        text = f"{text}:{SMTP_PORT}"
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValidationFailed(f"invalid relay {value!r}: expected HOST or HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValidationFailed(f"invalid relay {value!r}: port must be 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], port
    if host in ("localhost",) or host.replace(".", "").isdigit():
        return host, port
    return normalize_domain(host), port


class _Unchanged(Enum):
    UNCHANGED = "unchanged"


# "Leave this setting as it is" for updates: None already means "back to the default".
UNCHANGED = _Unchanged.UNCHANGED


@dataclass(frozen=True, slots=True)
class EncryptionSetting:
    """A domain's encryption columns as stored (None: the default applies)."""

    kind: DomainKind
    encryption: EncryptionPolicy | None
    cipher: Cipher | None
    # None: accept (see `InnerSignature`).
    signature_inside_encryption: InnerSignature | None = None

    @property
    def refuses_signature_inside_encryption(self) -> bool:
        return self.signature_inside_encryption is InnerSignature.REFUSE

    @property
    def verifies_signature_inside_encryption(self) -> bool:
        return self.signature_inside_encryption is InnerSignature.VERIFY


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """What the MTA checks a peer gateway's certificate against, as stored for its domain.

    `ca_pem` is the whole bundle given to `domain trust --ca` (root and intermediates, in
    any order; one certificate in data stored before bundles were kept).
    """

    ca_pem: str | None
    operator_dn: str | None


def _ca_bundle(ca: x509.Certificate | Sequence[x509.Certificate]) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    certs = [ca] if isinstance(ca, x509.Certificate) else list(ca)
    if not certs:
        raise ValidationFailed("the --ca file holds no certificate")
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            subject = cert.subject.rfc4514_string()
            raise ValidationFailed(f"--ca: {subject} is not a CA certificate")
    return "".join(cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certs)


def effective_policy(
    setting: EncryptionSetting | None, default: EncryptionPolicy
) -> EncryptionPolicy:
    """A domain's own policy, or `default` (the global `policy.encryption`) when it has none."""
    if setting is None or setting.encryption is None:
        return default
    return setting.encryption


def _inner(value: str | None) -> InnerSignature | None:
    return InnerSignature(value) if value else None


def _sign_for_users(row: Row[Any]) -> SignForUsers | None:
    if row.kind != DomainKind.LOCAL.value:
        return None
    return SignForUsers(row.sign_for_users) if row.sign_for_users else SIGN_FOR_USERS_DEFAULT


def _with_signing() -> Select[Any]:
    """Domain rows with their `sign_for_users` (null: none stored, or a peer domain)."""
    joined = domains.outerjoin(domain_signing, domain_signing.c.name == domains.c.name)
    return select(domains, domain_signing.c.sign_for_users).select_from(joined)


# Read per message (RCPT, encryption, signer checks): built once, as building a statement
# costs more than running it (queue/statements.py). Parameter: domain_name.
_DOMAIN = _with_signing().where(domains.c.name == bindparam("domain_name"))
_LOCAL_NAMES = select(domains.c.name).where(domains.c.kind == "local")
_ENCRYPTION_SETTINGS = select(
    domains.c.name,
    domains.c.kind,
    domains.c.encryption,
    domains.c.cipher,
    domains.c.signature_inside_encryption,
)


def _domain(row: Row[Any]) -> Domain:
    ca_subject = None
    if row.ca_pem:
        from cryptography import x509

        ca_subject = x509.load_pem_x509_certificate(row.ca_pem.encode()).subject.rfc4514_string()
    return Domain(
        name=row.name,
        kind=DomainKind(row.kind),
        relay_host=row.relay_host,
        relay_port=row.relay_port,
        ca_subject=ca_subject,
        operator_dn=row.operator_dn,
        encryption=EncryptionPolicy(row.encryption) if row.encryption else None,
        cipher=Cipher(row.cipher) if row.cipher else None,
        signature_inside_encryption=_inner(row.signature_inside_encryption),
        sign_for_users=_sign_for_users(row),
        added_at=aware(row.added_at),
    )


class Domains:
    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def _existing(self, name: str) -> Row[Any] | None:
        with self._engine.connect() as conn:
            return conn.execute(_DOMAIN, {"domain_name": name}).first()

    def add_local(self, name: str, *, encryption: EncryptionPolicy | None = None) -> Domain:
        key = normalize_domain(name)
        with write(self._engine) as conn:
            row = conn.execute(select(domains).where(domains.c.name == key)).first()
            if row is not None:
                raise Conflict(f"{key} is already a {row.kind} domain")
            conn.execute(
                domains.insert().values(
                    name=key,
                    kind="local",
                    added_at=now(),
                    encryption=encryption.value if encryption is not None else None,
                )
            )
            detail = {"encryption": encryption.value} if encryption is not None else None
            audit.append(conn, actor=self._actor, action="domain.add", subject=key, detail=detail)
        return self.get(key)

    def trust(
        self,
        name: str,
        *,
        relay: str,
        ca: x509.Certificate | Sequence[x509.Certificate] | None,
        operator_dn: str | _Unchanged | None = None,
        encryption: EncryptionPolicy | _Unchanged | None = UNCHANGED,
        cipher: Cipher | _Unchanged | None = UNCHANGED,
    ) -> Domain:
        """Adds or updates a peer operator's domain on the trust list.

        `operator_dn` UNCHANGED keeps an update's stored DN (`domain trust` without
        --operator-dn: dropping it silently let any certificate of the same CA speak for the
        domain); None removes it.

        `encryption` and `cipher` left UNCHANGED keep what an update found (NULL for a new
        domain): the national trust-list import updates relays and must not reset them.
        `ca` is kept whole: a peer's certificate is validated up to the roots among it, with
        the others as intermediates.
        """
        key = normalize_domain(name)
        host, port = parse_relay(relay)
        ca_pem = _ca_bundle(ca) if ca is not None else None
        values = {
            "kind": "trusted",
            "relay_host": host,
            "relay_port": port,
            "ca_pem": ca_pem,
            **_encryption_values(encryption, cipher),
        }
        with write(self._engine) as conn:
            row = conn.execute(select(domains).where(domains.c.name == key)).first()
            if row is not None and row.kind == "local":
                raise Conflict(f"{key} is a local domain: it cannot also be a peer")
            if isinstance(operator_dn, _Unchanged):
                operator_dn = row.operator_dn if row is not None else None
            values["operator_dn"] = operator_dn
            if row is None:
                conn.execute(domains.insert().values(name=key, added_at=now(), **values))
            else:
                conn.execute(domains.update().where(domains.c.name == key).values(**values))
            audit.append(
                conn,
                actor=self._actor,
                action="domain.trust",
                subject=key,
                detail={
                    "relay": f"{host}:{port}",
                    "ca": ca is not None,
                    "ca_certificates": ca_pem.count("-----BEGIN CERTIFICATE-----") if ca_pem else 0,
                    "operator_dn": operator_dn,
                    **_encryption_values(encryption, cipher),
                },
            )
        return self.get(key)

    def set_encryption(
        self,
        name: str,
        *,
        encryption: EncryptionPolicy | _Unchanged | None = UNCHANGED,
        cipher: Cipher | _Unchanged | None = UNCHANGED,
        signature_inside_encryption: InnerSignature | _Unchanged | None = UNCHANGED,
    ) -> Domain:
        """Changes the encryption settings of a local or trusted domain (None: the default)."""
        key = normalize_domain(name)
        values = _encryption_values(encryption, cipher)
        if signature_inside_encryption is not UNCHANGED:
            values["signature_inside_encryption"] = (
                signature_inside_encryption.value
                if signature_inside_encryption is not None
                else None
            )
        with write(self._engine) as conn:
            row = conn.execute(select(domains).where(domains.c.name == key)).first()
            if row is None:
                raise NotFound(f"no domain {key!r} (add it with 'mssgate domain add' or 'trust')")
            if row.kind == "local" and values.get("cipher") is not None:
                raise ValidationFailed(
                    "a cipher applies to mail sent to a peer domain, not to a local domain"
                )
            if row.kind != "local" and values.get("signature_inside_encryption") is not None:
                raise ValidationFailed(
                    "--signature-inside-encryption applies to a local domain (what its users"
                    " send and its mailboxes receive), not to a peer domain"
                )
            if values:
                conn.execute(domains.update().where(domains.c.name == key).values(**values))
            audit.append(
                conn, actor=self._actor, action="domain.encryption", subject=key, detail=values
            )
        return self.get(key)

    def untrust(self, name: str) -> None:
        key = normalize_domain(name)
        with write(self._engine) as conn:
            result = conn.execute(
                delete(domains).where(domains.c.name == key, domains.c.kind == "trusted")
            )
            if result.rowcount == 0:
                raise NotFound(f"{key} is not on the trust list")
            audit.append(conn, actor=self._actor, action="domain.untrust", subject=key)

    def get(self, name: str) -> Domain:
        row = self._existing(normalize_domain(name))
        if row is None:
            raise NotFound(f"no domain {name!r}")
        return _domain(row)

    def list(self) -> list[Domain]:
        with self._engine.connect() as conn:
            rows = conn.execute(_with_signing().order_by(domains.c.kind, domains.c.name))
            return [_domain(row) for row in rows]

    def local_names(self) -> set[str]:
        with self._engine.connect() as conn:
            return {row.name for row in conn.execute(_LOCAL_NAMES)}

    def trusted_cas(self) -> dict[str, str | None]:
        """Every trusted peer domain with its CA (PEM), in one query: the MTA asks at each
        connection and each MAIL, so no per-domain lookups and no certificate parsing."""
        query = select(domains.c.name, domains.c.ca_pem).where(domains.c.kind == "trusted")
        with self._engine.connect() as conn:
            return {row.name: row.ca_pem for row in conn.execute(query)}

    def trusted_peers(self) -> dict[str, TrustedPeer]:
        """Every trusted peer domain with what its gateway's certificate must match, in one
        query (the MTA asks at each MAIL)."""
        query = select(domains.c.name, domains.c.ca_pem, domains.c.operator_dn).where(
            domains.c.kind == "trusted"
        )
        with self._engine.connect() as conn:
            return {
                row.name: TrustedPeer(ca_pem=row.ca_pem, operator_dn=row.operator_dn)
                for row in conn.execute(query)
            }

    def trusted_peer(self, name: str) -> TrustedPeer | None:
        row = self._existing(normalize_domain(name))
        if row is None or row.kind != "trusted":
            return None
        return TrustedPeer(ca_pem=row.ca_pem, operator_dn=row.operator_dn)

    def encryption_settings(self) -> dict[str, EncryptionSetting]:
        """Every domain's stored encryption columns, in one query (asked per message)."""
        query = _ENCRYPTION_SETTINGS
        with self._engine.connect() as conn:
            return {
                row.name: EncryptionSetting(
                    kind=DomainKind(row.kind),
                    encryption=EncryptionPolicy(row.encryption) if row.encryption else None,
                    cipher=Cipher(row.cipher) if row.cipher else None,
                    signature_inside_encryption=_inner(row.signature_inside_encryption),
                )
                for row in conn.execute(query)
            }

    def peer_ca_pem(self, name: str) -> str | None:
        row = self._existing(normalize_domain(name))
        return row.ca_pem if row is not None and row.kind == "trusted" else None


def _encryption_values(
    encryption: EncryptionPolicy | _Unchanged | None, cipher: Cipher | _Unchanged | None
) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    if encryption is not UNCHANGED:
        values["encryption"] = encryption.value if encryption is not None else None
    if cipher is not UNCHANGED:
        values["cipher"] = cipher.value if cipher is not None else None
    return values
