"""`mssgate sample annuaire|peer-ca|xdm|cda|d2lm --out DIR`: the README tour's files, made by the
package itself (issue 18 item 2)."""

from __future__ import annotations

import email
import email.policy
import io
import json
import subprocess
import zipfile
from pathlib import Path

from lxml import etree

from mssgate.directory.annuaire import COLUMNS
from mssgate.documents import Accepted, Quarantined, process_message
from tests.conftest import Cli
from tests.documents.factory import make_mail


def test_each_sample_is_written_and_said(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "samples"
    names = {}
    for kind in ("annuaire", "peer-ca", "xdm", "cda", "d2lm"):
        result = cli.ok("sample", kind, "--out", str(out))
        [path] = [p for p in out.iterdir() if p.name not in names.values()]
        names[kind] = path.name
        assert result.out.startswith(f"wrote {path}")
    assert names == {
        "annuaire": "Extraction_Correspondance_MSSante_202611280600.zip",
        "peer-ca": "peer-ca.pem",
        "xdm": "IHE_XDM.ZIP",
        "cda": "CR-IMG.xml",
        "d2lm": "D2LM-FIN.eml",
    }
    again = cli("sample", "cda", "--out", str(out))
    assert again.code == 1 and "exists already (use --force to overwrite)" in again.err
    cli.ok("sample", "cda", "--out", str(out), "--force")
    assert cli("sample", "bogus", "--out", str(out)).code == 2


def test_the_annuaire_extract_imports_with_nothing_rejected(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    cli.ok("sample", "annuaire", "--out", str(tmp_path))
    [extract] = tmp_path.glob("Extraction_Correspondance_MSSante_*.zip")
    with zipfile.ZipFile(extract) as archive:
        [member] = archive.namelist()
        lines = archive.read(member).decode("utf-8").splitlines()
    assert member.endswith(".txt") and all(len(line.split("|")) == COLUMNS for line in lines)
    report = cli.ok("directory", "import-annuaire", str(extract), "--json").json()
    assert (report["rejected"], report["added"], report["merged"]) == (0, 6, 1)
    assert report["local_mailboxes"] == 3
    again = cli.ok("directory", "import-annuaire", str(extract), "--json").json()
    assert (again["added"], again["unchanged"], again["rejected"]) == (0, 6, 0)


def test_the_peer_ca_is_accepted_by_domain_trust(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    cli.ok("sample", "peer-ca", "--out", str(tmp_path))
    ca = tmp_path / "peer-ca.pem"
    text = subprocess.run(
        ["openssl", "x509", "-in", str(ca), "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "CA:TRUE" in text
    cli.ok(
        "domain", "trust", "clinique-b.test", "--relay", "mx.clinique-b.test:25", "--ca", str(ca)
    )
    [peer] = [
        d for d in cli.ok("domain", "list", "--json").json() if d["name"] == "clinique-b.test"
    ]
    assert peer["kind"] == "trusted" and "sample peer CA clinique-b.test" in peer["ca_subject"]


def test_the_documents_pass_a_test_deployments_pipeline(cli: Cli, tmp_path: Path) -> None:
    cli.ok("sample", "xdm", "--out", str(tmp_path))
    cli.ok("sample", "cda", "--out", str(tmp_path))
    for name, content_type in (("IHE_XDM.ZIP", "application/zip"), ("CR-IMG.xml", "text/xml")):
        raw = make_mail([(name, (tmp_path / name).read_bytes(), content_type)])
        [accepted] = process_message(raw, allow_test_oids=True).outcomes
        assert isinstance(accepted, Accepted), getattr(accepted, "reason", None)
        assert accepted.record.ins.value == "279035121518989" and accepted.record.ins.test
        # With the defaults (no test INS), held: 906, as the README says.
        [held] = process_message(raw).outcomes
        assert isinstance(held, Quarantined) and held.code == 906


def test_the_d2lm_form_shows_the_preset_at_work_in_route_test(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    """The operator guide tests the d2lm preset with `route test FILE.eml`: the sample is such
    a file, an eligible form of département 75, routed to 75's CRCDC."""
    toml = datadir / "mssgate.toml"
    toml.write_text(toml.read_text().replace("[policy]", "[policy]\nallow_test_ins = true", 1))
    for box in ("imagerie@hopital-a.test", "crcdc@hopital-a.test"):
        cli.ok("directory", "add", box, "--name", box, "--kind", "organisation")
    cli.ok("route", "preset", "d2lm", "--crcdc", "75=crcdc@hopital-a.test")
    cli.ok("sample", "d2lm", "--out", str(tmp_path))
    raw = (tmp_path / "D2LM-FIN.eml").read_bytes()
    # Submitted as it is (curl --upload-file): SMTP refuses a bare LF.
    assert raw.count(b"\n") == raw.count(b"\r\n")
    shown = json.loads(cli.ok("route", "test", str(tmp_path / "D2LM-FIN.eml"), "--json").out)
    assert shown["mailbox"] == "imagerie@hopital-a.test"
    [document] = shown["documents"]
    assert document["result"] == "queued for imagerie@hopital-a.test", document
    assert document["tags"] == ["d2lm-l2"] and document["copies"] == ["crcdc@hopital-a.test"]
    matched = {r["name"] for r in document["rules"] if r["outcome"].startswith("matches")}
    assert matched == {"d2lm-l2-75"}
    # Each sample is a new form (a case of its own), not a resend of the last one.
    cli.ok("sample", "d2lm", "--out", str(tmp_path), "--force")
    again = (tmp_path / "D2LM-FIN.eml").read_bytes()
    assert _form_id(again) != _form_id(raw)


def _form_id(raw: bytes) -> str:
    """The ClinicalDocument/id root of the form in the mail's IHE_XDM.ZIP."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    [part] = [p for p in message.walk() if p.get_filename() == "IHE_XDM.ZIP"]
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        root = etree.fromstring(archive.read("IHE_XDM/SUBSET01/DOC0001.XML"))
    found = root.find("{urn:hl7-org:v3}id")
    assert found is not None
    return str(found.get("root"))
