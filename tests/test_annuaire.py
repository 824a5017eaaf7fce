"""Import of the Annuaire Santé MSSanté extract: a generated 50,000-line file with bad rows."""

from __future__ import annotations

import os
import pty
import random
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mssgate.directory.annuaire import parse_line
from mssgate.identifiers import luhn_check_digit
from tests.conftest import DOMAIN, Cli

HEADER = (
    "Type de BAL|Adresse BAL|Type Identifiant PP|Identifiant PP|Identification nationale PP|"
    "Type identifiant structure|Identification Structure|Service de rattachement|"
    "Civilité d'exercice|Nom d'exercice|Prénom d'exercice|Catégorie profession|"
    "Libellé de catégorie profession|Code Profession|Libellé Profession|Code savoir-faire|"
    "Libellé savoir-faire|Dématérialisation|Raison Sociale structure BAL|"
    "Enseigne commerciale structure BAL|L2COMPLEMENTLOCALISATION|L3COMPLEMENTDISTRIBUTION|"
    "L4NUMEROVOIE|L4COMPLEMENTNUMEROVOIE|NL4TYPEVOIE|L4LIBELLEVOIE|L5LIEUDITMENTION|"
    "L6LIGNEACHEMINEMENT|Code postal|Département|Pays"
)


def rpps(n: int) -> str:
    payload = f"1{n:09d}"
    return payload + luhn_check_digit(payload)


def per_line(address: str, n: int, *, idnat: str | None = None, last: str = "Dupont") -> str:
    cols = [""] * 31
    cols[0], cols[1], cols[2], cols[3] = "PER", address, "8", rpps(n)
    cols[4] = idnat if idnat is not None else "8" + rpps(n)
    cols[8], cols[9], cols[10] = "DR", last, "Élodie"
    cols[11], cols[13], cols[14] = "C", "10", "Médecin"
    cols[28], cols[29], cols[30] = "75013", "75", "France"
    return "|".join(cols)


def org_line(address: str, name: str) -> str:
    cols = [""] * 31
    cols[0], cols[1], cols[18] = "ORG", address, name
    return "|".join(cols)


@pytest.fixture(scope="module")
def extract(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """50,000 data lines: local and remote mailboxes, repeats, and 9 kinds of bad line."""
    rnd = random.Random(20261128)
    lines = [HEADER]
    expected = {"bad": 0, "dupes": 0, "local": 0}
    bad_lines = [
        "PER|only|three",  # too few columns
        per_line("not-an-address", 1),
        per_line(f"x%y@{DOMAIN}", 2),
        per_line(f"bad.rpps@{DOMAIN}", 3, idnat="812345678901"),
        per_line(f"no.id@{DOMAIN}", 4, idnat=""),
        "CAB|" + "|".join([f"cab@{DOMAIN}"] + [""] * 29),
        org_line("ctl@clinique.test", "Bad\x01Name"),
        per_line("user@[10.0.0.1]", 5),
        per_line("a" * 70 + "@remote.test", 6),
    ]
    n = 0
    while len(lines) < 50_001:
        n += 1
        roll = rnd.random()
        if roll < 0.0005 * len(bad_lines) and expected["bad"] < 200:
            lines.append(bad_lines[expected["bad"] % len(bad_lines)])
            expected["bad"] += 1
        elif roll < 0.03 and n > 10:
            # An address repeats on another line (another activity of the same person).
            lines.append(per_line(f"p{n - 7}@remote.test", n - 7))
            expected["dupes"] += 1
        elif roll < 0.05:
            lines.append(per_line(f"p{n}@{DOMAIN}", n))
            expected["local"] += 1
        elif roll < 0.10:
            lines.append(org_line(f"org{n}@remote.test", f"Clinique {n}"))
        else:
            lines.append(per_line(f"p{n}@remote.test", n))
    path = (
        tmp_path_factory.mktemp("annuaire") / "Extraction_Correspondance_MSSante_202611280600.txt"
    )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, expected


def test_import_50000_lines_then_idempotent(
    cli: Cli, datadir: Path, extract: tuple[Path, dict[str, int]]
) -> None:
    path, expected = extract
    first = cli.ok("directory", "import-annuaire", str(path), "--json").json()
    assert first["lines"] == 50_000
    assert first["rejected"] == expected["bad"] > 50
    # Each repeated address is merged; unless its first line was itself a repeat of a line
    # not yet seen (p{n-7} with n-7 a bad or ORG line), which makes it a first occurrence.
    assert 0 < first["merged"] <= expected["dupes"]
    assert first["added"] + first["merged"] + first["rejected"] == 50_000
    assert first["local_mailboxes"] == expected["local"]
    assert first["updated"] == first["unchanged"] == 0
    reasons = {r["reason"] for r in first["rejects"]}
    assert any("3 columns instead of 31" in r for r in reasons)
    assert any("check digit" in r for r in reasons)
    assert any("needs a national identifier (RPPS or ADELI)" in r for r in reasons)
    assert any("unsupported mailbox kind 'CAB'" in r for r in reasons)
    assert any("'%' is not allowed" in r for r in reasons)
    assert any("control characters" in r for r in reasons)
    assert all(r["number"] >= 2 for r in first["rejects"])

    second = cli.ok("directory", "import-annuaire", str(path), "--json").json()
    assert second["added"] == second["updated"] == 0
    assert second["unchanged"] == first["added"]

    con = sqlite3.connect(datadir / "mssgate.db")
    total, local = con.execute("SELECT count(*), sum(local) FROM professionals").fetchone()
    con.close()
    assert total == first["added"]
    assert local == expected["local"]
    # Only local ones are mailboxes; the rest are correspondents.
    assert len(cli.ok("directory", "list", "--json").json()) == expected["local"]
    cli.ok("audit", "verify")


def test_changed_line_updates_and_hosted_mailbox_keeps_its_password(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    cli.ok(
        "directory", "add", f"p1@{DOMAIN}", "--name", "Old", "--rpps", "99700367909",
               "--password-stdin",
        stdin="a long enough password\n",
    )  # fmt: skip
    path = tmp_path / "a.txt"
    path.write_text("\n".join([HEADER, per_line(f"p1@{DOMAIN}", 1, last="Nouveau")]) + "\n")
    report = cli.ok("directory", "import-annuaire", str(path), "--json").json()
    assert report["updated"] == 1
    shown = cli.ok("directory", "show", f"p1@{DOMAIN}", "--json").json()
    assert shown["display_name"] == "Élodie Nouveau"
    assert shown["has_password"] is True


def test_latin1_zip_and_text_report(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    body = "\n".join([HEADER, per_line(f"p9@{DOMAIN}", 9), org_line("o@remote.test", "Hôpital")])
    txt = tmp_path / "Extraction_Correspondance_MSSante_202001010000.txt"
    txt.write_bytes(body.encode("latin-1"))
    archive = tmp_path / "extract.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(txt, txt.name)
    out = cli.ok("directory", "import-annuaire", str(archive)).out
    assert "2 lines: 2 added" in out
    shown = cli.ok("directory", "show", f"p9@{DOMAIN}", "--json").json()
    assert shown["display_name"] == "Élodie Dupont"


def test_only_domain_filter(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    lines = [HEADER, per_line(f"p1@{DOMAIN}", 1), per_line("p2@remote.test", 2)]
    path.write_text("\n".join(lines) + "\n")
    report = cli.ok("directory", "import-annuaire", str(path), "--domain", DOMAIN, "--json").json()
    assert (report["added"], report["skipped_other_domains"]) == (1, 1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a|b|c\n", "not an Annuaire"),
        (b"", "not an Annuaire"),
    ],
)
def test_bad_files(cli: Cli, datadir: Path, tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(content)
    result = cli("directory", "import-annuaire", str(path))
    assert result.code == 1 and message in result.err
    missing = cli("directory", "import-annuaire", str(tmp_path / "missing.txt"))
    assert missing.code == 1 and "file not found" in missing.err


def test_overlong_line_is_rejected_without_buffering(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_text(HEADER + "\n" + "x" * 100_000 + "\n" + per_line(f"p1@{DOMAIN}", 1) + "\n")
    report = cli.ok("directory", "import-annuaire", str(path), "--json").json()
    assert report["rejected"] == 1 and "longer than" in report["rejects"][0]["reason"]
    assert report["added"] == 1
    assert report["rejects"][0]["number"] == 2


def test_parse_line_org_name_fallbacks() -> None:
    cols = [""] * 31
    cols[0], cols[1], cols[7] = "ORG", "secr@remote.test", "Secrétariat imagerie"
    parsed = parse_line(5, "|".join(cols))
    assert not hasattr(parsed, "reason")
    assert parsed.professional.display_name == "Secrétariat imagerie"  # type: ignore[union-attr]


def test_progress_bar_on_a_terminal_and_never_on_stdout(
    extract: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    """On a terminal (stderr) a long import shows a progress bar; stdout keeps the report."""
    path, _ = extract
    mssgate = str(Path(sys.executable).parent / "mssgate")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSSGATE_")}
    data = tmp_path / "data"
    subprocess.run([mssgate, "init", "--data", str(data), "--domain", DOMAIN], env=env,
                   check=True, capture_output=True)  # fmt: skip
    env.update(MSSGATE_CONFIG=str(data / "mssgate.toml"), COLUMNS="120", TERM="xterm")
    master, slave = pty.openpty()
    try:
        with subprocess.Popen(
            [mssgate, "directory", "import-annuaire", str(path)],
            env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
        ) as proc:  # fmt: skip
            os.close(slave)
            terminal = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                terminal += chunk
            assert proc.stdout is not None
            out = proc.stdout.read().decode()
            assert proc.wait(timeout=120) == 0
    finally:
        os.close(master)
    assert "importing" in terminal.decode("utf-8", "replace")
    assert "━" in terminal.decode("utf-8", "replace")  # rich's bar
    # The report alone on stdout, no control sequence in it.
    assert out.startswith("50000 lines:") and "\x1b" not in out, out[:200]
