"""`mssgate check` warns (a WARN line, exit 0) when the patient domain is on the trust list
without an operator DN: any IGC-Santé gateway certificate could then write as a patient."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Cli
from tests.test_cli_patient_domain_trust import DN, PATIENTS


def test_check_warns_when_the_patient_domain_has_no_operator_dn(cli: Cli, datadir: Path) -> None:
    def patient_check() -> tuple[dict[str, object], str]:
        result = cli.ok("check", "--json")  # a warning is no failure: exit 0
        checks = {c["check"]: c for c in result.json()["checks"]}
        text = cli.ok("check").out
        [line] = [x for x in text.splitlines() if "patient domain" in x]
        return checks["patient domain"], line

    entry, line = patient_check()
    assert entry["ok"] is True and entry["warning"] is False
    assert line.startswith("ok   patient domain:") and "not on the trust list" in line

    cli.ok("domain", "trust", PATIENTS, "--relay", "mx1.test:25")
    entry, line = patient_check()
    assert entry["ok"] is True and entry["warning"] is True
    assert line.startswith(f"WARN patient domain: {PATIENTS} is trusted without an operator DN")
    assert "--operator-dn" in line

    cli.ok("domain", "trust", PATIENTS, "--relay", "mx1.test:25", "--operator-dn", DN)
    entry, line = patient_check()
    assert entry["ok"] is True and entry["warning"] is False
    assert line == f"ok   patient domain: {PATIENTS} trusted, operator DN {DN}"
