"""The patient domain's operator DN through the CLI: `domain trust` keeps a stored DN unless
told otherwise (without one any IGC-Santé gateway certificate could write as a patient; the
check's warning is tests/test_cli_check_patient_domain.py)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli

PATIENTS = "patient.mssante.fr"  # [policy] patient_domain's default
DN = "CN=mx.patient.mssante.fr,O=Operateur MES,C=FR"


def _stored_dn(cli: Cli, domain: str) -> str | None:
    rows = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}
    dn: str | None = rows[domain]["operator_dn"]
    return dn


def test_a_rerun_without_operator_dn_keeps_the_stored_one(cli: Cli, datadir: Path) -> None:
    cli.ok("domain", "trust", PATIENTS, "--relay", "mx1.test:25", "--operator-dn", DN)
    # A relay change, say: the DN given once is not dropped for want of being repeated.
    out = cli.ok("domain", "trust", PATIENTS, "--relay", "mx2.test:25").out
    assert _stored_dn(cli, PATIENTS) == DN
    assert f"operator DN kept: {DN}" in out
    rows = {d["name"]: d for d in cli.ok("domain", "list", "--json").json()}
    assert rows[PATIENTS]["relay_host"] == "mx2.test"
    other = "CN=mx3.patient.mssante.fr,O=Operateur MES,C=FR"
    cli.ok("domain", "trust", PATIENTS, "--relay", "mx2.test:25", "--operator-dn", other)
    assert _stored_dn(cli, PATIENTS) == other
    cli.ok("domain", "trust", PATIENTS, "--relay", "mx2.test:25", "--clear-operator-dn")
    assert _stored_dn(cli, PATIENTS) is None


def test_operator_dn_and_its_clearing_together_are_a_usage_error(cli: Cli, datadir: Path) -> None:
    cli.ok("domain", "trust", PATIENTS, "--relay", "mx1.test:25", "--operator-dn", DN)
    result = cli(
        "domain", "trust", PATIENTS, "--relay", "mx1.test:25",
        "--operator-dn", DN, "--clear-operator-dn",
    )  # fmt: skip
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert "--operator-dn" in line and "--clear-operator-dn" in line
    assert _stored_dn(cli, PATIENTS) == DN


def test_domain_list_shows_the_operator_dn(cli: Cli, datadir: Path) -> None:
    """`mssgate check` says to give the DN; the table is where an operator checks it was kept
    (it showed the CA only, the DN in --json alone)."""
    cli.ok("domain", "trust", PATIENTS, "--relay", "mx1.test:25", "--operator-dn", DN)
    table = cli.ok("domain", "list").out
    assert "operator DN" in table and DN in table
