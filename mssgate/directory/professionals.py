"""Mailboxes and known correspondents: add, read, suspend, passwords, removal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from mssgate import audit
from mssgate.db.schema import consumers, domains, professionals
from mssgate.db.tx import write
from mssgate.directory.models import AccountState, MailboxKind, NewProfessional, Professional
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.identifiers import normalize_address, parse_practitioner_id
from mssgate.logincache import LoginCache
from mssgate.passwords import burn_verification, hash_password, verify_password


def to_professional(row: Row[Any]) -> Professional:
    return Professional(
        address=row.address,
        display_name=row.display_name,
        id_type=row.id_type,
        idnat=row.idnat,
        profession_code=row.profession_code,
        kind=MailboxKind(row.kind),
        state=AccountState(row.state),
        local=bool(row.local),
        has_password=row.password_hash is not None,
        source=row.source,
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
        node=row.node,
    )


def is_local_domain(conn: Connection, domain: str) -> bool:
    query = select(domains.c.name).where(domains.c.name == domain, domains.c.kind == "local")
    return conn.execute(query).first() is not None


def row_values(new: NewProfessional) -> dict[str, Any]:
    """Columns that come from a NewProfessional (shared by the CLI and the Annuaire import)."""
    pid = parse_practitioner_id(new.idnat) if new.idnat else None
    return {
        "display_name": new.display_name,
        "id_type": pid.id_type if pid else None,
        "idnat": new.idnat,
        "profession_code": new.profession_code,
        "kind": new.kind.value,
    }


# A mailbox's row, read per RCPT: built once (queue/statements.py says why). Parameter: address.
_ROW = select(professionals).where(professionals.c.address == bindparam("mailbox_address"))


class Professionals:
    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def add(
        self, new: NewProfessional, *, password: str | None = None, node: str | None = None
    ) -> Professional:
        """Adds a local mailbox. Its domain must be one of ours; `node` is its home."""
        pw_hash = hash_password(password) if password is not None else None
        domain = new.address.split("@", 1)[1]
        stamp = now()
        try:
            with write(self._engine) as conn:
                if not is_local_domain(conn, domain):
                    raise ValidationFailed(
                        f"{domain} is not a local domain (add it with 'mssgate domain add')"
                    )
                existing = self._row(conn, new.address)
                if existing is not None and existing.local:
                    raise Conflict(f"{new.address} exists already")
                values = row_values(new) | {
                    "state": AccountState.ACTIVE.value,
                    "local": True,
                    "password_hash": pw_hash,
                    "source": "cli",
                    "updated_at": stamp,
                    "node": node,
                }
                if existing is None:
                    conn.execute(
                        professionals.insert().values(
                            address=new.address, created_at=stamp, **values
                        )
                    )
                else:
                    # A known correspondent becomes a hosted mailbox.
                    conn.execute(
                        update(professionals)
                        .where(professionals.c.address == new.address)
                        .values(**values)
                    )
                audit.append(
                    conn,
                    actor=self._actor,
                    action="directory.add",
                    subject=new.address,
                    detail={"kind": new.kind.value, "idnat": new.idnat, "node": node},
                )
                row = self._row(conn, new.address)
        except IntegrityError:
            raise Conflict(f"{new.address} exists already") from None
        assert row is not None
        return to_professional(row)

    def _row(self, conn: Connection, address: str) -> Row[Any] | None:
        return conn.execute(_ROW, {"mailbox_address": address}).first()

    def find(self, address: str) -> Professional | None:
        try:
            key = normalize_address(address)
        except ValidationFailed:
            return None
        with self._engine.connect() as conn:
            row = self._row(conn, key)
        return to_professional(row) if row is not None else None

    def get(self, address: str) -> Professional:
        found = self.find(address)
        if found is None:
            raise NotFound(f"no mailbox {address!r} in the directory")
        return found

    def list(self, *, include_correspondents: bool = False) -> Iterator[Professional]:
        query = select(professionals).order_by(professionals.c.address)
        if not include_correspondents:
            query = query.where(professionals.c.local.is_(True))
        with self._engine.connect() as conn:
            for row in conn.execute(query):
                yield to_professional(row)

    def _change(self, address: str, action: str, values: dict[str, Any]) -> Professional:
        key = normalize_address(address)
        with write(self._engine) as conn:
            result = conn.execute(
                update(professionals)
                .where(professionals.c.address == key, professionals.c.local.is_(True))
                .values(updated_at=now(), **values)
            )
            if result.rowcount == 0:
                raise NotFound(f"no mailbox {address!r} in the directory")
            audit.append(conn, actor=self._actor, action=action, subject=key)
            row = self._row(conn, key)
        assert row is not None
        return to_professional(row)

    def suspend(self, address: str) -> Professional:
        return self._change(address, "directory.suspend", {"state": "suspended"})

    def reactivate(self, address: str) -> Professional:
        return self._change(address, "directory.reactivate", {"state": "active"})

    def set_password(self, address: str, password: str) -> Professional:
        return self._change(address, "directory.passwd", {"password_hash": hash_password(password)})

    def remove(self, address: str) -> None:
        key = normalize_address(address)
        with write(self._engine) as conn:
            result = conn.execute(delete(professionals).where(professionals.c.address == key))
            if result.rowcount == 0:
                raise NotFound(f"no mailbox {address!r} in the directory")
            audit.append(conn, actor=self._actor, action="directory.remove", subject=key)
            # Its RIS consumers go with it, for good: a mailbox hosted again later under the
            # same address is a new one, which the old tokens must not open.
            active = and_(consumers.c.mailbox == key, consumers.c.revoked_at.is_(None))
            names = conn.execute(select(consumers.c.name).where(active)).scalars().all()
            if names:
                conn.execute(update(consumers).where(active).values(revoked_at=now()))
            for name in names:
                audit.append(
                    conn,
                    actor=self._actor,
                    action="consumer.revoke",
                    subject=name,
                    detail={"reason": "mailbox removed", "mailbox": key},
                )

    def authenticate(
        self, address: str, password: str, *, cache: LoginCache | None = None
    ) -> Professional | None:
        """The professional if the password is right and the account active, else None.

        The caller records the failure (audit, penalty); this function tells nothing about
        which part failed, so no caller can leak it. With a `cache`, a password that verified
        recently against the very hash read now skips Argon2id (mssgate.logincache).
        """
        try:
            key = normalize_address(address)
        except ValidationFailed:
            burn_verification(password)
            return None
        with self._engine.connect() as conn:
            row = self._row(conn, key)
        if row is None or row.password_hash is None or not row.local:
            burn_verification(password)
            return None
        active = row.state == AccountState.ACTIVE.value
        # Only an active account consults the cache: a suspended one answers as slowly as
        # before, so a quick refusal never tells that a password was right.
        if cache is not None and active and cache.knows(key, password, row.password_hash):
            return to_professional(row)
        if not verify_password(row.password_hash, password):
            return None
        if not active:
            return None
        if cache is not None:
            cache.remember(key, password, row.password_hash)
        return to_professional(row)
