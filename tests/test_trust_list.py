"""`mssgate domain import-trust-list`: the national MSSanté list, signed with XML-DSig.

Lists are generated here in the published shape and signed with signxml by a certificate of
the data folder's dev CA (the configured `tls.ca`), as the ANS signs with IGC-Santé.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from lxml import etree
from signxml import methods
from signxml.signer import XMLSigner

from mssgate.pki import (
    PrivateKey,
    create_dev_ca,
    issue_server_cert,
    load_certificate,
    load_private_key,
)
from tests.conftest import DOMAIN, Cli

NS = "https://listeblanche.mssante.fr/schema"
DN = "CN={name},OU=31598513500187,O=Operateur {name},ST=Paris (75),C=FR"


@dataclass(frozen=True)
class Signer:
    key: PrivateKey
    cert: x509.Certificate

    def sign(self, document: bytes, *, reference_uri: str | None = None) -> bytes:
        root = etree.fromstring(document)
        signed = XMLSigner(
            method=methods.enveloped,
            signature_algorithm="ecdsa-sha256",
            digest_algorithm="sha256",
        ).sign(
            root,
            key=self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
            cert=[self.cert.public_bytes(Encoding.PEM)],
            reference_uri=reference_uri,
        )
        return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")


def issuer(datadir: Path) -> Signer:
    ca_key = load_private_key(datadir / "certs" / "ca.key.pem")
    ca_cert = load_certificate(datadir / "certs" / "ca.crt.pem")
    key, cert = issue_server_cert(ca_key, ca_cert, "listeblanche.esante.test", extra_names=())
    return Signer(key, cert)


def trust_list(*names: str, dn: str = DN, extra: str = "") -> bytes:
    domains = "".join(
        f"<Domaine><Nom>{n}</Nom><Description>Operateur de {n}</Description>"
        f"<DNCertificatOperateur>{dn.format(name=n)}</DNCertificatOperateur>"
        f"<ResponsableContact>rssi@{n}</ResponsableContact>"
        f"<SupportContact>support@{n}</SupportContact>"
        f"<DateMAJ>2026-10-01 10:00:00</DateMAJ></Domaine>"
        for n in names
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ListeBlanche xmlns="{NS}">'
        f"<DateDeGeneration>2026-11-27T06:00:00</DateDeGeneration>{extra}{domains}"
        "</ListeBlanche>"
    ).encode()


def write(tmp_path: Path, data: bytes, name: str = "liste.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def trusted(cli: Cli) -> dict[str, dict[str, object]]:
    rows = cli.ok("domain", "list", "--json").json()
    return {r["name"]: r for r in rows if r["kind"] == "trusted"}


def actions(cli: Cli) -> list[str]:
    return [e["action"] for e in cli.ok("audit", "--json").json()]


def test_signed_list_is_applied_then_reimport_changes_nothing(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    signer = issuer(datadir)
    path = write(tmp_path, signer.sign(trust_list("clinique-b.test", "labo-c.test", DOMAIN)))
    report = cli.ok("domain", "import-trust-list", str(path), "--json").json()
    assert report["signed"] is True
    assert "CN=listeblanche.esante.test" in report["signer"]
    assert report["generated"] == "2026-11-27T06:00:00"
    assert report["added"] == ["clinique-b.test", "labo-c.test"]
    assert report["removed"] == [] and report["updated"] == []
    # Our own domain is on the national list too: it stays local.
    assert report["skipped"] == [{"name": DOMAIN, "reason": "local domain"}]

    rows = trusted(cli)
    assert set(rows) == {"clinique-b.test", "labo-c.test"}
    assert rows["labo-c.test"]["relay_host"] == "mx.labo-c.test"
    assert rows["labo-c.test"]["relay_port"] == 25
    assert rows["labo-c.test"]["operator_dn"] == DN.format(name="labo-c.test")
    assert actions(cli).count("domain.trust") == 2

    again = cli.ok("domain", "import-trust-list", str(path), "--json").json()
    assert again["added"] == again["removed"] == again["updated"] == []
    assert again["unchanged"] == ["clinique-b.test", "labo-c.test"]
    assert actions(cli).count("domain.trust") == 2
    assert actions(cli).count("domain.import_trust_list") == 2
    assert (
        "0 added, 0 removed, 0 updated, 2 unchanged"
        in cli.ok("domain", "import-trust-list", str(path)).out
    )


def test_reconcile_removes_absent_and_follows_the_operator_dn(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    signer = issuer(datadir)
    cli.ok("domain", "trust", "old-peer.test", "--relay", "relay.old-peer.test:2525")
    cli.ok("domain", "trust", "kept.test", "--relay", "relay.kept.test:2525")
    path = write(tmp_path, signer.sign(trust_list("kept.test", "new.test", dn="CN={name},C=FR")))
    report = cli.ok("domain", "import-trust-list", str(path), "--json").json()
    assert report["added"] == ["new.test"]
    assert report["removed"] == ["old-peer.test"]
    assert report["updated"] == ["kept.test"]
    rows = trusted(cli)
    assert set(rows) == {"kept.test", "new.test"}
    # An existing peer keeps the relay its operator set; only the DN follows the list.
    assert (rows["kept.test"]["relay_host"], rows["kept.test"]["relay_port"]) == (
        "relay.kept.test",
        2525,
    )
    assert rows["kept.test"]["operator_dn"] == "CN=kept.test,C=FR"
    assert "domain.untrust" in actions(cli)


def test_relay_template(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    path = write(tmp_path, issuer(datadir).sign(trust_list("peer.test")))
    cli.ok("domain", "import-trust-list", str(path), "--relay", "smtp.{domain}:10025")
    assert trusted(cli)["peer.test"]["relay_host"] == "smtp.peer.test"
    bad = cli("domain", "import-trust-list", str(path), "--relay", "{domain}:smtp")
    assert bad.code == 2 and "invalid relay template" in bad.err  # an option's value: usage


def test_a_list_altered_after_signing_is_refused(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    signed = issuer(datadir).sign(trust_list("clinique-b.test", "labo-c.test"))
    tampered = signed.replace(b"<Nom>labo-c.test</Nom>", b"<Nom>evil.test</Nom>")
    assert tampered != signed
    for allow in ([], ["--allow-unsigned"]):
        result = cli("domain", "import-trust-list", str(write(tmp_path, tampered)), *allow)
        assert result.code == 1
        assert "does not verify" in result.err
        assert result.err.count("\n") == 1
    assert trusted(cli) == {}


def test_an_added_unsigned_domain_is_refused(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    # Signature wrapping: a Domaine slipped in next to the signed content.
    signed = issuer(datadir).sign(trust_list("clinique-b.test"))
    wrapped = signed.replace(b"<Domaine>", b"<Domaine><Nom>evil.test</Nom></Domaine><Domaine>", 1)
    result = cli("domain", "import-trust-list", str(write(tmp_path, wrapped)))
    assert result.code == 1 and "does not verify" in result.err
    assert trusted(cli) == {}


def test_a_signature_over_one_element_only_is_refused(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    document = trust_list("clinique-b.test").replace(
        b"<DateDeGeneration>", b'<DateDeGeneration Id="gen">'
    )
    signed = issuer(datadir).sign(document, reference_uri="#gen")
    result = cli("domain", "import-trust-list", str(write(tmp_path, signed)))
    assert result.code == 1 and "does not cover the whole list" in result.err
    assert trusted(cli) == {}


def test_a_signer_outside_the_configured_ca_is_refused(
    cli: Cli, datadir: Path, tmp_path: Path
) -> None:
    other_key, other_ca = create_dev_ca("Somebody else")
    key, cert = issue_server_cert(other_key, other_ca, "listeblanche.esante.test")
    path = write(tmp_path, Signer(key, cert).sign(trust_list("clinique-b.test")))
    result = cli("domain", "import-trust-list", str(path))
    assert result.code == 1 and "not trusted" in result.err
    assert trusted(cli) == {}
    # The same list verifies against a bundle that holds its CA (--ca).
    bundle = write(tmp_path, other_ca.public_bytes(Encoding.PEM), "other-ca.pem")
    cli.ok("domain", "import-trust-list", str(path), "--ca", str(bundle))
    assert set(trusted(cli)) == {"clinique-b.test"}


def test_signer_common_name_can_be_required(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    path = write(tmp_path, issuer(datadir).sign(trust_list("clinique-b.test")))
    refused = cli("domain", "import-trust-list", str(path), "--signer-cn", "ans.esante.test")
    assert refused.code == 1 and trusted(cli) == {}
    cli.ok("domain", "import-trust-list", str(path), "--signer-cn", "listeblanche.esante.test")
    assert set(trusted(cli)) == {"clinique-b.test"}


def test_unsigned_list_needs_allow_unsigned(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    path = write(tmp_path, trust_list("clinique-b.test"))
    refused = cli("domain", "import-trust-list", str(path))
    assert refused.code == 1 and "not signed" in refused.err
    assert trusted(cli) == {}
    out = cli.ok("domain", "import-trust-list", str(path), "--allow-unsigned").out
    assert "UNSIGNED" in out and "1 added" in out
    assert set(trusted(cli)) == {"clinique-b.test"}


def test_xxe_is_refused_and_nothing_is_read(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("evil-from-file.test")
    xxe = (
        f'<?xml version="1.0"?>\n<!DOCTYPE l [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        f'<ListeBlanche xmlns="{NS}"><Domaine><Nom>&x;</Nom></Domaine></ListeBlanche>'
    ).encode()
    for allow in ([], ["--allow-unsigned"]):
        result = cli("domain", "import-trust-list", str(write(tmp_path, xxe)), *allow)
        assert result.code == 1 and "DOCTYPE" in result.err
        assert "evil-from-file" not in result.err + result.out
    assert trusted(cli) == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<ListeBlanche><Domaine><Nom>x", "not well-formed"),
        (trust_list(), "names no valid domain"),
        (trust_list("nodot"), "names no valid domain"),
    ],
)
def test_broken_or_empty_lists_change_nothing(
    cli: Cli, datadir: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    cli.ok("domain", "trust", "peer.test", "--relay", "mx.peer.test:25")
    result = cli("domain", "import-trust-list", str(write(tmp_path, content)), "--allow-unsigned")
    assert result.code == 1 and message in result.err
    assert set(trusted(cli)) == {"peer.test"}


def test_invalid_names_are_reported_not_fatal(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    path = write(tmp_path, issuer(datadir).sign(trust_list("good.test", "bad_name!")))
    report = cli.ok("domain", "import-trust-list", str(path), "--json").json()
    assert report["added"] == ["good.test"]
    assert [s["name"] for s in report["skipped"]] == ["bad_name!"]


def test_missing_file(cli: Cli, datadir: Path, tmp_path: Path) -> None:
    result = cli("domain", "import-trust-list", str(tmp_path / "none.xml"))
    assert result.code == 1 and "no such file" in result.err
