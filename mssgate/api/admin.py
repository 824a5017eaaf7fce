"""The read-only admin console: HTML pages at /admin on the API port, off by default.

Server-rendered (Jinja2, autoescape on: every value shown comes from senders, peers or
operators), no JavaScript, one inline stylesheet allowed by its hash in the CSP. Access is
the token of `mssgate admin token`, as `Authorization: Bearer`, or a session cookie that the
login form sets (a browser cannot send a bearer header by itself). Every table is read a
page at a time by keyset on an indexed column, and every count stops at COUNT_CAP rows
(shown "over 10000"), so a page costs the same with 10 rows or 10 million.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from sqlalchemy import Engine, and_, func, literal_column, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mssgate import __version__
from mssgate.api.problems import ApiProblem, problem_response
from mssgate.config import Config
from mssgate.db.schema import (
    audit,
    consumers,
    domains,
    professionals,
    quarantine,
    queue_documents,
    spool_messages,
    spool_recipients,
)
from mssgate.directory.admin_token import AdminToken
from mssgate.directory.timeutil import aware
from mssgate.logs import event
from mssgate.nodes import Nodes

log = logging.getLogger("mssgate.api.admin")

HealthProbe = Callable[[], dict[str, str]]
TaskCounts = Callable[[], dict[str, int]]

PREFIX = "/admin"
# __Host-: the browser keeps it only if Secure, Path=/ and no Domain (no subdomain can
# plant or overwrite it).
COOKIE = "__Host-mssgate-admin"
OVERVIEW_ROWS = 10
COUNT_CAP = 10_000
# Wrong tokens one client address may present (form or Bearer) per window before it waits.
LOGIN_FAILURES = 10
LOGIN_WINDOW_SECONDS = 60
REALM = 'Bearer realm="mssgate-admin"'
LOGIN_REQUIRED = "an admin token is required (mssgate admin token), or log in at /admin/login"

_templates = Environment(
    loader=PackageLoader("mssgate.api", "templates"),
    autoescape=True,  # on for every template, whatever its name
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_CSS = resources.files("mssgate.api").joinpath("templates/admin/admin.css").read_text("utf-8")
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode("ascii")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class AdminHeaders:
    """Sets the console's headers on every answer under /admin, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                # Starlette's trailing-slash redirect is absolute, its host taken from the
                # request's Host header: kept to the path and query, it stays on this server.
                location = headers.get("location")
                if location is not None:
                    target = urlsplit(location)
                    # One leading slash: "//host/..." would be a link to another host.
                    path = "/" + target.path.lstrip("/")
                    headers["location"] = urlunsplit(("", "", path, target.query, ""))
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception:
            # Starlette answers an unexpected error from ServerErrorMiddleware, outside every
            # middleware: that 500 would go without these headers (and uvicorn would drop
            # the connection). Answered here instead, as problems.py words it.
            if started:
                raise
            log.exception("unexpected error on %s", path)
            await problem_response(500, "internal error", instance=path)(
                scope, receive, with_headers
            )


class LoginRequired(Exception):
    def __init__(self, detail: str = LOGIN_REQUIRED) -> None:
        super().__init__(detail)
        self.detail = detail


class TooManyFailures(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many wrong admin tokens from this address; retry in {retry_after} s")
        self.detail = str(self)
        self.retry_after = retry_after


class FailedLogins:
    """Wrong admin tokens per client address in a sliding window, in this process.

    A 256-bit token cannot be guessed; this bounds what a guesser costs (a database read
    per guess, a log line) and is what an operator looks for. While an address is held,
    even the right token is refused, so a guesser learns nothing from the answer. Only a
    presented token counts: opening a page without one (a browser's first visit) does not.
    """

    MAX_ADDRESSES = 10_000  # memory bound: a flood of addresses forgets the oldest

    def __init__(self, limit: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW_SECONDS) -> None:
        self._limit = limit
        self._window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, at: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and times[0] <= at - self._window:
            times.popleft()
        return times

    def check(self, client: str) -> None:
        """Raises TooManyFailures while `client` has used up its wrong tokens."""
        at = time.monotonic()
        with self._lock:
            times = self._recent(client, at)
            if len(times) >= self._limit:
                raise TooManyFailures(max(1, math.ceil(times[0] + self._window - at)))

    def failed(self, client: str) -> None:
        at = time.monotonic()
        with self._lock:
            times = self._recent(client, at)
            times.append(at)
            self._failures.pop(client, None)
            self._failures[client] = times  # last in the dict: the most recent
            while len(self._failures) > self.MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


def _render(name: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _templates.get_template(f"admin/{name}").render(css=Markup(_CSS), **values)  # noqa: S704 (our own stylesheet)
    return HTMLResponse(html, status_code=status)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _when(value: datetime | None) -> str:
    return "" if value is None else f"{aware(value):%Y-%m-%d %H:%M:%S}"


@dataclass
class Section:
    id: str
    caption: str
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    total: str  # how many rows the table holds, as shown ("over 10000" past COUNT_CAP)
    url: str
    next_url: str | None = None
    first_url: str | None = None
    paged: bool = True


def _next(url: str, **cursor: str) -> str:
    return f"{url}?{urlencode(cursor)}"


class Views:
    """The queries behind the pages: one page of rows, by keyset, plus a count."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _count(self, table: Any) -> str:
        with self._engine.connect() as conn:
            return _shown(int(conn.execute(_capped(table)).scalar_one()))

    def directory(self, limit: int, after: str | None) -> Section:
        p = professionals.c
        query = (
            select(
                p.address,
                p.display_name,
                p.kind,
                p.id_type,
                p.idnat,
                p.profession_code,
                p.state,
                p.local,
            )
            .order_by(p.address)
            .limit(limit + 1)
        )
        if after is not None:
            query = query.where(p.address > after)
        with self._engine.connect() as conn:
            found = conn.execute(query).all()
        rows = [
            (
                r.address,
                r.display_name,
                r.kind,
                f"{r.id_type} {r.idnat}" if r.idnat else "",
                r.profession_code or "",
                r.state,
                "hosted" if r.local else "correspondent",
            )
            for r in found[:limit]
        ]
        url = PREFIX + "/directory"
        return Section(
            "directory",
            "Directory",
            ["address", "name", "kind", "identifier", "profession", "state", "mailbox"],
            rows,
            self._count(professionals),
            url,
            next_url=_next(url, after=found[limit - 1].address) if len(found) > limit else None,
            first_url=url if after is not None else None,
        )

    def domains(self, limit: int, after: str | None) -> Section:
        d = domains.c
        query = (
            select(
                d.name,
                d.kind,
                d.relay_host,
                d.relay_port,
                d.encryption,
                d.cipher,
                d.operator_dn,
                d.ca_pem.is_not(None).label("has_ca"),
                d.added_at,
            )
            .order_by(d.name)
            .limit(limit + 1)
        )
        if after is not None:
            query = query.where(d.name > after)
        with self._engine.connect() as conn:
            found = conn.execute(query).all()
        rows = [
            (
                r.name,
                "local" if r.kind == "local" else "trusted peer",
                f"{r.relay_host}:{r.relay_port}" if r.relay_host else "",
                r.encryption or "(global policy)",
                r.cipher or "",
                r.operator_dn or "",
                "yes" if r.has_ca else "no",
                _when(r.added_at),
            )
            for r in found[:limit]
        ]
        url = PREFIX + "/domains"
        return Section(
            "domains",
            "Domains and trust list",
            ["domain", "kind", "relay", "encryption", "cipher", "operator", "peer CA", "added"],
            rows,
            self._count(domains),
            url,
            next_url=_next(url, after=found[limit - 1].name) if len(found) > limit else None,
            first_url=url if after is not None else None,
        )

    def spool(self, limit: int, before: str | None) -> Section:
        m = spool_messages.c
        # Queue ids begin with the arrival time in hex: by id is newest first.
        query = (
            select(m.id, m.received_at, m.listener, m.sender, m.size, m.state)
            .order_by(m.id.desc())
            .limit(limit + 1)
        )
        if before is not None:
            query = query.where(m.id < before)
        r = spool_recipients.c
        with self._engine.connect() as conn:
            found = conn.execute(query).all()
            ids = [x.id for x in found[:limit]]
            recipients: dict[str, list[str]] = {i: [] for i in ids}
            if ids:
                for x in conn.execute(
                    select(r.spool_id, r.recipient, r.state, r.attempts, r.last_error)
                    .where(r.spool_id.in_(ids))
                    .order_by(r.spool_id, r.recipient)
                ):
                    cell = f"{x.recipient} ({x.state}, {x.attempts} attempts)"
                    if x.last_error and x.state != "delivered":
                        cell += f": {x.last_error}"
                    recipients[x.spool_id].append(cell)
        rows = [
            (
                x.id,
                _when(x.received_at),
                x.listener,
                x.sender,
                x.size,
                x.state,
                "; ".join(recipients[x.id]),
            )
            for x in found[:limit]
        ]
        url = PREFIX + "/spool"
        return Section(
            "spool",
            "Spool",
            [
                "queue id",
                "received",
                "listener",
                "sender",
                "size",
                "state",
                "recipients (state, attempts: last error)",
            ],
            rows,
            self._count(spool_messages),
            url,
            next_url=_next(url, before=found[limit - 1].id) if len(found) > limit else None,
            first_url=url if before is not None else None,
        )

    def queue_depth(self) -> Section:
        q = queue_documents.c
        c = consumers.c
        waiting = q.state.in_(("ready", "leased", "dead"))
        query = (
            select(c.name, c.mailbox, c.revoked_at, q.state, func.count(q.seq).label("n"))
            .select_from(
                consumers.outerjoin(queue_documents, and_(q.mailbox == c.mailbox, waiting))
            )
            .group_by(c.name, c.mailbox, c.revoked_at, q.state)
            .order_by(c.name)
        )
        depth: dict[str, dict[str, Any]] = {}
        with self._engine.connect() as conn:
            for r in conn.execute(query):
                entry = depth.setdefault(
                    r.name,
                    {
                        "mailbox": r.mailbox,
                        "revoked": r.revoked_at is not None,
                        "ready": 0,
                        "leased": 0,
                        "dead": 0,
                    },
                )
                if r.state is not None:
                    entry[r.state] = r.n
        rows = [
            (
                name,
                d["mailbox"],
                "revoked" if d["revoked"] else "active",
                d["ready"],
                d["leased"],
                d["dead"],
            )
            for name, d in depth.items()
        ]
        return Section(
            "queue",
            "Queue depth per consumer",
            ["consumer", "mailbox", "consumer state", "ready", "leased", "dead"],
            rows,
            str(len(rows)),
            PREFIX + "/queue",
            paged=False,
        )

    def quarantine(self, limit: int, before: str | None) -> Section:
        t = quarantine.c
        query = (
            select(
                t.id,
                t.received_at,
                t.mailbox,
                t.sender,
                t.subject,
                t.code,
                t.reason,
                t.state,
            )
            .order_by(t.received_at.desc(), t.id.desc())
            .limit(limit + 1)
        )
        if before is not None:
            at, held = _quarantine_cursor(before)
            query = query.where(or_(t.received_at < at, and_(t.received_at == at, t.id < held)))
        with self._engine.connect() as conn:
            found = conn.execute(query).all()
        rows = [
            (
                r.id,
                _when(r.received_at),
                r.mailbox,
                r.sender,
                r.subject or "",
                r.code,
                r.reason,
                r.state,
            )
            for r in found[:limit]
        ]
        url = PREFIX + "/quarantine"
        next_url = None
        if len(found) > limit:
            last = found[limit - 1]
            next_url = _next(url, before=f"{aware(last.received_at).isoformat()}|{last.id}")
        return Section(
            "quarantine",
            "Quarantine",
            ["id", "received", "mailbox", "sender", "subject", "code", "reason", "state"],
            rows,
            self._count(quarantine),
            url,
            next_url=next_url,
            first_url=url if before is not None else None,
        )

    def audit(self, limit: int, before: int | None) -> Section:
        a = audit.c
        query = (
            select(a.seq, a.at, a.actor, a.action, a.subject, a.detail)
            .order_by(a.seq.desc())
            .limit(limit + 1)
        )
        if before is not None:
            query = query.where(a.seq < before)
        with self._engine.connect() as conn:
            found = conn.execute(query).all()
        rows = [
            (r.seq, _when(r.at), r.actor, r.action, r.subject, _detail(r.detail))
            for r in found[:limit]
        ]
        url = PREFIX + "/audit"
        return Section(
            "audit",
            "Audit trail, newest first",
            ["seq", "at", "actor", "action", "subject", "detail"],
            rows,
            self._count(audit),
            url,
            next_url=_next(url, before=str(found[limit - 1].seq)) if len(found) > limit else None,
            first_url=url if before is not None else None,
        )

    def nodes(self, down_after: timedelta) -> list[Sequence[object]]:
        """The gateways sharing this database, as `mssgate node list` shows them (a few)."""
        return [
            (
                n.name,
                n.address,
                "up" if n.up else "down",
                "never" if n.silent_seconds is None else f"{n.silent_seconds:.0f} s ago",
                _when(n.started_at),
                n.spool_depth,
                n.mailboxes,
            )
            for n in Nodes(self._engine, actor="api").list(down_after=down_after)
        ]

    def counts(self) -> list[tuple[str, str]]:
        r = spool_recipients.c
        q = queue_documents.c
        wanted = [
            ("spooled messages not done", spool_messages, spool_messages.c.state == "queued"),
            ("deliveries pending", spool_recipients, r.state == "pending"),
            ("deliveries held", spool_recipients, r.state == "held"),
            ("documents ready or leased", queue_documents, q.state.in_(("ready", "leased"))),
            ("documents dead", queue_documents, q.state == "dead"),
            ("quarantined, held", quarantine, quarantine.c.state == "held"),
        ]
        with self._engine.connect() as conn:
            return [
                (what, _shown(int(conn.execute(_capped(table, where)).scalar_one())))
                for what, table, where in wanted
            ]


def _capped(table: Any, where: Any = None) -> Any:
    """count(*) that stops after COUNT_CAP + 1 rows: a page never reads a table's whole
    history (months of done messages, an Annuaire of a million entries), only up to the cap,
    by an index (the filters' columns are indexed, revision 0012)."""
    rows: Any = select(literal_column("1")).select_from(table)
    if where is not None:
        rows = rows.where(where)
    return select(func.count()).select_from(rows.limit(COUNT_CAP + 1).subquery())


def _shown(count: int) -> str:
    return f"over {COUNT_CAP}" if count > COUNT_CAP else str(count)


def _detail(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text[:300]
    shown = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return shown if len(shown) <= 300 else shown[:299] + "…"


def _quarantine_cursor(value: str) -> tuple[datetime, str]:
    at, sep, held = value.partition("|")
    try:
        # In UTC: SQLite compares the stored UTC text, so another offset would shift the page
        # (and a moment at the calendar's edge may not exist in UTC at all).
        moment: datetime | None = aware(datetime.fromisoformat(at)).astimezone(UTC)
    except (ValueError, OverflowError):
        moment = None
    if not sep or moment is None or not held:
        raise ApiProblem(422, "invalid page cursor")
    return moment, held


# No NUL: PostgreSQL refuses it in a text parameter (a 500, not a page).
Cursor = Annotated[str | None, Query(max_length=200, pattern=r"^[^\x00]*$")]
# audit.seq is a 32-bit INTEGER on PostgreSQL; beyond it the driver fails, not the query.
AuditCursor = Annotated[int | None, Query(ge=1, le=2**31 - 1)]


def install(
    app: FastAPI,
    config: Config,
    engine: Engine,
    *,
    health: HealthProbe | None,
    tasks: TaskCounts | None,
) -> None:
    """Adds the console's routes to `app` (only called when [admin] enabled is true: off,
    /admin is an unknown path like any other)."""
    tokens = AdminToken(engine, actor="api")
    views = Views(engine)
    limit = config.admin.page_size
    session_seconds = config.admin.session_seconds
    started = time.time()
    failures = FailedLogins()
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def client_of(request: Request) -> str:
        return request.client.host if request.client else ""

    def authorise(request: Request) -> None:
        header = request.headers.get("authorization")
        if header is not None:
            client = client_of(request)
            failures.check(client)
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "bearer" and tokens.check(credentials.strip()):
                return
            failures.failed(client)
            event(log, "admin.token_refused", client=client)
            raise LoginRequired("the admin token is not valid")
        cookie = request.cookies.get(COOKIE)
        if cookie and tokens.session_valid(cookie, session_seconds):
            return
        raise LoginRequired()

    async def on_login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        headers = {"WWW-Authenticate": REALM}
        if _wants_html(request):
            page = _render("login.html", 401, title="Log in", nav=False, error=None)
            page.headers.update(headers)
            return page
        return problem_response(401, exc.detail, instance=request.url.path, headers=headers)

    async def on_too_many(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TooManyFailures)
        headers = {"Retry-After": str(exc.retry_after)}
        if _wants_html(request):
            error = f"Too many wrong tokens from your address: try again in {exc.retry_after} s."
            page = _render("login.html", 429, title="Log in", nav=False, error=error)
            page.headers.update(headers)
            return page
        return problem_response(429, exc.detail, instance=request.url.path, headers=headers)

    app.add_exception_handler(LoginRequired, on_login_required)
    app.add_exception_handler(TooManyFailures, on_too_many)

    def page(name: str, title: str, **values: Any) -> HTMLResponse:
        return _render(name, title=title, nav=True, **values)

    @router.get("")
    def overview(request: Request) -> HTMLResponse:
        authorise(request)
        failing = health() if health is not None else {}
        crashes = tasks() if tasks is not None else {}
        names = sorted(set(crashes) | set(failing))
        node = [
            ("node", config.node.name),
            ("host name", config.server.hostname),
            ("machine", socket.gethostname()),
            ("process", os.getpid()),
            ("version", __version__),
            ("database", engine.dialect.name),
            ("API up since (UTC)", _when(datetime.fromtimestamp(started, UTC))),
        ]
        return page(
            "overview.html",
            "Overview",
            node=node,
            nodes=views.nodes(timedelta(seconds=config.node.down_after_seconds)),
            tasks=[(n, crashes.get(n, ""), "failing" if n in failing else "ok") for n in names],
            failing=sorted(failing.items()),
            counts=views.counts(),
            sections=[
                views.queue_depth(),
                views.quarantine(OVERVIEW_ROWS, None),
                views.spool(OVERVIEW_ROWS, None),
                views.audit(OVERVIEW_ROWS, None),
                views.domains(OVERVIEW_ROWS, None),
                views.directory(OVERVIEW_ROWS, None),
            ],
        )

    def section(title: str, s: Section, intro: str | None = None) -> HTMLResponse:
        return page("section.html", title, sections=[s], intro=intro)

    @router.get("/directory")
    def directory_page(request: Request, after: Cursor = None) -> HTMLResponse:
        authorise(request)
        return section("Directory", views.directory(limit, after))

    @router.get("/domains")
    def domains_page(request: Request, after: Cursor = None) -> HTMLResponse:
        authorise(request)
        return section("Domains and trust list", views.domains(limit, after))

    @router.get("/spool")
    def spool_page(request: Request, before: Cursor = None) -> HTMLResponse:
        authorise(request)
        intro = "Newest first; 'done' messages stay until the spool forgets them."
        return section("Spool", views.spool(limit, before), intro)

    @router.get("/queue")
    def queue_page(request: Request) -> HTMLResponse:
        authorise(request)
        return section(
            "Queue",
            views.queue_depth(),
            "Documents waiting for each RIS consumer (dead: given up, see "
            "`mssgate queue list --state dead`).",
        )

    @router.get("/quarantine")
    def quarantine_page(request: Request, before: Cursor = None) -> HTMLResponse:
        authorise(request)
        return section("Quarantine", views.quarantine(limit, before), "Newest first.")

    @router.get("/audit")
    def audit_page(request: Request, before: AuditCursor = None) -> HTMLResponse:
        authorise(request)
        return section("Audit", views.audit(limit, before))

    @router.get("/login")
    def login_form() -> HTMLResponse:
        return _render("login.html", title="Log in", nav=False, error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        body = await request.body()
        try:
            fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
        except ValueError:  # more fields than the form has: not a login
            return problem_response(
                400, "the login form takes one field, token", instance=request.url.path
            )
        token = (fields.get("token") or [""])[0].strip()
        client = client_of(request)
        failures.check(client)
        cookie = await run_in_threadpool(tokens.open_session, token, session_seconds)
        if cookie is None:
            failures.failed(client)
            event(log, "admin.login_refused", client=client)
            if _wants_html(request):
                refused = _render(
                    "login.html",
                    401,
                    title="Log in",
                    nav=False,
                    error="That is not the current admin token.",
                )
                refused.headers["WWW-Authenticate"] = REALM
                return refused
            return problem_response(
                401,
                "the admin token is not valid",
                instance=request.url.path,
                headers={"WWW-Authenticate": REALM},
            )
        failures.succeeded(client)
        event(log, "admin.login", client=client)
        # Always to the console itself: no destination is taken from the request, so the
        # form cannot be made to send a browser elsewhere.
        done = RedirectResponse(PREFIX, status_code=303)
        done.set_cookie(
            COOKIE,
            cookie,
            max_age=session_seconds,
            path="/",
            secure=True,
            httponly=True,
            samesite="strict",
        )
        return done

    @router.post("/logout")
    def logout() -> Response:
        done = RedirectResponse(PREFIX + "/login", status_code=303)
        done.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return done

    app.include_router(router)
    app.add_middleware(AdminHeaders)
