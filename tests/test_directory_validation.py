"""One validation for a mailbox, whichever way it enters: `directory add` and the Annuaire
import accept and refuse the same records, for the same reason (issue 18 item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Cli
from tests.test_annuaire import HEADER

RPPS = "99700367909"


# (kind, idnat, profession, display name) -> the reason both paths give, or None: accepted.
CASES = [
    pytest.param("PER", "", "99", "Claire Martin", "needs a national identifier", id="per-no-id"),
    pytest.param("PER", "", "", "Claire Martin", "needs a national identifier", id="per-bare"),
    pytest.param("PER", "99700367908", "10", "Claire Martin", "check digit", id="bad-rpps"),
    pytest.param("PER", RPPS, "1 0", "Claire Martin", "profession code", id="bad-profession"),
    pytest.param("PER", RPPS, "10", "Bad\x01Name", "control characters", id="control-name"),
    pytest.param("PER", RPPS, "99", "Claire Martin", None, id="per-with-rpps"),
    pytest.param("ORG", "", "", "Imagerie", None, id="org"),
]

CLI_KIND = {"PER": "person", "ORG": "organisation"}


def annuaire_line(address: str, kind: str, idnat: str, profession: str, name: str) -> str:
    cols = [""] * 31
    cols[0], cols[1], cols[4], cols[13] = kind, address, idnat, profession
    if kind == "PER":
        cols[9] = name  # Nom d'exercice
    else:
        cols[18] = name  # Raison sociale
    return "|".join(cols)


@pytest.mark.parametrize(("kind", "idnat", "profession", "name", "reason"), CASES)
def test_directory_add_and_import_agree(
    cli: Cli,
    datadir: Path,
    tmp_path: Path,
    kind: str,
    idnat: str,
    profession: str,
    name: str,
    reason: str | None,
) -> None:
    by_hand, imported = f"hand@{DOMAIN}", f"import@{DOMAIN}"
    args = ["directory", "add", by_hand, "--name", name, "--kind", CLI_KIND[kind]]
    # The 12-character national form, as the extract writes it (8 + RPPS): both paths read
    # the same value.
    args += ["--rpps", "8" + idnat] if idnat else []
    args += ["--profession", profession] if profession else []
    added = cli(*args)

    extract = tmp_path / "extract.txt"
    line = annuaire_line(imported, kind, idnat and "8" + idnat, profession, name)
    extract.write_text(f"{HEADER}\n{line}\n", encoding="utf-8")
    report = cli.ok("directory", "import-annuaire", str(extract), "--json").json()

    if reason is None:
        assert added.code == 0, added.err
        assert (report["added"], report["rejected"]) == (1, 0), report
        return
    assert added.code == 1
    assert reason in added.err and added.err.count("\n") == 1
    assert report["rejected"] == 1 and report["added"] == 0, report
    [reject] = report["rejects"]
    assert reject["number"] == 2 and reason in reject["reason"]
    # Not merely the same topic: the very words, because it is the very check.
    assert added.err == f"mssgate: error: {reject['reason']}\n"
