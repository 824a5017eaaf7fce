"""The admin console in a real browser: Debian's Chromium, headless, driven over the DevTools
protocol on a pipe (--remote-debugging-pipe: no port, no extra library). It logs in through
the form as a person would, then the test reads the page's text and takes a screenshot."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_admin_console import Console, _admin_token, serve_console
from tests.conftest import Cli

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on PATH (Debian package `chromium`; .ci/run installs it)",
    ),
]

WAIT_SECONDS = 60.0


class Browser:
    """One headless Chromium and one page, spoken to over fds 3 and 4 (NUL-ended JSON)."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()

        args = [
            CHROMIUM, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}",
            # The dev CA is not in the browser's store; the test trusts the server it started.
            "--ignore-certificate-errors", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--window-size=1280,1400",
        ]  # fmt: skip
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        # Both ends moved above 9, then a tiny launcher puts them on 3 and 4 and becomes
        # Chromium (in this process 3 and 4 may be pytest's or subprocess's own pipes).
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        launcher = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
            " os.close(int(sys.argv[1])); os.close(int(sys.argv[2]));"
            " os.execv(sys.argv[3], sys.argv[3:])"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", launcher, *map(str, ends), *args, "about:blank"],
            pass_fds=ends,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in ends:
            os.close(fd)
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable", session=True)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def call(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = self.session
        os.write(self._commands, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            message = self._read(deadline)
            if message.get("id") == self._next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    del self.events[: i + 1]
                    return
            self.events.append(self._read(deadline))

    def load(self, action: str, **params: Any) -> None:
        self.events.clear()
        self.call(action, session=True, **params)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True)  # fmt: skip
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, EOFError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        os.close(self._commands)
        os.close(self._replies)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    started = Browser(tmp_path / "chromium-profile")
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def console(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Console]:
    yield from serve_console(datadir, monkeypatch)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the pixels (one bytes per pixel) of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    size = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * size
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - size] if x >= size else 0
            b = previous[x]
            c = previous[x - size] if x >= size else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                near = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + near) & 255
        rows.append(line)
        previous = line
    pixels = [bytes(r[x : x + 3]) for r in rows for x in range(0, stride, size)]
    return width, height, pixels


def test_a_browser_logs_in_and_sees_every_table(
    console: Console, cli: Cli, browser: Browser, tmp_path: Path
) -> None:
    token = _admin_token(cli)
    # Without a session the console is the login form (a 401 page, no table).
    browser.load("Page.navigate", url=console.base_url + "/admin")
    assert browser.evaluate("document.querySelectorAll('table').length") == 0
    assert browser.evaluate("!!document.querySelector('form.login')") is True
    # Log in as a person would: type the token, submit the form.
    browser.evaluate(f"document.getElementById('token').value = {json.dumps(token)}; true")
    browser.load("Runtime.evaluate", expression="document.querySelector('form.login').submit()")
    assert browser.evaluate("location.pathname") == "/admin"
    # The session cookie is HttpOnly: the page's scripts cannot read it.
    assert browser.evaluate("document.cookie") == ""
    tables = browser.evaluate("[...document.querySelectorAll('table')].map(t => t.id)")
    assert tables == ["node", "nodes", "tasks", "failing", "counts", "queue", "quarantine", "spool",
                      "audit", "domains", "directory"]  # fmt: skip
    text = browser.evaluate("document.body.innerText")
    for expected in ("Queue depth per consumer", "Quarantine", "Spool", "Audit trail",
                     "Domains and trust list", "Directory", "hopital-a.test", "ris-a",
                     "admin.token", "OperationalError"):  # fmt: skip
        assert expected in text, expected
    # The stylesheet ran under the CSP (its hash allowed it): the header is coloured.
    assert (
        browser.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor")
        == "rgb(29, 53, 87)"
    )
    # Another page with the same session, through a link as a person would follow it.
    browser.load("Page.navigate", url=console.base_url + "/admin/audit")
    assert browser.evaluate("document.querySelector('table').id") == "audit"

    browser.load("Page.navigate", url=console.base_url + "/admin")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", session=True,
                                         format="png")["data"])  # fmt: skip
    path = tmp_path / "admin.png"
    path.write_bytes(shot)
    width, height, pixels = png_pixels(path.read_bytes())
    assert width >= 800 and height >= 600
    colours = set(pixels)
    not_white = sum(1 for p in pixels if p != b"\xff\xff\xff")
    # A blank page is one colour; the console has a dark header, tables and text.
    assert len(colours) > 50, len(colours)
    assert not_white / len(pixels) > 0.05, not_white / len(pixels)
    assert b"\x1d\x35\x57" in colours  # the header's colour, #1d3557
    print(f"screenshot {path}: {width}x{height}, {len(colours)} colours, "
          f"{not_white / len(pixels):.0%} not white")  # fmt: skip
