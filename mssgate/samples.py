"""`mssgate sample`: small fictitious files for the README tour and first tests of a deployment.

Everything is made here at run time by the project's own builders (the document samples of
`mssgate.documents.samples`, the dev CA of `mssgate.pki`): nothing is read from outside the
package, and no identity in them is real (test INS, RPPS numbers of the test range, *.test
domains).
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from mssgate.directory.annuaire import HEADER
from mssgate.documents.d2lm_samples import D2lmSpec, make_d2lm
from mssgate.documents.samples import (
    PAT_TROIS,
    EntrySpec,
    make_sample_cda,
    make_sample_xdm,
    make_xdm,
)
from mssgate.errors import Conflict
from mssgate.identifiers import luhn_check_digit
from mssgate.pki.ca import create_dev_ca

# The domains of the README tour: the local one and the peer on its trust list.
LOCAL, PEER = "hopital-a.test", "clinique-b.test"
ANNUAIRE_NAME = "Extraction_Correspondance_MSSante_202611280600"


def _rpps(n: int) -> str:
    """An 11-digit RPPS of the 997… range, fictitious, whose Luhn key checks."""
    payload = f"9970036{n:03d}"
    return payload + luhn_check_digit(payload)


def _per(address: str, n: int, title: str, last: str, first: str, code: str, label: str) -> str:
    cols = [""] * len(HEADER)
    rpps = _rpps(n)
    cols[0:5] = ["PER", address, "8", rpps, "8" + rpps]
    cols[8:15] = [title, last, first, "C", "Civil", code, label]
    cols[18] = f"Établissement de {address.split('@', 1)[1]}"
    cols[27:31] = ["75013 PARIS", "75013", "75", "France"]
    return "|".join(cols)


def _org(address: str, name: str, service: str) -> str:
    cols = [""] * len(HEADER)
    cols[0:2] = ["ORG", address]
    cols[7], cols[18] = service, name
    cols[27:31] = ["69003 LYON", "69003", "69", "France"]
    return "|".join(cols)


def annuaire_text() -> str:
    """An extract of 31 columns: people and services of both tour domains, one address on two
    lines (two activities of one person, merged by the import); nothing to reject."""
    lines = [
        "|".join(HEADER),
        _per(f"dr.bernard@{LOCAL}", 1, "DR", "BERNARD", "Luc", "10", "Médecin"),
        _per(f"inf.leroy@{LOCAL}", 2, "M", "LEROY", "Anne", "60", "Infirmier"),
        _org(f"secretariat.radiologie@{LOCAL}", "Hôpital A", "Radiologie"),
        _per(f"dr.petit@{PEER}", 3, "DR", "PETIT", "Marc", "10", "Médecin"),
        _per(f"dr.petit@{PEER}", 3, "DR", "PETIT", "Marc", "10", "Médecin"),
        _per(f"ph.moreau@{PEER}", 4, "M", "MOREAU", "Julie", "21", "Pharmacien"),
        _org(f"accueil@{PEER}", "Clinique B", "Accueil"),
    ]
    return "\r\n".join(lines) + "\r\n"


def annuaire_zip() -> bytes:
    """The extract as published: a ZIP holding one .txt, UTF-8."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{ANNUAIRE_NAME}.txt", annuaire_text().encode("utf-8"))
    return buffer.getvalue()


def peer_ca_pem() -> bytes:
    """The certificate of a peer operator's CA (its key is thrown away: a sample to trust)."""
    _key, cert = create_dev_ca(f"mssgate sample peer CA {PEER}")
    return cert.public_bytes(Encoding.PEM)


def d2lm_fin_eml() -> bytes:
    """A first reader's CANCER-D2LM interpretation form (ACR 1 and 2: eligible for L2, a woman
    of Paris, 75) in an IHE_XDM.ZIP, mailed to the tour's RIS mailbox: what `route test`
    needs to show the d2lm preset at work (the operator has no form of their own before the
    first one arrives). Unsigned: the gateway signs it for a submitting user it holds a key
    for. Lines end CRLF so that it can be submitted as it is (curl --upload-file); the exam is
    today's, so that the screening case it opens counts from 0 days; each sample is a new
    form (its own document id, a UUID OID), opening a case of its own."""
    today = datetime.now(UTC).strftime("%Y%m%d")
    unique = uuid.uuid4()
    # An L1 submission has no L2 reader yet.
    form = make_d2lm(D2lmSpec(l2_reader=None, exam_date=today, doc_root=f"2.25.{unique.int}"))
    message = EmailMessage()
    message["From"] = f"dr.martin@{LOCAL}"
    message["To"] = f"imagerie@{LOCAL}"
    message["Subject"] = "XDM/1.0/DDM+Fiche d'interprétation D2LM PAT-TROIS DOMINIQUE"
    message["Message-ID"] = f"<d2lm-fin-{unique}@{LOCAL}>"
    message.set_content("Fiche d'interprétation de mammographie de dépistage ci-jointe.")
    xdm = make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", form)])
    message.add_attachment(xdm, maintype="application", subtype="zip", filename="IHE_XDM.ZIP")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


@dataclass(frozen=True)
class Sample:
    file_name: str
    make: Callable[[], bytes]
    what: str


SAMPLES = {
    "annuaire": Sample(
        f"{ANNUAIRE_NAME}.zip",
        annuaire_zip,
        "Annuaire Santé MSSanté extract (31 columns; directory import-annuaire)",
    ),
    "peer-ca": Sample(
        "peer-ca.pem", peer_ca_pem, f"CA certificate of the peer {PEER} (domain trust --ca)"
    ),
    "xdm": Sample(
        "IHE_XDM.ZIP",
        make_sample_xdm,
        "IHE XDM archive with a CR-IMG CDA of a test patient (test INS)",
    ),
    "cda": Sample(
        "CR-IMG.xml", make_sample_cda, "CDA R2 imaging report (CR-IMG) of a test patient (test INS)"
    ),
    "d2lm": Sample(
        "D2LM-FIN.eml",
        d2lm_fin_eml,
        "mail with a D2LM interpretation form eligible for L2, département 75, test INS "
        "(route test)",
    ),
}


def write_sample(kind: str, out: Path, *, force: bool = False) -> Path:
    """Writes sample `kind` into the folder `out` (made if missing) and returns its path."""
    sample = SAMPLES[kind]
    out.mkdir(parents=True, exist_ok=True)
    path = out / sample.file_name
    if path.exists() and not force:
        raise Conflict(f"{path} exists already (use --force to overwrite)")
    path.write_bytes(sample.make())
    return path
