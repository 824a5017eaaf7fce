"""The admin console under a hostile client: page cursors out of every range, a login
form stuffed with fields, error answers, wrong tokens over and over. Each must end in a
4xx problem with the console's headers, never a 500 or a traceback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, text

from mssgate.api.admin import COUNT_CAP, Views
from mssgate.api.admin import LOGIN_FAILURES as LIMIT
from mssgate.config import Config
from mssgate.db import open_engine, upgrade
from mssgate.directory.admin_token import AdminToken
from tests.api.admin_seed import seed
from tests.api.test_admin_console import Console, _start, enabled  # noqa: F401 (fixture)
from tests.queue.helpers import RIS_A


@pytest.fixture(params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest,
    enabled: Config,  # noqa: F811 (the fixture imported above)
    datadir: Path,
) -> Iterator[tuple[Console, str]]:
    """The console on either database, and an admin token."""
    engine: Engine
    if request.param == "sqlite":
        engine = open_engine(enabled.database_url)
        upgrade(engine)
    else:
        engine = request.getfixturevalue("pg_engine")
    running, console = _start(enabled, engine, datadir)
    token, _ = AdminToken(engine, "test").rotate()
    try:
        yield console, token
    finally:
        running.stop()
        if request.param == "sqlite":
            engine.dispose()


def _console_headers(response: httpx.Response) -> None:
    assert "default-src 'none'" in response.headers.get("content-security-policy", ""), (
        response.status_code,
        dict(response.headers),
    )
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert isinstance(body, dict) and body["status"] == status
    _console_headers(response)
    return body


HOSTILE_CURSORS = (
    # Past a 32-bit integer column (audit.seq on PostgreSQL), past 64 bits (SQLite, psycopg).
    "/admin/audit?before=2147483648",
    "/admin/audit?before=9223372036854775808",
    "/admin/audit?before=99999999999999999999",
    # PostgreSQL refuses NUL in a text parameter.
    "/admin/directory?after=%00",
    "/admin/domains?after=peer%00.test",
    "/admin/spool?before=%00",
    "/admin/quarantine?before=2026-01-01T00:00:00%2B00:00%7Cheld%00",
    # A moment that leaves the calendar once taken to UTC.
    "/admin/quarantine?before=0001-01-01T00:00:00%2B05:00%7Cheld000001",
    "/admin/quarantine?before=9999-12-31T23:59:59-05:00%7Cheld000001",
)


@pytest.mark.parametrize("path", HOSTILE_CURSORS)
def test_page_cursors_out_of_range_are_422_not_500(served: tuple[Console, str], path: str) -> None:
    console, token = served
    with console.client(token) as client:
        body = _problem(client.get(path), 422)
    assert "Traceback" not in str(body) and "/" not in str(body.get("detail", ""))


def test_a_quarantine_cursor_in_another_offset_is_the_same_moment(
    served: tuple[Console, str],
) -> None:
    console, token = served
    seed(console.engine, 100, mailbox=RIS_A)
    # held000050 arrived at 00:00:50 UTC: the same moment written at +05:00.
    with console.client(token) as client:
        utc = client.get("/admin/quarantine?before=2026-01-01T00:00:50%2B00:00%7Cheld000050")
        east = client.get("/admin/quarantine?before=2026-01-01T05:00:50%2B05:00%7Cheld000050")
    assert utc.status_code == east.status_code == 200
    for page in (utc.text, east.text):
        assert "<td>held000049</td>" in page
        assert "<td>held000050</td>" not in page and "<td>held000099</td>" not in page


def test_a_login_form_with_too_many_fields_is_a_400(served: tuple[Console, str]) -> None:
    console, _ = served
    stuffed = "&".join(f"f{i}=x" for i in range(50))
    with console.client() as client:
        response = client.post(
            "/admin/login",
            content=stuffed,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    _problem(response, 400)
    assert "set-cookie" not in response.headers


def test_a_server_error_under_admin_has_the_console_headers_and_no_traceback(
    served: tuple[Console, str],
) -> None:
    console, token = served
    # A real failure: the table the page reads is gone.
    from mssgate.db.tx import write

    with write(console.engine) as conn:
        conn.execute(text("ALTER TABLE audit RENAME TO audit_gone"))
    with console.client(token) as client:
        response = client.get("/admin/audit")
        body = _problem(response, 500)
        assert body["detail"] == "internal error"
        assert "audit_gone" not in response.text and "Traceback" not in response.text
        # The connection is still good for the next page.
        assert client.get("/admin/directory").status_code == 200


# -- wrong tokens over and over ---------------------------------------------------------------


def _from(console: Console, address: str, token: str | None = None) -> httpx.Client:
    """A client whose connections leave from `address` (another loopback address)."""
    transport = httpx.HTTPTransport(verify=console.ca, local_address=address)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=console.base_url, transport=transport, headers=headers)


def test_wrong_tokens_from_one_address_are_throttled(served: tuple[Console, str]) -> None:
    console, token = served
    wrong = "mssa_" + "A" * 43
    with console.client() as anonymous:
        # Opening a page without a token is no guess: never throttled.
        for _ in range(LIMIT + 5):
            assert anonymous.get("/admin").status_code == 401
    with console.client() as client:
        for _ in range(LIMIT // 2):
            _problem(client.post("/admin/login", data={"token": wrong}), 401)
            _problem(client.get("/admin", headers={"Authorization": f"Bearer {wrong}"}), 401)
        # One more guess, by either way, is refused before the token is looked at.
        held = _problem(client.post("/admin/login", data={"token": wrong}), 429)
        assert "too many" in str(held["detail"])
        wait = int(client.post("/admin/login", data={"token": wrong}).headers["retry-after"])
        assert 0 < wait <= 60
        # The right token too, while the address is held: a guesser cannot tell it worked.
        right = client.post("/admin/login", data={"token": token})
        _problem(right, 429)
        assert "set-cookie" not in right.headers
        _problem(client.get("/admin", headers={"Authorization": f"Bearer {token}"}), 429)
        page = client.post("/admin/login", data={"token": token}, headers={"Accept": "text/html"})
        assert page.status_code == 429 and '<form class="login"' in page.text
        _console_headers(page)
    # Another address is not held.
    with _from(console, "127.0.0.2", token) as other:
        assert other.get("/admin").status_code == 200


# -- rows read per page -----------------------------------------------------------------------

# Big enough that an unbounded count reads more than the cap; most rows in a final state,
# as on a gateway that has run for months (done spool entries and documents, released
# quarantine), so a count of what is still waiting must not read the history.
HISTORY = COUNT_CAP + 2000
WAITING = 300
SMALL_TABLES = {"consumers", "nodes"}  # a few rows each, by nature


def _with_history(engine: Engine) -> None:
    seed(engine, HISTORY, mailbox=RIS_A)
    from mssgate.db.tx import write

    with write(engine) as conn:
        conn.execute(
            text("UPDATE spool_messages SET state = 'done' WHERE id NOT LIKE :keep"),
            {"keep": "%SEED01%"},
        )
        conn.execute(
            text("UPDATE queue_documents SET state = 'done' WHERE id < :keep"),
            {"keep": f"doc{HISTORY - WAITING:06d}"},
        )
        conn.execute(
            text("UPDATE quarantine SET state = 'released' WHERE id < :keep"),
            {"keep": f"held{HISTORY - WAITING:06d}"},
        )
        conn.execute(
            text("UPDATE spool_recipients SET state = 'delivered' WHERE spool_id NOT LIKE :k"),
            {"k": "%SEED01%"},
        )
    if engine.dialect.name == "postgresql":
        # As autovacuum would: the UPDATEs above left dead row versions in every index.
        # This test's tables only: a VACUUM of the whole database waited on the other tests'
        # schemas being made and dropped side by side (pytest-xdist; 46 s instead of 9) and
        # held them up in turn.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            tables = conn.execute(
                text(
                    "SELECT quote_ident(table_name) FROM information_schema.tables"
                    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                )
            ).scalars()
            conn.execute(text("VACUUM ANALYZE " + ", ".join(tables)))


def _statements(engine: Engine) -> list[tuple[str, Any]]:
    """Every statement the console's pages run."""
    seen: list[tuple[str, Any]] = []

    def keep(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: Any) -> None:
        seen.append((statement, parameters))

    views = Views(engine)
    event.listen(engine, "before_cursor_execute", keep)
    try:
        views.counts()
        views.nodes(timedelta(seconds=60))  # mailboxes homed: among every correspondent
        views.queue_depth()
        for page in (views.directory, views.domains):
            page(50, None)
        views.spool(50, None)
        views.quarantine(50, None)
        views.audit(50, None)
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    return seen


def _rows_read(plan: dict[str, Any]) -> int:
    loops = int(plan.get("Actual Loops", 1))
    read = 0
    if "Scan" in plan["Node Type"]:
        read = (int(plan["Actual Rows"]) + int(plan.get("Rows Removed by Filter", 0))) * loops
    return read + sum(_rows_read(p) for p in plan.get("Plans", ()))


def test_no_page_reads_the_whole_history(served: tuple[Console, str]) -> None:
    console, _ = served
    engine = console.engine
    _with_history(engine)
    statements = _statements(engine)
    assert len(statements) >= 12
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # On tables this small the planner may prefer a sequential scan anyway; what
            # matters is that a bounded plan exists for when the tables are big.
            conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            if engine.dialect.name == "postgresql":
                explained = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
                ).scalar_one()
                read = _rows_read(explained[0]["Plan"])
                assert read <= COUNT_CAP + 1 + 2 * WAITING, (read, statement)
            else:
                plan = [
                    row[3]
                    for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                ]
                # SCAN CONSTANT ROW: a SELECT of no table (the database's clock).
                scans = [p for p in plan if p.startswith("SCAN ") and p != "SCAN CONSTANT ROW"]
                # A scan that reads rows of a big table, not an index...
                scans = [p for p in scans if not p.split()[1].startswith("anon_")]  # subqueries
                bare = [p for p in scans if " USING " not in p and p.split()[1] != "audit"]
                assert all(p.split()[1] in SMALL_TABLES for p in bare), (plan, statement)
                # ...and no scan at all without a bound.
                if "LIMIT" not in statement:
                    assert all(p.split()[1] in SMALL_TABLES for p in scans), (plan, statement)


def test_a_count_past_the_cap_says_over(served: tuple[Console, str]) -> None:
    console, token = served
    _with_history(console.engine)
    with console.client(token) as client:
        audit = client.get("/admin/audit").text
        quarantine = client.get("/admin/quarantine").text
    assert f"over {COUNT_CAP} in all" in audit
    assert f"over {COUNT_CAP} in all" in quarantine


# -- every value a sender, a peer or an operator wrote --------------------------------------

XSS = "\"'><script>alert(9)</script><img src=x onerror=alert(8)>javascript:alert(7)"


def test_no_stored_value_becomes_markup_or_a_link(served: tuple[Console, str]) -> None:
    console, token = served
    from mssgate import audit as audit_trail
    from mssgate.db.schema import domains, nodes, professionals
    from mssgate.db.tx import write
    from mssgate.directory.timeutil import now

    at = now()
    with write(console.engine) as conn:
        conn.execute(nodes.insert().values(name="n" + XSS[:40], address=XSS, added_at=at))
        conn.execute(domains.insert().values(
            name="a" + XSS[:60], kind="trusted", relay_host=XSS[:200], relay_port=25,
            operator_dn=XSS, added_at=at))  # fmt: skip
        conn.execute(professionals.insert().values(
            address="0" + XSS[:100] + "@x.test", display_name=XSS, kind="PER", state="active",
            local=False, source="annuaire", created_at=at, updated_at=at))  # fmt: skip
    # Enough rows that each page's "next" link carries a hostile value as its cursor.
    seed(console.engine, 120, mailbox=RIS_A, sender=XSS[:200])
    with write(console.engine) as conn:  # the newest entry, on the audit's first page
        audit_trail.append(conn, actor=XSS[:60], action=XSS[:60], subject=XSS, detail={XSS: XSS})
    paths = ["/admin", "/admin/directory", "/admin/domains", "/admin/spool"]
    paths += ["/admin/quarantine", "/admin/audit"]
    with console.client(token) as client:
        pages = {path: client.get(path).text for path in paths}
    for path, page in pages.items():
        assert "<script>" not in page and "<img" not in page, path
        assert "alert(" in page, path  # the value is shown, as text
        links = [href for href in re.findall(r'href="([^"]*)"', page)]
        assert links and all(h.startswith("/admin") for h in links), (path, links)
        assert "javascript:" not in " ".join(links), path


def test_a_trailing_slash_redirect_never_names_the_requests_host(
    served: tuple[Console, str],
) -> None:
    console, token = served
    # Starlette redirects /admin/x/ to /admin/x, as an absolute URL built from the Host
    # header: a forged Host (a proxy that passes it on) would send the browser elsewhere.
    with console.client(token) as client:
        for path, target in (("/admin/", "/admin"), ("/admin/audit/?before=5", "/admin/audit")):
            response = client.get(path, headers={"Host": "evil.example"})
            assert response.status_code == 307, path
            assert response.headers["location"].startswith(target), response.headers
            assert "evil.example" not in response.headers["location"]
            _console_headers(response)
