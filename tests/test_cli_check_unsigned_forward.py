"""`mssgate check` warns (a WARN line, exit 0) when signatures are not required and a routing
rule forwards: a forward is a new message signed by our application mailbox, so unsigned mail
(anyone's word) would go on under that mailbox's signature."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli
from tests.queue.helpers import RIS_A, RIS_B


def _signatures(datadir: Path, required: bool) -> None:
    config = datadir / "mssgate.toml"
    text = config.read_text()
    assert "require_signature = true" in text or "require_signature = false" in text
    text = text.replace("require_signature = true", "require_signature = false")
    if required:
        text = text.replace("require_signature = false", "require_signature = true")
    config.write_text(text)


def _warnings(cli: Cli) -> tuple[list[dict[str, object]], list[str]]:
    checks = json.loads(cli.ok("check", "--json").out)["checks"]  # a warning is no failure
    lines = cli.ok("check").out.splitlines()
    return [c for c in checks if c.get("warning")], [x for x in lines if x.startswith("WARN")]


def test_check_warns_when_unsigned_mail_may_be_forwarded(cli: Cli, datadir: Path) -> None:
    _signatures(datadir, required=False)
    cli.ok("directory", "add", RIS_A, "--name", "RIS", "--kind", "application")
    cli.ok("directory", "add", RIS_B, "--name", "RIS B", "--kind", "application")
    cli.ok("consumer", "add", "ris", "--mailbox", RIS_A)  # its signing key
    cli.ok("route", "add", "tagged", "--action", "tag imaging")
    # No forward: nothing goes out under our signature.
    assert _warnings(cli) == ([], [])
    cli.ok("route", "add", "f", "--match", "format=cda-n3", "--action",
           f"forward {RIS_B} from {RIS_A}")  # fmt: skip
    [entry], [line] = _warnings(cli)
    assert entry["check"] == "unsigned forwards" and entry["ok"] is True
    assert line.startswith("WARN unsigned forwards: [policy] require_signature = false")
    assert "rule f forwards" in line and "application mailbox" in line
    _signatures(datadir, required=True)
    assert _warnings(cli) == ([], [])
