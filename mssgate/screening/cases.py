"""The `screening_cases` table: open a case, close it with its L2 result, list the open ones
and those past the deadline.

The deadline is the rule's: a negative result reaches the woman within 15 days of the
mammogram (arrêté du 29 septembre 2006, annexe III B; ../shared/design/screening.md). A case
is *overdue* when it is still open more than 15 days after the exam date, and *due soon*
(the warning) more than 10 days after. Dates are compared as calendar dates of `as_of`
(UTC unless given), which tests and the CLI set instead of waiting.
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

State = Literal["sent-to-l2", "l2-result-received"]
OPEN: Final = "sent-to-l2"
RESULT_RECEIVED: Final = "l2-result-received"
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

    def days(self, as_of: date) -> int:
        """Days from the mammogram to `as_of`."""
        return (as_of - self.exam_date).days

    def due_at(self, as_of: date) -> Due:
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


def _today() -> date:
    return datetime.now(UTC).date()


class ScreeningCases:
    def __init__(self, engine: Engine, *, today: Callable[[], date] = _today) -> None:
        self._engine = engine
        self._today = today

    def today(self) -> date:
        return self._today()

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
        as_of: date | None = None,
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
            day = as_of or self._today()
            query = query.where(c.exam_date < _days_before(day, past_days))
        if mailbox is not None:
            query = query.where(c.mailbox == mailbox)
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(max(1, min(limit, MAX_LIST)))).all()
        return [_case(r) for r in rows]

    def overdue_counts(self, as_of: date | None = None) -> dict[int, int]:
        """{10: open cases past 10 days, 15: past 15} at `as_of` (the metric's gauge)."""
        day = as_of or self._today()
        with self._engine.connect() as conn:
            return overdue_counts(conn, day)


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


def overdue_counts(conn: Any, day: date) -> dict[int, int]:
    c = screening_cases.c
    counts: dict[int, int] = {}
    for days in (WARNING_DAYS, OVERDUE_DAYS):
        counts[days] = int(
            conn.execute(
                select(func.count()).where(c.state == OPEN, c.exam_date < _days_before(day, days))
            ).scalar_one()
        )
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

    days_since_exam: int
    due: Due


def view(case: Case, as_of: date) -> CaseView:
    return CaseView(**dict(case), days_since_exam=case.days(as_of), due=case.due_at(as_of))


def shown(case: Case, as_of: date) -> dict[str, Any]:
    return view(case, as_of).model_dump(mode="json")
