"""The `screening_cases` table: open a case, close it with its L2 result, list the open ones
and those past the deadline.

The deadline is the rule's: a negative result reaches the woman within 15 days of the
mammogram (arrêté du 29 septembre 2006, annexe III B; ../shared/design/screening.md). A case
is *overdue* when it is still open more than 15 days after the exam date, and *due soon*
(the warning) more than 10 days after. Days are counted to the woman's calendar day: today
in the zone of her département (mssgate.screening.localday), unless a date is given
(`as_of`, which tests and the CLI set instead of waiting).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, false, func, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from mssgate import audit
from mssgate.db.schema import screening_cases
from mssgate.db.tx import write
from mssgate.errors import Conflict, NotFound, ValidationFailed
from mssgate.screening.localday import AsOf, dates_by_zone, local_date

State = Literal["sent-to-l2", "l2-result-received", "closed-by-operator"]
OPEN: Final = "sent-to-l2"
RESULT_RECEIVED: Final = "l2-result-received"
# Closed by hand (`mssgate screening close`): a result that will never match the case (the
# woman's INS changed, the result came by post), told apart from a result received.
CLOSED_BY_OPERATOR: Final = "closed-by-operator"
MAX_REASON: Final = 500
WARNING_DAYS: Final = 10
OVERDUE_DAYS: Final = 15
MAX_LIST: Final = 1000
Due = Literal["ok", "due-soon", "overdue", "closed"]


class Case(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    mailbox: str
    queue_document_id: str
    document_id: str
    set_id: str | None
    ins: str | None
    ins_oid: str | None
    exam_date: date
    exam_date_known: bool
    departement: str | None
    crcdc: str
    l1_rpps: str | None
    l1_email: str | None
    gp_rpps: str | None
    gp_email: str | None
    state: State
    created_at: datetime
    closed_at: datetime | None
    result_queue_document_id: str | None
    result_document_id: str | None

    def local_day(self, as_of: AsOf) -> date:
        """The day counted to: `as_of` when a date, else her local date at that instant."""
        return local_date(self.departement, as_of)

    def days(self, as_of: AsOf) -> int:
        """Days from the mammogram to `as_of` (her local date when an instant)."""
        return (self.local_day(as_of) - self.exam_date).days

    def due_at(self, as_of: AsOf) -> Due:
        if self.state != OPEN:
            return "closed"
        days = self.days(as_of)
        if days > OVERDUE_DAYS:
            return "overdue"
        if days > WARNING_DAYS:
            return "due-soon"
        return "ok"


@dataclass(frozen=True)
class NewCase:
    """An L1 interpretation form sent to L2 (mssgate.screening.track fills it)."""

    mailbox: str
    queue_document_id: str
    document_id: str
    set_id: str | None
    ins: str | None
    ins_oid: str | None
    exam_date: date
    exam_date_known: bool
    departement: str | None
    crcdc: str
    l1_rpps: str | None
    l1_email: str | None
    gp_rpps: str | None
    gp_email: str | None


class _AnyPatient(Enum):
    ANY = "any"


# answered_by without an INS: the cases of the lineage whoever their patient (a caller that
# has not read the result's INS yet).
ANY_PATIENT: Final = _AnyPatient.ANY


def _fit(value: str | None, size: int = 200) -> str | None:
    """An id as stored and compared: the columns hold 200 characters (64 for the INS and its
    OID), and a sender writes ids of any length (an OID root has no limit); a longer one is
    kept as its digest, the same for the form and its result. PostgreSQL would refuse the
    row after the form was queued and copied, and every replay of the delivery again."""
    if value is None or len(value) <= size:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[: size - 7]


def _days_before(day: date, days: int) -> date:
    """`days` before `day`; the first day there is when that is before it (`--as-of
    0001-01-05`, `?as_of=`: an OverflowError, answered as an internal error, before)."""
    try:
        return day - timedelta(days=days)
    except OverflowError:
        return date.min


def _now() -> datetime:
    return datetime.now(UTC)


class ScreeningCases:
    def __init__(
        self,
        engine: Engine,
        *,
        today: Callable[[], date] | None = None,
        now: Callable[[], datetime] = _now,
    ) -> None:
        """`today`: one calendar day for every case (tests); else `now`, each case's own
        local date at that instant."""
        self._engine = engine
        self._today = today
        self._now = now

    def as_of(self) -> AsOf:
        return self._today() if self._today is not None else self._now()

    def open(self, new: NewCase, *, actor: str) -> tuple[str, bool]:
        """(id, created): the case of this form at this mailbox, made once whatever replays
        the delivery (a second ingest of the same form finds it)."""
        c = screening_cases.c
        values = vars(new) | {
            "document_id": _fit(new.document_id),
            "set_id": _fit(new.set_id),
            "ins": _fit(new.ins, 64),
            "ins_oid": _fit(new.ins_oid, 64),
        }
        key = (c.mailbox == new.mailbox) & (c.document_id == values["document_id"])
        case_id = secrets.token_hex(16)
        try:
            with write(self._engine) as conn:
                found = conn.execute(select(c.id).where(key)).scalar()
                if found is not None:
                    return str(found), False
                conn.execute(
                    screening_cases.insert().values(
                        id=case_id, state=OPEN, created_at=datetime.now(UTC), **values
                    )
                )
                # Ids only in the audit: the case row holds the patient's INS.
                audit.append(conn, actor=actor, action="screening.case_open", subject=case_id,
                             detail={"mailbox": new.mailbox, "crcdc": new.crcdc,
                                     "queue_document_id": new.queue_document_id,
                                     "departement": new.departement})  # fmt: skip
        except IntegrityError:
            # Opened meanwhile by another node ingesting the same delivery (PostgreSQL).
            with self._engine.connect() as conn:
                return str(conn.execute(select(c.id).where(key)).scalar_one()), False
        return case_id, True

    def result(
        self,
        *,
        crcdc: str,
        set_id: str | None,
        replaces: str | None,
        ins: str | None,
        document_id: str,
        queue_document_id: str,
        actor: str,
    ) -> list[str]:
        """Closes the open cases this L2 result from `crcdc` answers: the same setId (the
        CRCDC completes the L2 section of the same form), or a relatedDocument naming the
        form's id, of the same patient (`ins`: the result's; a lineage naming another
        woman's form, by mistake or on purpose, does not close her case). Returns their ids
        (none: a result for no case sent from here)."""
        with write(self._engine) as conn:
            answered = _answered(crcdc, set_id, replaces, ins, screening_cases.c.id)
            found = [str(i) for i in conn.execute(answered).scalars()]
            if not found:
                return []
            # Open again in the UPDATE: on PostgreSQL another node's result may have closed a
            # case since our SELECT (we waited on its row); that one is not ours to close.
            c = screening_cases.c
            ids = [
                str(i)
                for i in conn.execute(
                    screening_cases.update()
                    .where(c.id.in_(found), c.state == OPEN)
                    .values(
                        state=RESULT_RECEIVED,
                        closed_at=datetime.now(UTC),
                        result_queue_document_id=queue_document_id,
                        result_document_id=_fit(document_id),
                    )
                    .returning(c.id)
                ).scalars()
            ]
            detail = {"crcdc": crcdc, "queue_document_id": queue_document_id}
            for case_id in ids:
                audit.append(conn, actor=actor, action="screening.l2_result", subject=case_id,
                             detail=detail)  # fmt: skip
        return ids

    def answered_by(
        self,
        *,
        crcdc: str,
        set_id: str | None,
        replaces: str | None,
        ins: str | _AnyPatient | None = ANY_PATIENT,
        include_closed: bool = False,
    ) -> list[Case]:
        """The open cases an L2 result from `crcdc` would close (`result`'s test, read only):
        for routing the result before it is queued (the L1 submission's mailbox).
        `include_closed`: the closed ones too (a replay or a resend of the result finds the
        case its first delivery closed)."""
        query = _answered(
            crcdc, set_id, replaces, ins, screening_cases, open_only=not include_closed
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_case(r) for r in rows]

    def get(self, case_id: str) -> Case | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(screening_cases).where(screening_cases.c.id == case_id))
            found = row.first()
        return _case(found) if found is not None else None

    def for_result(self, queue_document_id: str) -> list[Case]:
        """The cases an L2 result (its queue entry) closed: for routing the result to the
        L1 radiologist and the GP (their RPPS and addresses are on the case)."""
        c = screening_cases.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(screening_cases).where(c.result_queue_document_id == queue_document_id)
            ).all()
        return [_case(r) for r in rows]

    def list(
        self,
        *,
        mailbox: str | None = None,
        past_days: int | None = None,
        as_of: AsOf | None = None,
        include_closed: bool = False,
        limit: int = MAX_LIST,
    ) -> list[Case]:
        """Open cases (all cases with `include_closed`), oldest exam first; `past_days`:
        only the open ones more than that many days after their exam at `as_of`."""
        c = screening_cases.c
        query = select(screening_cases).order_by(c.exam_date, c.created_at, c.id)
        if not include_closed or past_days is not None:
            query = query.where(c.state == OPEN)
        if past_days is not None:
            query = query.where(_past(as_of or self.as_of(), past_days))
        if mailbox is not None:
            query = query.where(c.mailbox == mailbox)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(max(1, min(limit, MAX_LIST)))).all()
        return [_case(r) for r in rows]

    def overdue_counts(self, as_of: AsOf | None = None) -> dict[int, int]:
        """{10: open cases past 10 days, 15: past 15} at `as_of` (the metric's gauge)."""
        day = as_of or self.as_of()
        with self._engine.connect() as conn:
            return overdue_counts(conn, day)

    def close(self, case_id: str, *, reason: str, actor: str) -> Case:
        """Closes an open case by hand, with the operator's reason (in the audit): one whose
        L2 result will never match it. Refused for an unknown or already closed case."""
        why = " ".join(reason.split())
        if not why:
            raise ValidationFailed("--reason: say why the case is closed")
        if len(why) > MAX_REASON:
            raise ValidationFailed(f"--reason: at most {MAX_REASON} characters")
        c = screening_cases.c
        with write(self._engine) as conn:
            # The state in the UPDATE: a result (another node) closing it meanwhile wins.
            done = conn.execute(
                screening_cases.update()
                .where(c.id == case_id, c.state == OPEN)
                .values(state=CLOSED_BY_OPERATOR, closed_at=datetime.now(UTC))
                .returning(c.id)
            ).first()
            if done is None:
                found = conn.execute(select(c.state).where(c.id == case_id)).scalar()
                if found is None:
                    raise NotFound(f"no screening case {case_id[:64]!r}")
                raise Conflict(f"screening case {case_id} is already closed ({found})")
            audit.append(conn, actor=actor, action="screening.case_close", subject=case_id,
                         detail={"reason": why})  # fmt: skip
        closed = self.get(case_id)
        assert closed is not None
        return closed


def _answered(
    crcdc: str,
    set_id: str | None,
    replaces: str | None,
    ins: str | _AnyPatient | None,
    *columns: Any,
    open_only: bool = True,
) -> Any:
    """SELECT `columns` of the open cases of `crcdc` of the same form: its setId, or the
    form id a relatedDocument names (none when the result gives neither), and of the
    patient `ins` (a case without INS only for a result without one)."""
    c = screening_cases.c
    lineage = [c.set_id == _fit(set_id)] if set_id else []
    if replaces:
        lineage.append(c.document_id == _fit(replaces))
    query = select(*columns).where(c.crcdc == crcdc.lower())
    if open_only:
        query = query.where(c.state == OPEN)
    if ins is not ANY_PATIENT:
        query = query.where(c.ins.is_(None) if ins is None else c.ins == _fit(ins, 64))
    return query.where(or_(*lineage) if lineage else false())


def _past(as_of: AsOf, days: int) -> Any:
    """The cases more than `days` after their exam at `as_of`: a date, the same day for
    all; an instant, each woman's local date (a few dates: one per zone that differs)."""
    c = screening_cases.c
    if not isinstance(as_of, datetime):
        return c.exam_date < _days_before(as_of, days)
    metropolitan, overseas = dates_by_zone(as_of)
    named = [d for departements in overseas.values() for d in departements]
    clauses = [
        c.departement.in_(departements) & (c.exam_date < _days_before(day, days))
        for day, departements in overseas.items()
    ]
    elsewhere = c.departement.is_(None) | c.departement.not_in(named)
    clauses.append(elsewhere & (c.exam_date < _days_before(metropolitan, days)))
    return or_(*clauses)


def overdue_counts(conn: Any, as_of: AsOf) -> dict[int, int]:
    c = screening_cases.c
    counts: dict[int, int] = {}
    for days in (WARNING_DAYS, OVERDUE_DAYS):
        counts[days] = int(
            conn.execute(select(func.count()).where(c.state == OPEN, _past(as_of, days)))
            .scalar_one()
        )  # fmt: skip
    return counts


def _case(row: Row[Any]) -> Case:
    from mssgate.directory.timeutil import aware

    values = dict(row._mapping)
    values["created_at"] = aware(values["created_at"])
    if values["closed_at"] is not None:
        values["closed_at"] = aware(values["closed_at"])
    return Case.model_validate(values)


class CaseView(Case):
    """A case as the CLI's --json and GET /v1/screening show it, counted at a day."""

    counted_on: date
    days_since_exam: int
    due: Due


def view(case: Case, as_of: AsOf) -> CaseView:
    return CaseView(**dict(case), counted_on=case.local_day(as_of),
                    days_since_exam=case.days(as_of), due=case.due_at(as_of))  # fmt: skip


def shown(case: Case, as_of: AsOf) -> dict[str, Any]:
    return view(case, as_of).model_dump(mode="json")
