"""`--json` output: what every command prints is what docs/operator-guide.md documents.

The guide's "JSON output" table is the contract (interface.md: stable and documented); each
command runs here against real data, and its keys must be exactly the documented ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mssgate.config import load_config
from mssgate.db import open_engine, upgrade
from mssgate.queue import DocumentQueue
from mssgate.routing.model import Rule, parse_action, parse_match
from mssgate.routing.store import RuleStore
from mssgate.spool import Spool, new_queue_id
from tests.conftest import DOMAIN, REPO, Cli
from tests.documents.factory import CdaSpec, make_cda
from tests.queue.helpers import RIS_A, add_mailboxes, cda, deliver, mail
from tests.test_annuaire import HEADER, per_line
from tests.test_trust_list import trust_list


def documented() -> dict[str, tuple[set[str], set[str]]]:
    """command -> (kinds printed, documented keys), from the guide's table."""
    guide = (REPO / "docs" / "operator-guide.md").read_text()
    section = guide.split("## JSON output (`--json`)\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[set[str], set[str]]] = {}
    for line in section.splitlines():
        if not line.startswith("| `mssgate "):
            continue
        commands, prints, keys = (c.strip() for c in line.strip("|").split("|"))
        # Values in parentheses are examples and enumerations, not keys.
        names = set(re.findall(r"`([^`]+)`", re.sub(r"\([^()]*\)", "", keys)))
        kinds = [k.strip() for k in prints.split(",")]
        commands_ = re.findall(r"`mssgate ([^`]+)`", commands)
        for i, command in enumerate(commands_):
            table[command] = ({kinds[min(i, len(kinds) - 1)]}, names)
    return table


def keys_of(value: dict[str, Any], wanted: set[str]) -> set[str]:
    """Top-level keys, plus `a[].b` / `a.b` for the parents the documentation details."""
    found = set()
    for key, item in value.items():
        if isinstance(item, list) and any(k.startswith(f"{key}[].") for k in wanted):
            assert item, f"{key}: the test data must give at least one element"
            found |= {f"{key}[].{sub}" for element in item for sub in element}
        elif isinstance(item, dict) and any(k.startswith(f"{key}.") for k in wanted):
            found |= {f"{key}.{sub}" for sub in item}
        else:
            found.add(key)
    return found


def test_json_output_matches_the_operator_guide(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    mailbox = f"a@{DOMAIN}"
    annuaire = tmp_path / "extract.txt"
    annuaire.write_text("\n".join([HEADER, per_line(f"p9@{DOMAIN}", 9), "too|few|columns"]))
    xml = tmp_path / "liste.xml"
    xml.write_bytes(trust_list("clinique-b.test", "not a domain"))
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    queue = DocumentQueue.from_config(config, engine)
    add_mailboxes(engine, RIS_A)
    [ready] = deliver(queue, mail([cda(1)]))
    [held] = deliver(queue, mail([make_cda(CdaSpec(include_ins=False))]))
    RuleStore(engine).add(
        Rule(name="imaging", match=parse_match(["code=18748-4"]), actions=(parse_action("tag x"),)),
        actor="test",
    )
    Spool(engine, datadir / "spool").accept(
        queue_id=new_queue_id(), content=b"Subject: x\r\n\r\nx\r\n", listener="submission",
        sender=mailbox, identity=mailbox, peer="127.0.0.1", recipients=[(RIS_A, "local")],
    )  # fmt: skip
    engine.dispose()
    runs = {
        "directory add": ["directory", "add", mailbox, "--name", "A", "--rpps", "99700367909"],
        "directory show": ["directory", "show", mailbox],
        "directory list": ["directory", "list"],
        "directory import-annuaire": ["directory", "import-annuaire", str(annuaire)],
        "cert issue": ["cert", "issue", mailbox, "--out", str(tmp_path / "certs")],
        "cert list": ["cert", "list", mailbox],
        "consumer add": ["consumer", "add", "ris", "--mailbox", mailbox],
        "consumer cert": ["consumer", "cert", "ris", "--out", str(tmp_path / "ris")],
        "consumer token": ["consumer", "token", "ris", "--grace", "1h"],
        "consumer list": ["consumer", "list"],
        "admin token": ["admin", "token"],
        "domain import-trust-list": ["domain", "import-trust-list", str(xml), "--allow-unsigned"],
        "domain list": ["domain", "list"],
        "check": ["check"],
        "audit": ["audit"],
        "audit verify": ["audit", "verify"],
        "spool list": ["spool", "list"],
        "node list": ["node", "list"],
        "queue list": ["queue", "list"],
        "queue show": ["queue", "show", ready],
        "quarantine list": ["quarantine", "list"],
        "quarantine show": ["quarantine", "show", held],
        "route list": ["route", "list"],
        "route show": ["route", "show", "imaging"],
        "route test": ["route", "test", ready],
        "route preset d2lm": ["route", "preset", "d2lm", "--list"],
        "screening list": ["screening", "list"],
    }
    docs = documented()
    # Needs two serving nodes: tests/smtp/test_nodes_move.py checks its keys against the guide.
    several_nodes = {"directory move"}
    assert sorted(docs) == sorted([*runs, *several_nodes]), "the guide documents other commands"
    for command in several_nodes:
        del docs[command]
    for command, args in runs.items():
        kinds, keys = docs[command]
        printed = cli.ok(*args, "--json").json()
        if isinstance(printed, list):
            assert kinds == {"list"}, command
            assert printed, f"{command}: the test data must give at least one row"
            shown = set().union(*(keys_of(row, keys) for row in printed))
        else:
            assert kinds == {"object"}, command
            shown = keys_of(printed, keys)
        assert shown == keys, f"{command}: printed {sorted(shown ^ keys)} differ from the guide"


def test_every_command_with_json_is_documented() -> None:
    import typer

    from mssgate.cli.app import app

    def walk(command: Any, path: str) -> set[str]:
        # Duck-typed: typer ships its own copy of click, whose classes are not click's.
        found = {path} if any("--json" in p.opts for p in command.params) else set()
        for name, sub in getattr(command, "commands", {}).items():
            found |= walk(sub, f"{path} {name}".strip())
        return found

    assert walk(typer.main.get_command(app), "") == set(documented())
