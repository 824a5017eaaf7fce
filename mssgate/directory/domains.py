"""Local domains (we host their mailboxes) and trusted peer domains (the trust list)."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine, Row, delete, select

from mssgate import audit
from mssgate.db.schema import domains
from mssgate.directory.models import Domain, DomainKind
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.identifiers import normalize_domain


def parse_relay(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) of a peer operator's MTA."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValidationFailed(f"invalid relay {value!r}: expected HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValidationFailed(f"invalid relay {value!r}: port must be 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], port
    if host in ("localhost",) or host.replace(".", "").isdigit():
        return host, port
    return normalize_domain(host), port


def _domain(row: Row[Any]) -> Domain:
    ca_subject = None
    if row.ca_pem:
        ca_subject = x509.load_pem_x509_certificate(row.ca_pem.encode()).subject.rfc4514_string()
    return Domain(
        name=row.name,
        kind=DomainKind(row.kind),
        relay_host=row.relay_host,
        relay_port=row.relay_port,
        ca_subject=ca_subject,
        operator_dn=row.operator_dn,
        added_at=aware(row.added_at),
    )


class Domains:
    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def _existing(self, name: str) -> Row[Any] | None:
        with self._engine.connect() as conn:
            return conn.execute(select(domains).where(domains.c.name == name)).first()

    def add_local(self, name: str) -> Domain:
        key = normalize_domain(name)
        with self._engine.begin() as conn:
            row = conn.execute(select(domains).where(domains.c.name == key)).first()
            if row is not None:
                raise Conflict(f"{key} is already a {row.kind} domain")
            conn.execute(domains.insert().values(name=key, kind="local", added_at=now()))
            audit.append(conn, actor=self._actor, action="domain.add", subject=key)
        return self.get(key)

    def trust(
        self,
        name: str,
        *,
        relay: str,
        ca: x509.Certificate | None,
        operator_dn: str | None = None,
    ) -> Domain:
        """Adds or updates a peer operator's domain on the trust list."""
        key = normalize_domain(name)
        host, port = parse_relay(relay)
        if ca is not None:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
            if not constraints.ca:
                raise ValidationFailed("the --ca certificate is not a CA certificate")
        ca_pem = ca.public_bytes(Encoding.PEM).decode("ascii") if ca is not None else None
        values = {
            "kind": "trusted",
            "relay_host": host,
            "relay_port": port,
            "ca_pem": ca_pem,
            "operator_dn": operator_dn,
        }
        with self._engine.begin() as conn:
            row = conn.execute(select(domains).where(domains.c.name == key)).first()
            if row is not None and row.kind == "local":
                raise Conflict(f"{key} is a local domain: it cannot also be a peer")
            if row is None:
                conn.execute(domains.insert().values(name=key, added_at=now(), **values))
            else:
                conn.execute(domains.update().where(domains.c.name == key).values(**values))
            audit.append(
                conn,
                actor=self._actor,
                action="domain.trust",
                subject=key,
                detail={"relay": f"{host}:{port}", "ca": ca is not None},
            )
        return self.get(key)

    def untrust(self, name: str) -> None:
        key = normalize_domain(name)
        with self._engine.begin() as conn:
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
            rows = conn.execute(select(domains).order_by(domains.c.kind, domains.c.name))
            return [_domain(row) for row in rows]

    def local_names(self) -> set[str]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(domains.c.name).where(domains.c.kind == "local"))
            return {row.name for row in rows}

    def trusted_cas(self) -> dict[str, str | None]:
        """Every trusted peer domain with its CA (PEM), in one query: the MTA asks at each
        connection and each MAIL, so no per-domain lookups and no certificate parsing."""
        query = select(domains.c.name, domains.c.ca_pem).where(domains.c.kind == "trusted")
        with self._engine.connect() as conn:
            return {row.name: row.ca_pem for row in conn.execute(query)}

    def peer_ca_pem(self, name: str) -> str | None:
        row = self._existing(normalize_domain(name))
        return row.ca_pem if row is not None and row.kind == "trusted" else None
