"""The rule model and the CLI's match expressions (issue 16): what an operator types is
parsed to the same rule whatever wrote it, and anything else is one readable error."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssgate.routing.model import (
    FORMATS,
    Match,
    RuleSpec,
    match_items,
    parse_action,
    parse_match,
)
from mssgate.routing.probe import departement_of
from tests.conftest import Cli

_value = st.text(
    alphabet=string.ascii_letters + string.digits + ".-_:@", min_size=1, max_size=30
).filter(lambda v: v.strip() == v)
_departements = st.sampled_from(["01", "2A", "2B", "75", "95", "971", "976", "988"])


@st.composite
def matches(draw: st.DrawFn) -> Match:
    fields: dict[str, object] = {
        "code": draw(st.lists(_value, max_size=3)),
        "template_id": draw(st.lists(_value, max_size=3)),
        "format": draw(st.lists(st.sampled_from(FORMATS), max_size=2)),
        "departement": draw(st.lists(_departements, max_size=2)),
        "sender_domain": [v.lower() for v in draw(st.lists(_value, max_size=2))],
    }
    if draw(st.booleans()):
        fields["xpath"] = "/cda:ClinicalDocument/cda:code[@code='18748-4' or @code=\"x,y\"]"
    return Match.model_validate(fields)


@given(matches())
def test_match_items_parse_back_to_the_same_match(match: Match) -> None:
    assert parse_match(match_items(match)) == match


@given(st.lists(st.text(max_size=80), max_size=4))
def test_any_text_parses_or_is_refused_with_a_value_error(items: list[str]) -> None:
    try:
        parsed = parse_match(items)
    except ValueError as exc:
        assert str(exc)
    else:
        assert isinstance(parsed, Match)


@given(st.text(max_size=120))
def test_any_action_text_parses_or_is_refused(text: str) -> None:
    try:
        action = parse_action(text)
    except ValueError:
        return
    assert parse_action(action.text()) == action


@given(st.text(alphabet=string.digits + " AB", max_size=7))
def test_departement_of_any_postal_text(text: str) -> None:
    found = departement_of(text)
    assert found is None or Match(departement=(found,)).departement == (found,)


@pytest.mark.parametrize(
    ("postal", "departement"),
    [("75007", "75"), ("20000", "2A"), ("20167", "2A"), ("20200", "2B"), ("20600", "2B"),
     ("97400", "974"), ("98800", "988"), ("01000", "01"), ("750075", None), ("7500", None),
     ("00100", None), ("7500A", None), (None, None)],
)  # fmt: skip
def test_departement_of(postal: str | None, departement: str | None) -> None:
    assert departement_of(postal) == departement


def test_a_rule_in_toml_reads_as_on_the_command_line() -> None:
    spec = RuleSpec.model_validate(
        {"name": "a", "match": {"format": "CDA-N3", "departement": ["2a", "75"]},
         "actions": ["copy-to Archive@Hopital.test", "tag x", "stop"]}
    )  # fmt: skip
    assert spec.match == parse_match(["format=cda-n3", "departement=2A,75"])
    assert [a.text() for a in spec.actions] == ["copy-to archive@hopital.test", "tag x", "stop"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--match", "colour=blue", "--tag", "x"], "unknown field 'colour'"),
        (["--match", "format=docx", "--tag", "x"], "format 'docx' is none of"),
        (["--match", "departement=20", "--tag", "x"], "département '20' is not one"),
        (["--match", "xpath=//[", "--tag", "x"], "XPath does not compile"),
        (["--match", "code", "--tag", "x"], "expected FIELD=VALUE"),
        (["--match", "code=a,,b", "--tag", "x"], "an empty value"),
        (["--match", "code=1"], "a rule needs an action"),
        (["--tag", "has space"], "tag: 1 to 64"),
        (["--copy-to", "not-an-address"], "copy-to"),
    ],
)
def test_a_bad_rule_is_one_line_and_exit_2(
    cli: Cli, datadir: Path, args: list[str], said: str
) -> None:
    result = cli("route", "add", "r1", *args)
    assert result.code == 2, result.err
    assert said in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err
    assert json.loads(cli.ok("route", "list", "--json").out) == {"rules": []}


def test_bad_name_and_crud(cli: Cli, datadir: Path) -> None:
    assert cli("route", "add", "-bad", "--tag", "x").code == 2
    cli.ok("route", "add", "r1", "--match", "code=18748-4", "--tag", "x", "--order", "7")
    again = cli("route", "add", "r1", "--tag", "y")
    assert again.code == 1 and "exists (--replace" in again.err
    shown = json.loads(cli.ok("route", "show", "r1", "--json").out)
    assert shown == {"name": "r1", "order": 7, "enabled": True, "source": "database",
                     "match": ["code=18748-4"], "actions": ["tag x"]}  # fmt: skip
    assert "match: code=18748-4" in cli.ok("route", "show", "r1").out
    assert "r1" in cli.ok("route", "list").out
    cli.ok("route", "remove", "r1")
    missing = cli("route", "remove", "r1")
    assert missing.code == 1 and missing.err.strip() == "mssgate: error: no routing rule 'r1'"


def test_config_rules_are_listed_and_not_changed_by_the_cli(cli: Cli, datadir: Path) -> None:
    config = datadir / "mssgate.toml"
    config.write_text(
        config.read_text()
        + '\n[[routing.rule]]\nname = "from-file"\norder = 1\n'
        + 'match = { format = "pdf" }\nactions = ["tag pdf"]\n'
    )
    [rule] = json.loads(cli.ok("route", "list", "--json").out)["rules"]
    assert rule["source"] == "config" and rule["match"] == ["format=pdf"]
    assert "configuration file" in cli("route", "remove", "from-file").err
    assert "configuration file" in cli("route", "add", "from-file", "--tag", "x").err


def test_a_stored_rule_a_file_rule_shadows_is_shown_and_removable(cli: Cli, datadir: Path) -> None:
    """A rule added with the CLI, then one of the same name written into the file: the file's
    runs; the stored one must not stay hidden, to come back unseen when the file's goes."""
    cli.ok("route", "add", "twin", "--match", "format=pdf", "--tag", "stored")
    config = datadir / "mssgate.toml"
    config.write_text(
        config.read_text()
        + '\n[[routing.rule]]\nname = "twin"\norder = 1\n'
        + 'match = { format = "pdf" }\nactions = ["tag from-file"]\n'
    )
    rules = json.loads(cli.ok("route", "list", "--json").out)["rules"]
    assert [(r["name"], r["source"]) for r in rules] == [
        ("twin", "config"),
        ("twin", "database (shadowed)"),
    ]
    assert "shadowed" in cli.ok("route", "list").out
    removed = cli.ok("route", "remove", "twin")
    assert "stored" in removed.out
    [left] = json.loads(cli.ok("route", "list", "--json").out)["rules"]
    assert left["source"] == "config"
    assert "configuration file" in cli("route", "remove", "twin").err


def test_route_test_a_queued_document(cli: Cli, datadir: Path) -> None:
    from mssgate.config import load_config
    from mssgate.db import open_engine, upgrade
    from mssgate.queue import DocumentQueue
    from tests.queue.helpers import RIS_A, RIS_B, SENDER, add_mailboxes, cda, deliver, mail

    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    add_mailboxes(engine, RIS_A, RIS_B)
    [queued] = deliver(DocumentQueue.from_config(config, engine), mail([cda(1)]))
    engine.dispose()
    cli.ok("route", "add", "n3", "--match", "format=cda-n3", "--match",
           "xpath=//cda:section", "--copy-to", RIS_B)  # fmt: skip
    cli.ok("route", "add", "pdf", "--match", "format=pdf", "--tag", "pdf")
    shown = json.loads(cli.ok("route", "test", queued[:8], "--json").out)
    assert (shown["mailbox"], shown["sender"]) == (RIS_A, SENDER)
    [document] = shown["documents"]
    assert document["rules"] == [
        {"name": "n3", "outcome": f"matches: copy-to {RIS_B}"},
        {"name": "pdf", "outcome": "no match"},
    ]
    assert document["copies"] == [RIS_B]
    missing = cli("route", "test", "nothing-like-this")
    assert missing.code == 1 and "neither a file nor a queued document" in missing.err


def test_quarantine_release_applies_rules_but_not_their_hold(cli: Cli, datadir: Path) -> None:
    from datetime import UTC, datetime

    from mssgate.config import load_config
    from mssgate.db import open_engine, upgrade
    from mssgate.documents.limits import DocumentLimits
    from mssgate.queue import DocumentQueue
    from mssgate.queue.ingest import ingest
    from mssgate.routing.router import Router
    from tests.queue.helpers import RIS_A, RIS_B, SENDER, add_mailboxes, cda, mail

    toml = datadir / "mssgate.toml"
    toml.write_text(toml.read_text().replace("[policy]", "[policy]\nallow_test_ins = true", 1))
    config = load_config(datadir / "mssgate.toml")
    engine = open_engine(config.database_url)
    upgrade(engine)
    add_mailboxes(engine, RIS_A, RIS_B)
    queue = DocumentQueue.from_config(config, engine)
    cli.ok("route", "add", "look", "--order", "1", "--match", "xpath=//cda:section",
           "--copy-to", RIS_B, "--tag", "seen")  # fmt: skip
    cli.ok("route", "add", "hold", "--order", "2", "--hold", "read first")
    report = ingest(
        queue, mail([cda(1)]), mailbox=RIS_A, sender=SENDER, message_id=None, subject=None,
        received_at=datetime.now(UTC), limits=DocumentLimits(), allow_test_oids=True,
        router=Router.from_config(config, engine),
    )  # fmt: skip
    [held] = report.held
    assert queue.entries() == []
    out = cli.ok("quarantine", "release", held).out
    assert "queued" in out
    [addressed] = queue.entries(mailbox=RIS_A)
    [copy] = queue.entries(mailbox=RIS_B)
    assert addressed.record.tags == copy.record.tags == ("seen",)
    engine.dispose()


def test_copy_to_needs_a_mailbox_of_this_gateway(cli: Cli, datadir: Path) -> None:
    from tests.conftest import DOMAIN

    absent = cli("route", "add", "r", "--copy-to", f"nobody@{DOMAIN}")
    assert absent.code == 1
    assert absent.err.strip() == (
        f"mssgate: error: copy-to nobody@{DOMAIN}: no mailbox of this gateway (directory add)"
    )
    cli.ok("directory", "add", f"archive@{DOMAIN}", "--name", "Archive", "--kind", "application")
    added = cli.ok("route", "add", "r", "--copy-to", f"archive@{DOMAIN}").out
    assert f"note: no RIS consumes archive@{DOMAIN} yet" in added


@given(st.binary(max_size=400) | st.text(max_size=400).map(lambda t: f"<a>{t}</a>".encode()))
def test_the_probe_answers_any_bytes_with_facts_or_a_failure(data: bytes) -> None:
    from mssgate.documents.limits import DocumentLimits
    from mssgate.routing.probe import probe_cda

    facts = probe_cda(data, xpaths=("//cda:code",), max_nodes=50, limits=DocumentLimits())
    assert facts.failure is not None or facts.xpaths == {"//cda:code": False}


def test_the_probe_reads_the_d2lm_form_header() -> None:
    from mssgate.documents.limits import DocumentLimits
    from mssgate.routing.probe import probe_cda
    from tests.conftest import REPO

    form = REPO.parent / "shared/fixtures/ansforge/TestContenuCDA-3-0/CANCER-D2LM-FIN_2022.01.xml"
    if not form.exists():
        pytest.skip("../shared/fixtures not present")
    facts = probe_cda(
        form.read_bytes(),
        xpaths=("//cda:templateId[@root='1.2.250.1.213.1.1.1.27']",),
        max_nodes=200_000,
        limits=DocumentLimits(),
    )
    assert facts.failure is None
    assert "1.2.250.1.213.1.1.1.27" in facts.template_ids
    assert facts.service_events == ("QEQK004",)
    assert facts.practice_settings == ("DEPISTAGE",)
    assert facts.departement == "75"
    assert facts.xpaths == {"//cda:templateId[@root='1.2.250.1.213.1.1.1.27']": True}


def test_check_names_a_file_rule_copying_to_no_mailbox(cli: Cli, datadir: Path) -> None:
    from tests.conftest import DOMAIN

    config = datadir / "mssgate.toml"
    config.write_text(
        config.read_text()
        + f'\n[[routing.rule]]\nname = "lost"\nactions = ["copy-to nobody@{DOMAIN}"]\n'
    )
    result = cli("check", "--json")
    checks = {c["check"]: c for c in json.loads(result.out)["checks"]}
    assert checks["routing rules"] == {
        "check": "routing rules", "ok": False,
        "detail": f"rule lost: copy-to nobody@{DOMAIN} is no mailbox of this gateway",
        "warning": False,
    }  # fmt: skip
    assert result.code == 1
    cli.ok("directory", "add", f"nobody@{DOMAIN}", "--name", "N", "--kind", "application")
    checks = {c["check"]: c for c in json.loads(cli.ok("check", "--json").out)["checks"]}
    assert checks["routing rules"]["detail"] == "1 rule(s), 1 of them in the file"
