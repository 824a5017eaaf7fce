"""RFC 9457 problem details: every error the API returns, in one shape.

Details are client-safe by construction: they come from our own error messages (which never
carry patient data or paths) or from fixed texts; anything unexpected becomes a bare 500.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from mssgate.errors import Conflict, MssgateError, NotFound, StorageError, ValidationFailed

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://mssgate.invalid/problems/"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}
_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    409: "conflict",
    413: "too-large",
    422: "invalid-request",
    429: "too-many-requests",
    500: "internal",
    503: "unavailable",
}


class Problem(BaseModel):
    """application/problem+json (RFC 9457)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class ApiProblem(Exception):
    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    status: int,
    detail: str | None,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    slug = _SLUGS.get(status)
    body = Problem(
        type=TYPE_BASE + slug if slug else "about:blank",
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        **(extra or {}),
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def status_of(error: MssgateError) -> int:
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Conflict):
        return 409
    if isinstance(error, ValidationFailed):
        return 422
    if isinstance(error, StorageError):
        return 503
    return 500


def install(app: FastAPI) -> None:
    async def on_api_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem_response(
            exc.status, exc.detail, instance=request.url.path, headers=exc.headers
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            exc.status_code,
            _TITLES.get(exc.status_code, "Error"),
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem_response(
            422,
            "the request does not match the API schema",
            instance=request.url.path,
            extra={"errors": errors},
        )

    async def on_ours(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MssgateError)
        status = status_of(exc)
        if status >= 500:
            log.error("api error on %s: %s", request.url.path, exc)
            return problem_response(status, _TITLES[status], instance=request.url.path)
        return problem_response(status, str(exc), instance=request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        if _busy(exc):
            # A deadlock or serialisation failure (PostgreSQL), a busy SQLite file, a pool
            # exhausted or a lost connection: the database rolled the request back, so the
            # client may send it again; a 500 would tell it the request itself is at fault.
            log.warning("database unavailable on %s: %s", request.url.path, _first_line(exc))
            return problem_response(
                503, "the database is busy; send the request again",
                instance=request.url.path, headers={"Retry-After": "1"},
            )  # fmt: skip
        log.exception("unexpected error on %s", request.url.path)
        return problem_response(500, "internal error", instance=request.url.path)

    app.add_exception_handler(ApiProblem, on_api_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(MssgateError, on_ours)
    app.add_exception_handler(Exception, on_unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problems an endpoint can answer."""
    return {
        status: {
            "description": _TITLES.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


# SQLite raises OperationalError for a missing table, a read-only, full or corrupt file too:
# only SQLITE_BUSY and SQLITE_LOCKED (primary codes, the low byte of the extended ones) are
# a writer in the way, which a retry gets past.
_SQLITE_BUSY = frozenset({5, 6})


def _busy(exc: Exception) -> bool:
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if isinstance(exc.orig, sqlite3.Error):
        return (exc.orig.sqlite_errorcode & 0xFF) in _SQLITE_BUSY
    # psycopg's OperationalError: lost or refused connections, deadlocks, serialisation
    # failures, lock and statement timeouts, an administrator's shutdown; a missing table
    # and other faults of the schema or statement are ProgrammingError.
    return True


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
