"""S/MIME certificates registered for a mailbox: the ones the gateway accepts as its signer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Row, bindparam, select
from sqlalchemy.exc import IntegrityError

from mssgate import audit
from mssgate.db.schema import certificates, domains, professionals
from mssgate.db.tx import write
from mssgate.directory.models import CertificateRecord
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.identifiers import normalize_address

if TYPE_CHECKING:
    from cryptography import x509

# cryptography and mssgate.pki are imported by the methods that read certificates: every CLI
# command builds a Directory, and most of them (`directory list`...) read none (issue 17).


def _professional_for_certificate(conn: Connection, key: str, address: str, actor: str) -> int:
    """The directory row a certificate for `key` hangs on: a local mailbox, a known
    correspondent, or a new correspondent at a trusted peer domain."""
    prof = conn.execute(select(professionals.c.id).where(professionals.c.address == key)).first()
    if prof is not None:
        return int(prof.id)
    domain = key.rsplit("@", 1)[1]
    kind = conn.execute(select(domains.c.kind).where(domains.c.name == domain)).scalar()
    if kind != "trusted":
        raise NotFound(
            f"no mailbox {address!r} in the directory"
            " (a correspondent's domain must be on the trust list)"
        )
    stamp = now()
    result = conn.execute(
        professionals.insert().values(
            address=key,
            display_name=key,
            kind="PER",
            state="active",
            local=False,
            source="cert",
            created_at=stamp,
            updated_at=stamp,
        )
    )
    audit.append(conn, actor=actor, action="directory.correspondent", subject=key)
    primary_key = result.inserted_primary_key
    assert primary_key is not None
    return int(primary_key[0])


def _record(row: Row[Any]) -> CertificateRecord:
    return CertificateRecord(
        address=row.address,
        fingerprint_sha256=row.fingerprint_sha256,
        serial=row.serial,
        subject=row.subject,
        issuer=row.issuer,
        not_before=aware(row.not_before),
        not_after=aware(row.not_after),
        added_at=aware(row.added_at),
    )


# A mailbox's certificates, read per message (signer checks): built once (queue/statements.py
# says why). Parameter: mailbox_address.
_OF_MAILBOX = (
    select(certificates, professionals.c.address)
    .join(professionals, professionals.c.id == certificates.c.professional_id)
    .where(professionals.c.address == bindparam("mailbox_address"))
    .order_by(certificates.c.not_after)
)


class Certificates:
    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def register(self, address: str, cert: x509.Certificate) -> CertificateRecord:
        """Registers `cert` for an address after checking it is an S/MIME certificate for that
        very address (EKU emailProtection, rfc822Name in the SAN).

        A local mailbox's certificates are the ones it may sign with. A correspondent at a
        peer operator gets one so that the gateway can encrypt to it (docs/smime.md): such an
        address is added as a known correspondent when its domain is on the trust list and
        the directory does not know it yet."""
        from cryptography.hazmat.primitives.serialization import Encoding

        from mssgate.pki import certificate_info, is_smime_for

        key = normalize_address(address)
        if not is_smime_for(cert, key):
            raise ValidationFailed(
                f"the certificate is not an S/MIME certificate for {key}"
                " (needs EKU emailProtection and the address in subjectAltName)"
            )
        info = certificate_info(cert)
        if info.not_after <= now():
            raise ValidationFailed(f"the certificate expired on {info.not_after:%Y-%m-%d}")
        pem = cert.public_bytes(Encoding.PEM).decode("ascii")
        try:
            with write(self._engine) as conn:
                professional_id = _professional_for_certificate(conn, key, address, self._actor)
                conn.execute(
                    certificates.insert().values(
                        professional_id=professional_id,
                        fingerprint_sha256=info.fingerprint_sha256,
                        serial=info.serial,
                        subject=info.subject,
                        issuer=info.issuer,
                        not_before=info.not_before,
                        not_after=info.not_after,
                        pem=pem,
                        added_at=now(),
                    )
                )
                audit.append(
                    conn,
                    actor=self._actor,
                    action="cert.register",
                    subject=key,
                    detail={"fingerprint_sha256": info.fingerprint_sha256, "serial": info.serial},
                )
        except IntegrityError:
            raise Conflict(f"this certificate is registered for {key} already") from None
        found = [c for c in self.list(key) if c.fingerprint_sha256 == info.fingerprint_sha256]
        return found[0]

    def list(self, address: str) -> list[CertificateRecord]:
        key = normalize_address(address)
        with self._engine.connect() as conn:
            exists = conn.execute(
                select(professionals.c.id).where(professionals.c.address == key)
            ).first()
            if exists is None:
                raise NotFound(f"no mailbox {address!r} in the directory")
            return [_record(row) for row in conn.execute(_OF_MAILBOX, {"mailbox_address": key})]

    def encryption_certificate(self, address: str) -> x509.Certificate | None:
        """The certificate to encrypt to `address`, or None if it has no usable one.

        Usable: valid now, for this address (EKU emailProtection, SAN), an RSA key (the
        envelope does RSA key transport only) whose key usage, when stated, allows key
        encipherment. The one that expires last wins: a renewal takes over at once.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import rsa

        from mssgate.pki import is_smime_for

        stamp = now()
        best: x509.Certificate | None = None
        for pem in self.registered_pems(address):
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
            if not (cert.not_valid_before_utc <= stamp < cert.not_valid_after_utc):
                continue
            if not isinstance(cert.public_key(), rsa.RSAPublicKey) or not is_smime_for(
                cert, address
            ):
                continue
            try:
                usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            except x509.ExtensionNotFound:
                usage = None
            if usage is not None and not usage.key_encipherment:
                continue
            if best is None or cert.not_valid_after_utc > best.not_valid_after_utc:
                best = cert
        return best

    def registered_pems(self, address: str) -> Iterator[str]:
        """PEM of every certificate registered for the address (for signature checks)."""
        key = normalize_address(address)
        with self._engine.connect() as conn:
            for row in conn.execute(_OF_MAILBOX, {"mailbox_address": key}):
                yield row.pem
