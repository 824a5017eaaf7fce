"""Hash chain over the audit table.

Each row's hash covers its own fields and the previous row's hash, so editing or deleting a
row breaks every later link. The head row (seq, hash of the last entry) makes a truncated
tail visible too. An attacker who can rewrite the whole table and the head can forge a
consistent chain: `audit verify` prints the head hash so operators can anchor it elsewhere
(a ticket, a log server) and compare later with `--expect-head`.

Entries are appended inside the caller's transaction, so a change and its audit row commit
or vanish together. Details never carry secrets or patient data: callers pass what an
auditor needs (who, what, which object).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, bindparam, func, select, text, update

from mssgate.db.prepared import Prepared
from mssgate.db.schema import audit, audit_head

GENESIS = "0" * 64


class AuditEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class VerifyReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problems: list[str]


def _canonical_time(at: datetime) -> str:
    # SQLite returns naive datetimes: the chain must hash what will be read back.
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _digest(
    seq: int, at: datetime, actor: str, action: str, subject: str, detail: str, prev: str
) -> str:
    body = json.dumps(
        [seq, _canonical_time(at), actor, action, subject, detail, prev],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


# Built once: building a statement cost several times executing it, and executing it through
# SQLAlchemy as much again (issue 17's profile): run on the driver's cursor (db.prepared).
# Taking the head (its row lock, or SQLite's write lock) and reading it is one statement.
_TAKE_HEAD = Prepared(
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=audit_head.c.seq + bindparam("count"))
    .returning(audit_head.c.seq, audit_head.c.hash),
    (audit_head.c.seq, audit_head.c.hash),
)
_SET_HEAD = Prepared(
    update(audit_head).where(audit_head.c.id == 1).values(hash=bindparam("head_hash"))
)
_INSERT = Prepared(audit.insert())
# PostgreSQL: the entries and the head's new hash in one statement, one round trip instead of
# two (issue 17). The entries go as one array per column, so the statement's text is the same
# for any number of entries and psycopg prepares it once per connection.
_INSERT_SET_HEAD_PG = Prepared(
    text(
        "WITH entries AS (INSERT INTO audit"
        " (seq, at, actor, action, subject, detail, prev_hash, hash)"
        " SELECT * FROM unnest(CAST(:seq AS integer[]), CAST(:at AS timestamptz[]),"
        " CAST(:actor AS text[]), CAST(:action AS text[]), CAST(:subject AS text[]),"
        " CAST(:detail AS text[]), CAST(:prev_hash AS text[]), CAST(:hash AS text[])))"
        " UPDATE audit_head SET hash = :head_hash WHERE id = 1"
    )
)
_COLUMNS = ("seq", "at", "actor", "action", "subject", "detail", "prev_hash", "hash")


def _write(conn: Connection, rows: list[dict[str, Any]], head_hash: str) -> None:
    """Inserts the entries and moves the head's hash to the last one's."""
    if conn.dialect.name == "postgresql":
        params: dict[str, Any] = {name: [row[name] for row in rows] for name in _COLUMNS}
        _INSERT_SET_HEAD_PG.rows(conn, {**params, "head_hash": head_hash})
        return
    _INSERT.many(conn, rows)
    _SET_HEAD.rows(conn, {"head_hash": head_hash})


def append(
    conn: Connection,
    *,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any] | None = None,
) -> int:
    """Appends one entry in the caller's transaction and returns its sequence number (0 inside
    `batched`, where entries are numbered when the batch is written)."""
    pending: list[NewEntry] | None = conn.info.get(_BATCH)
    if pending is not None:
        pending.append(
            NewEntry(
                actor=actor,
                action=action,
                subject=subject,
                detail=dict(detail or {}),
                at=datetime.now(UTC),
            )
        )
        return 0
    # Taking the head's write lock first serialises appenders (see audit_head).
    [(seq, prev)] = _TAKE_HEAD.rows(conn, {"count": 1})
    at = datetime.now(UTC)
    detail_text = json.dumps(dict(detail or {}), ensure_ascii=False, sort_keys=True)
    digest = _digest(seq, at, actor, action, subject, detail_text, prev)
    _write(
        conn,
        [
            {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "subject": subject,
                "detail": detail_text,
                "prev_hash": prev,
                "hash": digest,
            }
        ],
        digest,
    )
    return int(seq)


class NewEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    actor: str
    action: str
    subject: str
    detail: dict[str, Any] = {}
    # When the change happened, if not when the entry is written (a batch written later).
    at: datetime | None = None


# conn.info key of the entries a `batched` block holds back.
_BATCH = "mssgate.audit.batch"


@contextmanager
def batched(conn: Connection) -> Iterator[list[NewEntry]]:
    """Holds back the entries `append` makes on `conn` and writes them with `append_many` when
    the block ends without raising, in the same transaction: one round of head updates for a
    whole group of transitions instead of one per entry, so the head row is taken once per
    group. The chain written is the one `append` would have written, entry for entry.

    The list yielded is the pending entries: a caller that rolls back part of its work (a
    savepoint) truncates it to what it held before that part."""
    if conn.info.get(_BATCH) is not None:
        raise RuntimeError("audit entries are already batched on this connection")
    pending: list[NewEntry] = []
    conn.info[_BATCH] = pending
    try:
        yield pending
    except BaseException:
        conn.info.pop(_BATCH, None)
        raise
    conn.info.pop(_BATCH, None)
    append_many(conn, pending)


def append_many(conn: Connection, new: list[NewEntry]) -> None:
    """Appends several entries in the caller's transaction, with one round of head updates
    (the spool's group commit: one transaction for every message accepted meanwhile)."""
    if not new:
        return
    [(last_seq, prev)] = _TAKE_HEAD.rows(conn, {"count": len(new)})
    seq = int(last_seq) - len(new) + 1
    rows = []
    for entry in new:
        at = entry.at or datetime.now(UTC)
        detail_text = json.dumps(entry.detail, ensure_ascii=False, sort_keys=True)
        digest = _digest(seq, at, entry.actor, entry.action, entry.subject, detail_text, prev)
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": entry.actor,
                "action": entry.action,
                "subject": entry.subject,
                "detail": detail_text,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        seq, prev = seq + 1, digest
    _write(conn, rows, prev)


def _as_aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def entries(
    engine: Engine,
    *,
    since: datetime | None = None,
    action: str | None = None,
    actor: str | None = None,
    subject: str | None = None,
    limit: int | None = None,
) -> Iterator[AuditEntry]:
    """Entries oldest first. `action` is one action, or a family with a trailing `*`
    (`consumer.*`); `actor` and `subject` match whole; `limit`: only the last so many
    matching entries (still oldest first)."""
    query = select(audit)
    if since is not None:
        query = query.where(audit.c.at >= since)
    if action is not None and action.endswith("*"):
        # Not LIKE: SQLite's ignores ASCII case and PostgreSQL's does not, so 'NODE.*' found
        # entries on one database and none on the other. A plain comparison of the first
        # characters is exact on both, like the match of a whole action below.
        family = action[:-1]
        query = query.where(func.substr(audit.c.action, 1, len(family)) == family)
    elif action is not None:
        query = query.where(audit.c.action == action)
    if actor is not None:
        query = query.where(audit.c.actor == actor)
    if subject is not None:
        query = query.where(audit.c.subject == subject)
    if limit is not None:
        last = query.order_by(audit.c.seq.desc()).limit(limit).subquery()
        query = select(last).order_by(last.c.seq)
    else:
        query = query.order_by(audit.c.seq)
    with engine.connect() as conn:
        for row in conn.execute(query):
            yield AuditEntry(
                seq=row.seq,
                at=_as_aware(row.at),
                actor=row.actor,
                action=row.action,
                subject=row.subject,
                detail=json.loads(row.detail),
                prev_hash=row.prev_hash,
                hash=row.hash,
            )


def verify(engine: Engine, *, expect_head: str | None = None) -> VerifyReport:
    """Walks the whole chain; reports every broken link, not just the first."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    count = 0
    with engine.connect() as conn:
        for row in conn.execute(select(audit).order_by(audit.c.seq)):
            count += 1
            if row.seq != expected_seq:
                problems.append(f"entries {expected_seq}..{row.seq - 1} are missing")
            if row.prev_hash != prev:
                problems.append(f"entry {row.seq} does not link to the entry before it")
            recomputed = _digest(
                row.seq,
                _as_aware(row.at),
                row.actor,
                row.action,
                row.subject,
                row.detail,
                row.prev_hash,
            )
            if recomputed != row.hash:
                problems.append(f"entry {row.seq} was modified (its hash does not match)")
            prev = row.hash
            expected_seq = row.seq + 1
        head_seq, head_hash = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
        ).one()
    if head_seq != expected_seq - 1 or head_hash != prev:
        problems.append(
            f"the chain ends at entry {expected_seq - 1} but the head records entry {head_seq}"
            " (entries deleted at the end, or the head edited)"
        )
    if expect_head is not None and expect_head.lower() != head_hash:
        problems.append("the head hash differs from the one expected")
    return VerifyReport(
        ok=not problems,
        entries=count,
        head_seq=int(head_seq),
        head_hash=str(head_hash),
        problems=problems,
    )
