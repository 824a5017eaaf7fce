"""RIS consumers of the integration queue and their API tokens."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Row, and_, select, update

from mssgate import audit
from mssgate.db.schema import consumers, professionals
from mssgate.db.tx import write
from mssgate.directory.models import AccountState, Consumer
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.identifiers import normalize_address

TOKEN_PREFIX = "mssg_"  # noqa: S105 (a public prefix that makes leaked tokens greppable)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


# The API's answer to a token it refuses: the same text for an unknown, revoked or orphaned
# token, so that the reply says nothing about which tokens once existed.
INVALID_TOKEN = "a valid consumer token is required"  # noqa: S105 (a message, not a secret)
MAILBOX_SUSPENDED = "the consumer's mailbox is suspended"


@dataclass(frozen=True)
class TokenRefused:
    """Why a token opens nothing (shown to its bearer as the 401's detail)."""

    reason: str


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _consumer(row: Row[Any]) -> Consumer:
    return Consumer(
        name=row.name,
        mailbox=row.mailbox,
        has_pgp_key=row.pgp_key is not None,
        created_at=aware(row.created_at),
        revoked_at=aware(row.revoked_at) if row.revoked_at is not None else None,
    )


class Consumers:
    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def add(self, name: str, *, mailbox: str, pgp_key: str | None = None) -> tuple[Consumer, str]:
        """Registers a consumer and returns it with its token, shown once and stored hashed."""
        if not _NAME.fullmatch(name):
            raise ValidationFailed(
                f"invalid consumer name {name!r}: lower-case letters, digits, . _ - (max 64)"
            )
        box = normalize_address(mailbox)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with write(self._engine) as conn:
            if conn.execute(select(consumers.c.id).where(consumers.c.name == name)).first():
                raise Conflict(f"consumer {name!r} exists already")
            owner = conn.execute(
                select(professionals.c.id).where(
                    professionals.c.address == box, professionals.c.local.is_(True)
                )
            ).first()
            if owner is None:
                raise NotFound(f"no mailbox {mailbox!r} in the directory")
            conn.execute(
                consumers.insert().values(
                    name=name,
                    mailbox=box,
                    token_sha256=token_digest(token),
                    pgp_key=pgp_key,
                    created_at=now(),
                )
            )
            audit.append(
                conn,
                actor=self._actor,
                action="consumer.add",
                subject=name,
                detail={"mailbox": box, "pgp": pgp_key is not None},
            )
            row = conn.execute(select(consumers).where(consumers.c.name == name)).one()
        return _consumer(row), token

    def list(self) -> list[Consumer]:
        with self._engine.connect() as conn:
            return [
                _consumer(r) for r in conn.execute(select(consumers).order_by(consumers.c.name))
            ]

    def revoke(self, name: str) -> Consumer:
        with write(self._engine) as conn:
            result = conn.execute(
                update(consumers)
                .where(consumers.c.name == name, consumers.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
            if result.rowcount == 0:
                raise NotFound(f"no active consumer {name!r}")
            audit.append(conn, actor=self._actor, action="consumer.revoke", subject=name)
            row = conn.execute(select(consumers).where(consumers.c.name == name)).one()
        return _consumer(row)

    def authenticate(self, token: str) -> Consumer | TokenRefused:
        """The consumer holding this token, if it is not revoked and its mailbox is hosted
        and active; else why not. A suspended mailbox's consumer comes back with the mailbox;
        a removed mailbox's consumers were revoked with it (Professionals.remove)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return TokenRefused(INVALID_TOKEN)
        digest = token_digest(token)
        mailbox = and_(professionals.c.address == consumers.c.mailbox, professionals.c.local)
        query = (
            select(consumers, professionals.c.state.label("mailbox_state"))
            .outerjoin(professionals, mailbox)
            .where(consumers.c.token_sha256 == digest)
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        # The lookup is by digest (an index hit leaks nothing useful); compare again in
        # constant time so that no future change of the query turns it into an oracle.
        if row is None or not hmac.compare_digest(row.token_sha256, digest):
            return TokenRefused(INVALID_TOKEN)
        if row.revoked_at is not None or row.mailbox_state is None:
            return TokenRefused(INVALID_TOKEN)
        if row.mailbox_state != AccountState.ACTIVE.value:
            return TokenRefused(MAILBOX_SUSPENDED)
        return _consumer(row)

    def by_token(self, token: str) -> Consumer | None:
        """The consumer this token may act as now, or None (see `authenticate`)."""
        found = self.authenticate(token)
        return found if isinstance(found, Consumer) else None
