"""The read-only admin console (/admin) over real HTTPS: off by default, token or session
cookie, escaped values, strict headers, pages of 10,000-row tables (timed and printed, never
asserted: the developers' guide forbids timed assertions)."""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from mssgate.api.server import ApiServer, start_api
from mssgate.config import Config, load_config
from mssgate.db import open_engine, upgrade
from mssgate.db.schema import quarantine, spool_messages, spool_recipients
from mssgate.db.tx import write
from mssgate.directory.admin_token import AdminToken
from mssgate.queue import DocumentQueue, QueueSettings
from tests.api.admin_seed import seed
from tests.conftest import Cli
from tests.queue.helpers import RIS_A, add_consumer, add_mailboxes

COOKIE = "__Host-mssgate-admin"
HOSTILE = "<script>alert(1)</script>@evil.test"
FAILING = {"relay": "3 passes in a row failed; last: OperationalError"}


class Running:
    """The API in its own thread and loop, with a health probe and task counts as `serve`
    passes them (the supervisor's)."""

    def __init__(self, config: Config, engine: Engine) -> None:
        queue = DocumentQueue(
            engine, settings=QueueSettings(max_attempts=3), data_dir=config.server.data_dir
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            start_api(
                config, engine, queue=queue, port=0,
                health=lambda: dict(FAILING), tasks=lambda: {"relay": 0, "delivery": 2},
            ),
            self.loop,
        )  # fmt: skip
        self.server: ApiServer = started.result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Console:
    base_url: str
    ca: ssl.SSLContext
    engine: Engine
    config: Config
    consumer_token: str

    def client(
        self, token: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Client:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.base_url, verify=self.ca, headers=sent, timeout=30)


def _start(config: Config, engine: Engine, datadir: Path) -> tuple[Running, Console]:
    add_mailboxes(engine, RIS_A)
    _, consumer_token = add_consumer(engine, "ris-a", RIS_A)
    running = Running(config, engine)
    ca = ssl.create_default_context(cafile=str(datadir / "certs" / "ca.crt.pem"))
    url = f"https://127.0.0.1:{running.server.port}"
    return running, Console(url, ca, engine, config, consumer_token)


@pytest.fixture
def enabled(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("MSSGATE_ADMIN__ENABLED", "true")
    return load_config(datadir / "mssgate.toml")


def serve_console(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    """The console turned on and served (a fixture's body, shared with the browser test)."""
    monkeypatch.setenv("MSSGATE_ADMIN__ENABLED", "true")
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    running, found = _start(config, engine, datadir)
    try:
        yield found
    finally:
        running.stop()
        engine.dispose()


@pytest.fixture
def console(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    yield from serve_console(datadir, monkeypatch)


def _admin_token(cli: Cli) -> str:
    token = cli.ok("admin", "token", "--json").json()["token"]
    assert isinstance(token, str)
    return token


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert isinstance(body, dict)
    return body


# -- off by default ---------------------------------------------------------------------------


def test_console_is_off_by_default_and_answers_like_an_unknown_path(api, cli: Cli) -> None:
    assert api.config.admin.enabled is False
    token = _admin_token(cli)
    with api.client(token) as client:
        console = client.get("/admin")
        unknown = client.get("/no-such-page")
        login = client.post("/admin/login", data={"token": token})
    for response in (console, unknown, login):
        _problem(response, 404)
    strip = {"instance"}
    assert {k: v for k, v in console.json().items() if k not in strip} == {
        k: v for k, v in unknown.json().items() if k not in strip
    }
    assert set(console.headers) == set(unknown.headers)
    assert "content-security-policy" not in console.headers


# -- access -----------------------------------------------------------------------------------


def test_401_without_a_token_with_a_wrong_one_and_with_a_consumers(
    console: Console, cli: Cli
) -> None:
    admin = _admin_token(cli)
    bad = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    for token in (None, bad, console.consumer_token, "mssa_"):
        with console.client(token) as client:
            for path in ("/admin", "/admin/directory", "/admin/audit"):
                response = client.get(path)
                body = _problem(response, 401)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert "admin" in str(body["detail"])
                assert "<table" not in response.text
    with console.client(console.consumer_token) as client:  # the consumer's token still works
        assert client.post("/v1/leases", json={"max": 1}).status_code == 200


def test_the_token_opens_every_page_with_strict_headers(console: Console, cli: Cli) -> None:
    token = _admin_token(cli)
    with console.client(token) as client:
        for path in ("/admin", "/admin/directory", "/admin/domains", "/admin/spool",
                     "/admin/queue", "/admin/quarantine", "/admin/audit"):  # fmt: skip
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"].startswith("text/html")
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp
            assert "script-src" not in csp
            assert re.search(r"style-src 'sha256-[A-Za-z0-9+/=]+'", csp)
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert "<script" not in response.text
        overview = client.get("/admin").text
    # Health as /healthz sees it, the supervisor's task counts, the consumer's queue.
    assert "failing" in overview and "OperationalError" in overview
    assert re.search(r"<td>delivery</td><td>2</td>", overview)
    # The node `init` registered, which never served (no heartbeat).
    node = re.escape(console.config.node.name)
    assert re.search(rf"<td>{node}</td><td>[^<]+</td><td>down</td><td>never</td>", overview)
    assert re.search(r"<td>ris-a</td><td>ris-a@hopital-a.test</td><td>active</td>", overview)
    for table in ("node", "nodes", "tasks", "counts", "queue", "quarantine", "spool", "audit",
                  "domains", "directory"):  # fmt: skip
        assert f'<table id="{table}">' in overview
    # The domain init made and the audit entry of the token just made.
    assert "<td>hopital-a.test</td>" in overview
    assert "<td>admin.token</td>" in overview


def test_a_401_to_a_browser_is_the_login_form(console: Console) -> None:
    with console.client(headers={"Accept": "text/html,application/xhtml+xml"}) as client:
        response = client.get("/admin")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert '<form class="login" method="post" action="/admin/login">' in response.text
    assert response.headers["x-frame-options"] == "DENY"


def test_values_from_senders_are_escaped(console: Console, cli: Cli) -> None:
    now = datetime.now(UTC)
    with write(console.engine) as conn:
        conn.execute(spool_messages.insert().values(
            id="0000000000AHOSTILE", received_at=now, listener="mta", sender=HOSTILE,
            size=1, state="queued"))  # fmt: skip
        conn.execute(spool_recipients.insert().values(
            spool_id="0000000000AHOSTILE", recipient=RIS_A, route="local", state="held",
            attempts=1, last_error="<img src=x onerror=alert(2)>", next_attempt_at=now,
            updated_at=now))  # fmt: skip
        conn.execute(quarantine.insert().values(
            id="hostile", dedup_key="hostile", received_at=now, mailbox=RIS_A, sender=HOSTILE,
            subject='"><script>alert(3)</script>', code=906, reason="<b>test INS</b>",
            sha256="0" * 64, size=1, content_type="text/xml", origin="attachment",
            state="held", updated_at=now))  # fmt: skip
    token = _admin_token(cli)
    with console.client(token) as client:
        pages = [client.get(p).text for p in ("/admin", "/admin/spool", "/admin/quarantine")]
    for page in pages:
        assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@evil.test" in pages[0]
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[1]
    assert "&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in pages[2]
    assert "&lt;b&gt;test INS&lt;/b&gt;" in pages[2]


# -- the login form and its session cookie ----------------------------------------------------


def _login(client: httpx.Client, token: str, **extra: str) -> httpx.Response:
    return client.post("/admin/login", data={"token": token, **extra})


def test_login_sets_a_strict_cookie_and_goes_only_to_the_console(
    console: Console, cli: Cli
) -> None:
    token = _admin_token(cli)
    with console.client() as client:
        assert client.get("/admin/login").status_code == 200
        response = _login(client, token, next="https://evil.example/", url="//evil.example")
        assert response.status_code == 303
        assert response.headers["location"] == "/admin"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= attributes
        assert "max-age=3600" in attributes
        assert not any(a.startswith("domain") for a in attributes)
        # httpx keeps the cookie (Secure over https): the pages open with it alone.
        page = client.get("/admin/quarantine")
        assert page.status_code == 200 and '<table id="quarantine">' in page.text
        # A forged or altered cookie opens nothing.
        value = client.cookies[COOKIE]
        expires, nonce, mac = value.split(".")
        for forged in (f"{int(expires) + 60}.{nonce}.{mac}", f"{expires}.{nonce}.{'0' * 64}",
                       "x", f"{int(time.time()) - 1}.{nonce}.{mac}"):  # fmt: skip
            client.cookies.set(COOKIE, forged, domain="127.0.0.1")
            _problem(client.get("/admin"), 401)
        client.cookies.set(COOKIE, value, domain="127.0.0.1")
        assert client.get("/admin").status_code == 200
        logout = client.post("/admin/logout")
        assert logout.status_code == 303 and logout.headers["location"] == "/admin/login"
        assert f"{COOKIE}=" in logout.headers["set-cookie"]
    with console.client() as client:
        refused = _login(client, "mssa_wrong")
        _problem(refused, 401)
        assert "set-cookie" not in refused.headers
        assert _login(client, console.consumer_token).status_code == 401


def test_a_new_token_ends_the_old_one_and_its_sessions_and_is_audited(
    console: Console, cli: Cli
) -> None:
    first = _admin_token(cli)
    with console.client() as browser:
        assert _login(browser, first).status_code == 303
        assert browser.get("/admin").status_code == 200
        second = cli.ok("admin", "token")
        assert "previous admin token" in second.out
        new = re.search(r"(mssa_\S+)", second.out)
        assert new is not None
        _problem(browser.get("/admin"), 401)  # the old session
    with console.client(first) as client:
        _problem(client.get("/admin"), 401)
    with console.client(new.group(1)) as client:
        assert client.get("/admin").status_code == 200
    entries = cli.ok("audit", "--json").json()
    tokens = [e for e in entries if e["action"] == "admin.token"]
    assert [e["detail"] for e in tokens] == [{"replaced": False}, {"replaced": True}]
    assert first not in cli.ok("audit", "--json").out
    # Only the digest is stored.
    assert AdminToken(console.engine, "test").check(new.group(1))
    from sqlalchemy import text

    with console.engine.connect() as conn:
        stored = conn.execute(text("SELECT token_sha256, session_key FROM admin_token")).one()
    assert new.group(1) not in stored and first not in stored


def test_admin_token_says_when_the_console_is_off(cli: Cli, datadir: Path) -> None:
    out = cli.ok("admin", "token").out
    assert re.search(r"admin token \(shown once, keep it secret\): mssa_[A-Za-z0-9_-]{43}\n", out)
    assert "MSSGATE_ADMIN__ENABLED=true" in out


# -- 10,000 rows ------------------------------------------------------------------------------

ROWS = 10_000
PAGES = ("/admin", "/admin/directory", "/admin/domains", "/admin/spool", "/admin/queue",
         "/admin/quarantine", "/admin/audit")  # fmt: skip


def measure(client: httpx.Client, path: str, repeat: int = 5) -> tuple[float, httpx.Response]:
    """The best of `repeat` loads of `path`, in milliseconds (the first warms caches)."""
    best = float("inf")
    response = client.get(path)
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        best = min(best, (time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.text[:300])
    return best, response


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_pages_of_10000_rows(
    backend: str, enabled: Config, datadir: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        engine = open_engine(enabled.database_url)
        upgrade(engine)
    else:
        engine = request.getfixturevalue("pg_engine")
    running, console = _start(enabled, engine, datadir)
    try:
        seed(engine, ROWS, mailbox=RIS_A)
        token, _ = AdminToken(engine, "test").rotate()
        figures: list[str] = []
        with console.client(token) as client:
            for path in PAGES:
                ms, response = measure(client, path)
                figures.append(f"{path} {ms:.1f} ms")
                if path in ("/admin/spool", "/admin/quarantine"):
                    assert f"{ROWS} in all" in response.text
                elif path not in ("/admin", "/admin/queue"):
                    assert "over 10000 in all" in response.text, path  # counts stop at the cap
            # Deep pages: follow "next" from the middle of each table.
            quarantine_page = client.get("/admin/quarantine").text
            assert "<td>held009999</td>" in quarantine_page  # newest first
            nxt = re.search(r'href="(/admin/quarantine\?before=[^"]+)" rel="next"',
                            quarantine_page)  # fmt: skip
            assert nxt is not None
            second = client.get(nxt.group(1).replace("&amp;", "&")).text
            assert "<td>held009949</td>" in second and "<td>held009950</td>" not in second
            for path, expect in (
                ("/admin/audit?before=5000", "<td>4999</td>"),
                ("/admin/directory?after=dr005000%40annuaire.test", "dr005001@annuaire.test"),
                ("/admin/spool?before=00000001388SEED005000", "00000001387SEED004999"),
                ("/admin/quarantine?before=2026-01-01T01:23:20%2B00:00%7Cheld005000",
                 "held004999"),
            ):  # fmt: skip
                ms, response = measure(client, path)
                figures.append(f"{path} {ms:.1f} ms")
                assert expect in response.text, path
            depth = client.get("/admin/queue").text
            assert re.search(rf"<td>ris-a</td><td>{RIS_A}</td><td>active</td><td>{ROWS}</td>",
                             depth)  # fmt: skip
        line = f"admin console, {ROWS} rows per table, {backend}: " + "; ".join(figures)
        print(line)
        request.node.user_properties.append(("timings", line))
    finally:
        running.stop()
        if backend == "sqlite":
            engine.dispose()
