"""RIS consumers of the integration queue and their API tokens."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)

from mssgate import audit
from mssgate.db.schema import audit as audit_table
from mssgate.db.schema import consumers, professionals
from mssgate.db.tx import write
from mssgate.directory.models import AccountState, Consumer
from mssgate.directory.timeutil import aware, now
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.identifiers import normalize_address

TOKEN_PREFIX = "mssg_"  # noqa: S105 (a public prefix that makes leaked tokens greppable)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# How long `consumer token --grace` may keep a replaced token working: long enough for a RIS
# team to deploy its new token, short enough that a forgotten one does not linger.
MAX_TOKEN_GRACE = timedelta(days=7)


# The API's answer to a token it refuses: the same text for an unknown, revoked or orphaned
# token, so that the reply says nothing about which tokens once existed.
INVALID_TOKEN = "a valid consumer token is required"  # noqa: S105 (a message, not a secret)
MAILBOX_SUSPENDED = "the consumer's mailbox is suspended"
UNBOUND_CERTIFICATE = "this certificate is not bound to an active consumer (consumer cert)"


@dataclass(frozen=True)
class Rotated:
    """A consumer's new token (shown once) and until when the one it replaced still works
    (None: refused already)."""

    consumer: Consumer
    token: str
    old_token_until: datetime | None


@dataclass(frozen=True)
class TokenRefused:
    """Why a token opens nothing (shown to its bearer as the 401's detail)."""

    reason: str


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _consumer(row: Row[Any]) -> Consumer:
    return Consumer(
        id=row.id,
        name=row.name,
        mailbox=row.mailbox,
        has_pgp_key=row.pgp_key is not None,
        created_at=aware(row.created_at),
        revoked_at=aware(row.revoked_at) if row.revoked_at is not None else None,
        mllp_cert_sha256=row.mllp_cert_sha256,
        push_url=row.push_url,
        old_token_until=(
            aware(row.previous_token_until) if row.previous_token_until is not None else None
        ),
    )


# Any constant of this project's own: the key of PostgreSQL's transaction lock below.
_IDS_LOCK = 0x6D7373_0001


def _one_at_a_time(conn: Connection) -> None:
    """Consumers are added and removed one at a time: `_next_id` reads the highest id ever
    given, and two adds at once on PostgreSQL both read the same one (the second died on the
    primary key). A transaction lock, taken first, so that it orders nothing else; SQLite
    has one writer anyway."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_IDS_LOCK)))


def _next_id(conn: Connection) -> int:
    """An id no consumer ever had, even one removed since. The audit tells a reused name's
    consumers apart by id, and neither database promises that: SQLite gives a deleted last
    row's id to the next insert. So the ids the audit names count too (a few rows: one per
    consumer added or removed)."""
    highest = conn.execute(select(func.max(consumers.c.id))).scalar_one() or 0
    named = conn.execute(
        select(audit_table.c.detail).where(
            audit_table.c.action.in_(("consumer.add", "consumer.remove"))
        )
    ).scalars()
    for detail in named:
        given = json.loads(detail).get("id")
        if isinstance(given, int):
            highest = max(highest, given)
    return int(highest) + 1


# A consumer's mailbox, hosted here: the join every lookup of a usable consumer makes.
_HOSTED = and_(professionals.c.address == consumers.c.mailbox, professionals.c.local)


def _on_terms(row: Row[Any], refused: str) -> Consumer | TokenRefused:
    """The consumer of `row` (read with its mailbox's state) if it is not revoked and its
    mailbox is hosted and active; else `refused`, or MAILBOX_SUSPENDED."""
    if row.revoked_at is not None or row.mailbox_state is None:
        return TokenRefused(refused)
    if row.mailbox_state != AccountState.ACTIVE.value:
        return TokenRefused(MAILBOX_SUSPENDED)
    return _consumer(row)


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


# Asked per delivery (does a RIS consume this mailbox?): one row or none, built once
# (queue/statements.py says why). Parameter: mailbox_.
_CONSUMES = (
    select(consumers.c.id)
    .where(consumers.c.mailbox == bindparam("mailbox_"), consumers.c.revoked_at.is_(None))
    .limit(1)
)


class Consumers:
    def __init__(self, engine: Engine, actor: str, *, clock: Callable[[], datetime] = now) -> None:
        self._engine = engine
        self._actor = actor
        # What ends a replaced token's grace; every node reads it at every request.
        self._clock = clock

    def check_name(self, name: str) -> None:
        """Refuses what `add` would refuse for the name, before a caller does anything else
        (`consumer add` issues the mailbox's key pair first). `add` checks again."""
        if not _NAME.fullmatch(name):
            raise ValidationFailed(
                f"invalid consumer name {name!r}: lower-case letters, digits, . _ - (max 64)"
            )
        with self._engine.connect() as conn:
            same_name = conn.execute(select(consumers).where(consumers.c.name == name)).first()
        if same_name is not None and same_name.revoked_at is None:
            raise Conflict(
                f"consumer {name!r} exists already (`mssgate consumer remove {name}` frees"
                " its name)"
            )

    def add(self, name: str, *, mailbox: str, pgp_key: str | None = None) -> tuple[Consumer, str]:
        """Registers a consumer and returns it with its token, shown once and stored hashed."""
        if not _NAME.fullmatch(name):
            raise ValidationFailed(
                f"invalid consumer name {name!r}: lower-case letters, digits, . _ - (max 64)"
            )
        box = normalize_address(mailbox)
        token = _new_token()
        with write(self._engine) as conn:
            _one_at_a_time(conn)
            same_name = conn.execute(select(consumers).where(consumers.c.name == name)).first()
            if same_name is not None and same_name.revoked_at is None:
                raise Conflict(
                    f"consumer {name!r} exists already (`mssgate consumer remove {name}` frees"
                    " its name)"
                )
            owner = conn.execute(
                select(professionals.c.id).where(
                    professionals.c.address == box, professionals.c.local.is_(True)
                )
            ).first()
            if owner is None:
                raise NotFound(f"no mailbox {mailbox!r} in the directory")
            detail: dict[str, object] = {"mailbox": box, "pgp": pgp_key is not None}
            consumer_id = _next_id(conn)  # before the delete below: its id counts
            if same_name is not None:
                # A revoked consumer's name is free again (its RIS back with a new token, say):
                # the revoked row goes, the audit keeps it (consumer.add and consumer.revoke
                # name its id, and this entry names it as replaced).
                conn.execute(delete(consumers).where(consumers.c.id == same_name.id))
                detail["replaces"] = same_name.id
            detail["id"] = consumer_id
            conn.execute(
                consumers.insert().values(
                    id=consumer_id,
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
                detail=detail,
            )
            row = conn.execute(select(consumers).where(consumers.c.name == name)).one()
        return _consumer(row), token

    def consumes(self, mailbox: str) -> bool:
        """Whether a consumer not revoked takes the documents of `mailbox`."""
        with self._engine.connect() as conn:
            return conn.execute(_CONSUMES, {"mailbox_": mailbox}).first() is not None

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
            row = conn.execute(select(consumers).where(consumers.c.name == name)).one()
            audit.append(conn, actor=self._actor, action="consumer.revoke", subject=name,
                         detail={"id": row.id})  # fmt: skip
        return _consumer(row)

    def remove(self, name: str) -> Consumer:
        """Deletes a consumer, active or revoked: its token opens nothing from the next
        request on (every request looks its token up), and its name is free. The documents
        it had leased go back to ready when their lease expires, as any lease; the audit
        keeps what it did, under its id."""
        with write(self._engine) as conn:
            _one_at_a_time(conn)
            row = conn.execute(select(consumers).where(consumers.c.name == name)).first()
            if row is None:
                raise NotFound(f"no consumer {name!r}")
            conn.execute(delete(consumers).where(consumers.c.id == row.id))
            audit.append(
                conn,
                actor=self._actor,
                action="consumer.remove",
                subject=name,
                detail={
                    "id": row.id,
                    "mailbox": row.mailbox,
                    "state": "active" if row.revoked_at is None else "revoked",
                },
            )
        return _consumer(row)

    def rotate_token(self, name: str, grace: timedelta = timedelta(0)) -> Rotated:
        """Gives the active consumer `name` a new token, shown once and stored hashed, under
        the same id: its outbound messages, ZAM items, leases and MLLP certificate stay its
        own. The token it had keeps working for `grace` (0: refused from the next request
        on), then is refused. A token still in an earlier rotation's grace is refused at once:
        a consumer has two tokens at most."""
        if not timedelta(0) <= grace <= MAX_TOKEN_GRACE:
            raise ValidationFailed("the grace of the old token is 0 to 7 days")
        token = _new_token()
        with write(self._engine) as conn:
            row = self._active_row(conn, name)
            at = self._clock()
            until = at + grace if grace > timedelta(0) else None
            ended = row.previous_token_until is not None and aware(row.previous_token_until) > at
            conn.execute(
                update(consumers)
                .where(consumers.c.id == row.id)
                .values(
                    token_sha256=token_digest(token),
                    previous_token_sha256=row.token_sha256 if until is not None else None,
                    previous_token_until=until,
                )
            )
            # Neither token nor digest: the audit is readable by whoever reads the logs.
            audit.append(conn, actor=self._actor, action="consumer.token", subject=name,
                         detail={"id": row.id, "grace_seconds": int(grace.total_seconds()),
                                 "old_token_until": until.isoformat() if until else None,
                                 "ended_earlier_grace": ended})  # fmt: skip
            row = conn.execute(select(consumers).where(consumers.c.id == row.id)).one()
        return Rotated(_consumer(row), token, until)

    def authenticate(self, token: str) -> Consumer | TokenRefused:
        """The consumer holding this token (or the one `rotate_token` replaced, within its
        grace), if it is not revoked and its mailbox is hosted and active; else why not. A
        suspended mailbox's consumer comes back with the mailbox; a removed mailbox's
        consumers were revoked with it (Professionals.remove)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return TokenRefused(INVALID_TOKEN)
        digest = token_digest(token)
        row = self._with_mailbox(
            or_(consumers.c.token_sha256 == digest, consumers.c.previous_token_sha256 == digest)
        )
        # The lookup is by digest (an index hit leaks nothing useful); compare again in
        # constant time so that no future change of the query turns it into an oracle.
        if row is None or not (
            hmac.compare_digest(row.token_sha256, digest) or self._in_grace(row, digest)
        ):
            return TokenRefused(INVALID_TOKEN)
        return _on_terms(row, INVALID_TOKEN)

    def _with_mailbox(self, which: ColumnElement[bool]) -> Row[Any] | None:
        """The consumer `which` names, with its mailbox's state (None: not hosted here)."""
        query = (
            select(consumers, professionals.c.state.label("mailbox_state"))
            .outerjoin(professionals, _HOSTED)
            .where(which)
        )
        with self._engine.connect() as conn:
            return conn.execute(query).first()

    def _in_grace(self, row: Row[Any], digest: str) -> bool:
        """The replaced token, before its grace ends. The clock is read here, at every
        request, on every node: nothing caches a token past its end."""
        previous, until = row.previous_token_sha256, row.previous_token_until
        return (
            previous is not None
            and until is not None
            and hmac.compare_digest(previous, digest)
            and self._clock() < aware(until)
        )

    def bind_certificate(self, name: str, sha256: str) -> Consumer:
        """The client certificate (its SHA-256) the consumer's MLLP connections present; the
        one bound before, if any, opens nothing from now on."""
        with write(self._engine) as conn:
            row = self._active_row(conn, name)
            holder = conn.execute(
                select(consumers.c.name).where(
                    consumers.c.mllp_cert_sha256 == sha256.lower(), consumers.c.id != row.id
                )
            ).scalar_one_or_none()
            if holder is not None:
                # One certificate, one consumer: else a frame could not say who sent it.
                raise Conflict(f"this certificate is bound to consumer {holder!r} already")
            previous = row.mllp_cert_sha256
            conn.execute(
                update(consumers)
                .where(consumers.c.id == row.id)
                .values(mllp_cert_sha256=sha256.lower())
            )
            audit.append(conn, actor=self._actor, action="consumer.cert", subject=name,
                         detail={"id": row.id, "sha256": sha256.lower(),
                                 "replaces": previous})  # fmt: skip
            row = conn.execute(select(consumers).where(consumers.c.id == row.id)).one()
        return _consumer(row)

    def set_push(self, name: str, url: str | None, ca_pem: str | None) -> Consumer:
        """Where the consumer's mailbox queue is pushed over MLLP (None: not pushed), and the
        CA its server is checked against (None: the gateway's own, tls.ca)."""
        with write(self._engine) as conn:
            row = self._active_row(conn, name)
            conn.execute(
                update(consumers)
                .where(consumers.c.id == row.id)
                .values(push_url=url, push_ca=ca_pem if url is not None else None)
            )
            audit.append(conn, actor=self._actor, action="consumer.push", subject=name,
                         detail={"id": row.id, "url": url,
                                 "own_ca": ca_pem is not None})  # fmt: skip
            row = conn.execute(select(consumers).where(consumers.c.id == row.id)).one()
        return _consumer(row)

    def pushed(self) -> Sequence[tuple[Consumer, str | None]]:
        """Consumers whose queue is pushed, each with its server's CA (PEM) if set: on the
        terms of a token (`authenticate`), not revoked and their mailbox hosted and active."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(consumers)
                .join(professionals, _HOSTED)
                .where(
                    consumers.c.push_url.is_not(None),
                    consumers.c.revoked_at.is_(None),
                    professionals.c.state == AccountState.ACTIVE.value,
                )
                .order_by(consumers.c.id)
            ).all()
        return [(_consumer(r), r.push_ca) for r in rows]

    def active(self, name: str) -> Consumer:
        """The consumer `name`, not revoked; NotFound otherwise."""
        with self._engine.connect() as conn:
            return _consumer(self._active_row(conn, name))

    def _active_row(self, conn: Connection, name: str) -> Row[Any]:
        row = conn.execute(
            select(consumers).where(consumers.c.name == name, consumers.c.revoked_at.is_(None))
        ).first()
        if row is None:
            raise NotFound(f"no active consumer {name!r}")
        return row

    def by_certificate(self, sha256: str) -> Consumer | TokenRefused:
        """The consumer an MLLP client certificate is bound to, on the same terms as a
        token (`authenticate`): not revoked, its mailbox hosted and active."""
        row = self._with_mailbox(consumers.c.mllp_cert_sha256 == sha256.lower())
        if row is None:
            return TokenRefused(UNBOUND_CERTIFICATE)
        return _on_terms(row, UNBOUND_CERTIFICATE)

    def by_token(self, token: str) -> Consumer | None:
        """The consumer this token may act as now, or None (see `authenticate`)."""
        found = self.authenticate(token)
        return found if isinstance(found, Consumer) else None
