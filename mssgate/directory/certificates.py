"""S/MIME certificates registered for a mailbox: the ones the gateway accepts as its signer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine, Row, select
from sqlalchemy.exc import IntegrityError

from mssgate import audit
from mssgate.db.schema import certificates, professionals
from mssgate.directory.models import CertificateRecord
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.identifiers import normalize_address
from mssgate.pki import certificate_info, is_smime_for


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


class Certificates:
    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def register(self, address: str, cert: x509.Certificate) -> CertificateRecord:
        """Registers `cert` for a local mailbox after checking it is an S/MIME certificate
        for that very address (EKU emailProtection, rfc822Name in the SAN)."""
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
            with self._engine.begin() as conn:
                prof = conn.execute(
                    select(professionals.c.id).where(
                        professionals.c.address == key, professionals.c.local.is_(True)
                    )
                ).first()
                if prof is None:
                    raise NotFound(f"no mailbox {address!r} in the directory")
                conn.execute(
                    certificates.insert().values(
                        professional_id=prof.id,
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

    def _query(self, address: str) -> Any:
        return (
            select(certificates, professionals.c.address)
            .join(professionals, professionals.c.id == certificates.c.professional_id)
            .where(professionals.c.address == address)
            .order_by(certificates.c.not_after)
        )

    def list(self, address: str) -> list[CertificateRecord]:
        key = normalize_address(address)
        with self._engine.connect() as conn:
            exists = conn.execute(
                select(professionals.c.id).where(professionals.c.address == key)
            ).first()
            if exists is None:
                raise NotFound(f"no mailbox {address!r} in the directory")
            return [_record(row) for row in conn.execute(self._query(key))]

    def registered_pems(self, address: str) -> Iterator[str]:
        """PEM of every certificate registered for the address (for signature checks)."""
        key = normalize_address(address)
        with self._engine.connect() as conn:
            for row in conn.execute(self._query(key)):
                yield row.pem
