"""`GET /v1/screening`: the second readings (L2) under way, for a RIS (its mailbox's cases,
with its consumer token) or the operator (every case, with the admin token of `mssgate
admin token`, while the admin console is on)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from mssgate.api.auth import bearer
from mssgate.api.problems import ApiProblem
from mssgate.directory.admin_token import AdminToken
from mssgate.directory.consumers import INVALID_TOKEN, Consumers, TokenRefused
from mssgate.screening.cases import (
    MAX_LIST,
    OVERDUE_DAYS,
    WARNING_DAYS,
    CaseView,
    ScreeningCases,
    view,
)
from mssgate.screening.localday import local_date

router = APIRouter(tags=["screening"])


class ScreeningList(BaseModel):
    as_of: date
    cases: list[CaseView]


def _scope(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The mailbox whose cases the caller may read; None: every case (the admin token)."""
    if credentials is None:
        raise ApiProblem(401, INVALID_TOKEN, headers={"WWW-Authenticate": 'Bearer realm="mssgate"'})
    consumers: Consumers = request.app.state.consumers
    found = consumers.authenticate(credentials.credentials)
    if not isinstance(found, TokenRefused):
        return found.mailbox
    # The console's token, for the operator, while the console is on: off, the admin token
    # opens nothing in the RIS API (docs/operator-guide.md, the admin console).
    admin = request.app.state.config.admin.enabled
    if admin and AdminToken(request.app.state.engine, actor="api").check(credentials.credentials):
        return None
    raise ApiProblem(401, found.reason, headers={"WWW-Authenticate": 'Bearer realm="mssgate"'})


@router.get(
    "/v1/screening",
    summary="Screening second readings (L2) sent to a CRCDC: open cases, oldest exam first",
    response_model=ScreeningList,
    responses={401: {"description": "No valid consumer or admin token"}},
)
def screening(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    overdue: Annotated[
        bool, Query(description=f"Only open cases more than {OVERDUE_DAYS} days after the exam")
    ] = False,
    due_soon: Annotated[
        bool, Query(description=f"Only open cases more than {WARNING_DAYS} days after the exam")
    ] = False,
    include_closed: Annotated[bool, Query(description="Closed cases too")] = False,
    as_of: Annotated[
        date | None,
        Query(description="The day to count from (default today, each woman's local date)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = MAX_LIST,
) -> ScreeningList:
    mailbox = _scope(request, credentials)
    cases = ScreeningCases(request.app.state.engine)
    day = as_of or cases.as_of()
    past = OVERDUE_DAYS if overdue else WARNING_DAYS if due_soon else None
    found = cases.list(mailbox=mailbox, past_days=past, as_of=day,
                       include_closed=include_closed, limit=limit)  # fmt: skip
    # One date for the list: the one given, else metropolitan France's (each case has the
    # day it counts to, `counted_on`: an overseas woman's may differ).
    return ScreeningList(as_of=local_date(None, day), cases=[view(c, day) for c in found])
