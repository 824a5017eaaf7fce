"""The README's tour, run as written (issue 18): the shell commands of its fenced blocks, read
from README.md at each run (editing the README changes the test), run one after the other in
one bash as a user types them, each checked against what the README says it does.

Only two things differ from a user's terminal: /tmp/gw is a fresh temporary folder, and the
tour's port base 20000 becomes a base whose ports are free here (so that the tour runs beside
anything, as it runs beside `make run`). `make install` is not run: this test runs inside the
virtual environment it made (tests/test_make_run.py covers it). NeoMutt asks at its compose
screen: it runs in a terminal of its own (a pty), and the test types what the README says.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

# The tour holds the default ports (`make run`'s) while it runs: under pytest-xdist it runs on
# one worker with tests/test_make_run.py, never beside it.
pytestmark = pytest.mark.xdist_group("default-ports")

README = REPO / "README.md"
TOUR_DATA = "/tmp/gw"
TOUR_BASE = 20000
# The ports the tour's gateway listens on, relative to its base (mssgate init --port-base).
OFFSETS = (24, 25, 143, 443, 465, 587, 993)
# A heredoc's opening (`cat > f <<'EOF'`): its lines up to the terminator are one command.
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")


def tour_commands() -> list[str]:
    """Every command of the tour's blocks (after the demo's), continuation lines joined and a
    heredoc kept with its command (its lines as written, comments included)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## A five-minute tour") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) >= 2, "the tour lost its blocks"
    commands = []
    for block in blocks[1:]:  # the first is `mssgate demo` (tests/test_demo.py)
        lines = iter(re.sub(r"\\\n\s*", " ", block).splitlines())
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            here = HEREDOC.search(line)
            if here is not None:
                body = []
                for more in lines:
                    body.append(more)
                    if more.strip() == here.group(1):
                        break
                else:
                    raise AssertionError(f"heredoc without its {here.group(1)}: {line}")
                line = "\n".join([line, *body])
            commands.append(line)
    return commands


def _free_base() -> int:
    """A base below the ephemeral range whose seven ports are free now."""
    for base in range(21000, 32000, 1000):
        socks = []
        try:
            for offset in OFFSETS:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port base between 21000 and 32000")


def _hold_default_ports() -> list[socket.socket]:
    """Listening sockets on the default ports that are free, as `make run` would hold them."""
    held = []
    for port in (10025, 10143, 10443, 10465, 10587, 10993):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()  # taken already: by a gateway, or something else
    return held


@dataclass
class Ran:
    command: str
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"$ {self.command}\nexit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@dataclass
class Shell:
    """One bash, fed the commands one by one like a terminal: variables, `export`, `.`,
    background jobs and `kill %1` carry from one command to the next."""

    folder: Path
    proc: subprocess.Popen[str] = field(init=False)
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    count: int = 0

    def __post_init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
        env["COLUMNS"] = "200"
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def run(self, command: str, timeout: float = 120) -> Ran:
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        assert self.proc.stdin is not None
        # Braces, not a subshell: the command runs in this shell, its output to files (a
        # background job keeps writing to its own).
        self.proc.stdin.write(f"{{ {command}\n}} >{out} 2>{err} </dev/null\necho __END__ $?\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no end after {timeout} s: {command}") from None
            if line.startswith("__END__ "):
                code = int(line.split()[1])
                break
        return Ran(command, code, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>])")


def in_a_terminal(command: str, answers: tuple[tuple[str, bytes], ...], timeout: float = 60) -> Ran:
    """`command` in a terminal of its own (a pty, 24x100) as a user runs it: each answer is typed
    once its prompt shows on the screen. What the screen showed is `out`, escapes removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    env["TERM"] = "xterm"
    main, side = pty.openpty()
    termios.tcsetwinsize(side, (24, 100))
    proc = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-c", command],
        cwd=REPO,
        env=env,
        stdin=side,
        stdout=side,
        stderr=side,
        start_new_session=True,
    )
    os.close(side)
    screen = ""
    answered = 0  # where the screen stood at the last answer: its prompt must show after it
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if pending and pending[0][0] in ESCAPES.sub("", screen[answered:]):
                time.sleep(0.5)  # the screen is drawn: the key lands in the prompt, not before it
                os.write(main, pending.pop(0)[1])
                answered = len(screen)
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the terminal's last process is gone
                    chunk = b""
                if not chunk:
                    break
                screen += chunk.decode(errors="replace")
            if time.monotonic() > deadline:
                shown = ESCAPES.sub("", screen)
                raise AssertionError(f"no end after {timeout} s: {command}\n{shown}")
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    out = ESCAPES.sub("", screen)
    assert not pending, f"{command}: never asked {pending[0][0]!r}\n{out}"
    return Ran(command, code, out, "")


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    sh = Shell(outputs)
    yield sh
    sh.close()


def _one_line_error(ran: Ran, *words: str, after_logs: bool = False) -> None:
    """Exit 1 and one error line on stderr (after serve's JSON log lines, for serve)."""
    assert ran.code == 1, ran
    lines = ran.err.strip().splitlines()
    if after_logs:
        assert all(line.startswith("{") for line in lines[:-1]), ran
        lines = lines[-1:]
    [line] = lines
    assert line.startswith("mssgate: error: "), ran
    for word in words:
        assert word in line, ran


@dataclass
class Step:
    """What the README says a command does: `check` raises if it did not; `retry` repeats the
    command for a while first, as a user runs `queue list` again until the document is there."""

    matches: Callable[[str], bool]
    check: Callable[[Ran], None]
    retry: bool = False
    seen: bool = False
    # Prompts and what a user types at each: the command runs in a terminal (in_a_terminal).
    typed: tuple[tuple[str, bytes], ...] = ()


def test_the_readme_tour_runs_as_written(shell: Shell, tmp_path: Path) -> None:
    data = tmp_path / "gw"
    base = _free_base()
    ports = {name: base + n for name, n in (("submission", 587), ("imaps", 993), ("api", 443))}
    serve_pid: list[int] = []
    token: list[str] = []

    status = data / "run" / "serve.json"

    def started_pid(wait: float) -> int | None:
        """serve's pid from its status file, written just after the API starts answering."""
        deadline = time.monotonic() + wait
        while not status.exists():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        started = json.loads(status.read_text())
        assert started["ports"]["submission"] == ports["submission"]
        assert started["ports"]["api"] == ports["api"]
        return int(started["pid"])

    def serving(ran: Ran) -> None:
        # No waiting here: the README's next command must be what waits, as for a user
        # who pastes the block.
        assert ran.code == 0, ran
        serve_pid.append(0)  # started; its pid once known

    def healthy(ran: Ran) -> None:
        # `|| tail` exits 0 whatever curl did: the health document itself must be there.
        log = (data / "serve.log").read_text(errors="replace")
        assert '{"status":"ok"' in ran.out, f"{ran}\n--- serve.log\n{log[-2000:]}"
        pid = started_pid(10)
        assert pid is not None, "/healthz answered but serve.json is missing"
        serve_pid[:] = [pid]

    def stopped(ran: Ran) -> None:
        assert ran.code == 0, ran
        deadline = time.monotonic() + 60
        while (data / "run" / "serve.json").exists():
            assert time.monotonic() < deadline, "serve did not stop on SIGTERM"
            time.sleep(0.2)
        log = (data / "serve.log").read_text(errors="replace")
        assert '"event": "serve.stopped"' in log, log[-2000:]
        serve_pid.clear()

    def token_set(ran: Ran) -> None:
        assert ran.code == 0, ran
        echoed = shell.run('printf %s "$TOKEN"')
        assert echoed.out.startswith("mssg_"), echoed
        token.append(echoed.out)

    def leased(ran: Ran) -> None:
        assert ran.code == 0, ran
        [lease] = json.loads(ran.out)["leases"]
        document = lease["document"]
        assert document["ins"]["value"] == "279035121518989" and document["ins"]["test"]
        assert document["mailbox"] == "imagerie@hopital-a.test"
        assert [i["accession_number"] for i in document["imaging"]] == ["ACC-0001"]

    def ok(ran: Ran) -> None:
        assert ran.code == 0, ran

    def has(*words: str) -> Callable[[Ran], None]:
        def check(ran: Ran) -> None:
            assert ran.code == 0, ran
            for word in words:
                assert word in ran.out, ran

        return check

    def signed_by_neomutt(ran: Ran) -> None:
        has("smime=pass", "Subject: Premier message", "premier message sign")(ran)
        assert "signed by gateway" not in ran.out, ran

    steps = [
        Step(
            lambda c: c.startswith("mssgate init "),
            has(f"ports          submission {ports['submission']}", f"RIS API {ports['api']}"),
        ),
        Step(
            lambda c: "directory add dr.x@" in c,
            lambda r: _one_line_error(r, "99700367908", "check digit"),
        ),
        Step(
            lambda c: c == "mssgate directory list",
            has("dr.martin@hopital-a.test", "imagerie@hopital-a.test"),
        ),
        Step(lambda c: c.startswith("openssl verify"), has("dr.martin@hopital-a.test.crt.pem: OK")),
        Step(lambda c: c.startswith("mssgate sample peer-ca"), has("peer-ca.pem")),
        Step(lambda c: c.startswith("mssgate sample annuaire"), has("Extraction_Correspondance")),
        Step(lambda c: c.startswith("mssgate sample xdm"), has("IHE_XDM.ZIP")),
        Step(lambda c: c.startswith("mssgate domain trust"), has("trusted clinique-b.test")),
        Step(lambda c: c.startswith("TOKEN=$(mssgate consumer add"), token_set),
        Step(
            lambda c: "import-annuaire" in c,
            has("7 lines: 6 added", "1 merged", "0 rejected", "3 local mailboxes"),
        ),
        Step(lambda c: c == "mssgate audit verify", ok),
        Step(lambda c: c == "mssgate check", has("ok   configuration")),
        Step(lambda c: c.startswith("mssgate serve"), serving),
        Step(lambda c: "/healthz" in c, healthy),
        Step(lambda c: c.startswith("cat > /tmp/gw/muttrc <<"), ok),
        Step(
            lambda c: c.startswith("neomutt "),
            # y at the compose screen sends; Enter at the passphrase prompt (none). Signed by
            # NeoMutt: the fetch below finds no word of the gateway's own signing.
            has("Security: Sign (S/MIME)", "Mail sent"),
            typed=(("Security: Sign (S/MIME)", b"y"), ("Enter S/MIME passphrase:", b"\r")),
        ),
        Step(
            lambda c: "imaps://" in c and "UID=1" in c,
            # Signed by NeoMutt itself: no word of the gateway's signing.
            signed_by_neomutt,
            retry=True,
        ),
        Step(lambda c: c.startswith("printf 'From: dr.martin@"), ok),
        Step(lambda c: c.startswith("curl") and "--mail-rcpt dr.martin@" in c, ok),
        Step(
            lambda c: "imaps://" in c and "UID=2" in c,
            has(
                "smime=pass (signed by gateway for authenticated user)",
                "Subject: Sans signature",
                "application/pkcs7-signature",
            ),
            retry=True,
        ),
        Step(lambda c: c.startswith("swaks --dump-mail"), ok),
        Step(lambda c: c.startswith("curl") and "--mail-rcpt imagerie@" in c, ok),
        Step(lambda c: c == "mssgate queue list", has("ready"), retry=True),
        Step(lambda c: "/v1/leases" in c, leased),
        Step(lambda c: c == "kill %1", stopped),
    ]

    def adapt(command: str) -> str:
        command = command.replace(TOUR_DATA, str(data))
        # The tour's ports (20000 + n) on the free base.
        return re.sub(r"\b20(\d{3})\b", lambda m: str(base + int(m.group(1))), command)

    make_run = _hold_default_ports()  # the tour runs beside `make run`'s gateway
    try:
        for written in tour_commands():
            if written == "make install" or written.startswith("make install "):
                continue
            command = adapt(written)
            bare = re.sub(r"\s+# .*$", "", written)  # without the README's comment
            step = next((s for s in steps if s.matches(bare)), None)
            deadline = time.monotonic() + 30
            while True:
                if step is not None and step.typed:
                    ran = in_a_terminal(command, step.typed)
                else:
                    ran = shell.run(command)
                try:
                    (step.check if step is not None else ok)(ran)
                    break
                except AssertionError:
                    if step is None or not step.retry or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            if step is not None:
                step.seen = True
    finally:
        for held in make_run:
            held.close()
        for pid in serve_pid:  # a failed step left serve running (maybe still starting)
            pid = pid or started_pid(60) or 0
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
    missing = [i for i, s in enumerate(steps) if not s.seen]
    assert not missing, f"steps the README no longer has: {missing}"
    assert token


def test_a_second_gateway_on_the_default_ports_says_which_port_in_one_line(
    shell: Shell, tmp_path: Path
) -> None:
    """The tour without --port-base, beside a gateway on the defaults (`make run`): one line
    naming the listener, the port and how to choose another, exit 1."""
    data = tmp_path / "gw"
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 10587))
        holder.listen()
    except OSError:
        holder.close()  # something listens there already: the same collision
    try:
        shell.run(". .venv/bin/activate")
        init = shell.run(f"mssgate init --data {data} --domain hopital-a.test")
        assert init.code == 0, init
        ran = shell.run(f"MSSGATE_CONFIG={data}/mssgate.toml mssgate serve", timeout=60)
    finally:
        holder.close()
    _one_line_error(
        ran,
        "cannot listen for SMTP submission on 127.0.0.1:10587: the port is in use",
        "choose another port with smtp.submission_port (or MSSGATE_SMTP__SUBMISSION_PORT)",
        after_logs=True,
    )
