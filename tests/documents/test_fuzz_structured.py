"""Fuzz targets with an oracle: archives, XDM references, CDA headers and PDFs built from
drawn values, so that the expected result is known and checked, not just "no crash".

- zip: the reader gives back exactly the members written, or refuses for the first rule
  broken (count, unsafe or duplicate name, sizes), never writing a file;
- XDM: a document reference resolves only to a member of the archive, never through `..`,
  a scheme or an absolute path;
- CDA: patient traits, identifiers, title and N1 body come back as written;
- PDF: damaged files give typed errors and bounded output; generated ones give their text
  back, labelled INS included.
"""

from __future__ import annotations

import io
import posixpath
import re
import warnings
import zipfile

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from mssgate.documents import (
    DocumentError,
    DocumentLimits,
    LimitExceeded,
    PdfError,
    ZipError,
    parse_cda,
    read_pdf,
    read_xdm,
    read_zip,
)
from mssgate.ins import compute_key, hl7_date_to_iso, parse_sex
from tests.fuzzing import mutated, no_file_writes

from .factory import (
    PAT_TROIS,
    CdaSpec,
    EntrySpec,
    Patient,
    make_cda,
    make_loop_pdf,
    make_metadata,
    make_pdf,
    zip_tree,
)

pytestmark = pytest.mark.fuzz

# -- zip ---------------------------------------------------------------------------------------
ZIP_LIMITS = DocumentLimits(max_zip_members=8, max_zip_member_bytes=600, max_zip_total_bytes=2000)
_segment = st.sampled_from(["IHE_XDM", "SUBSET01", "DOC0001.XML", "a", "ß", "A", "x.pdf", "é"])
_unsafe = st.sampled_from(["..", "../x", "/abs", "a\\b", "C:/x", "c:x", "a/../b", "/", "./.."])
_name = st.one_of(
    st.lists(_segment, min_size=1, max_size=4).map("/".join),
    st.lists(_segment, min_size=1, max_size=2).map(lambda s: "/".join(s) + "/"),  # a folder
    _unsafe,
)


def _unsafe_name(name: str) -> bool:
    # The rules of docs/documents.md, written out again so the reader is checked against them.
    return (
        "\\" in name
        or name.startswith("/")
        or re.match(r"[A-Za-z]:", name) is not None
        or ".." in name.split("/")
    )


def _expected_zip(stored: list[tuple[str, bytes]]) -> type[DocumentError] | None:
    if len(stored) > ZIP_LIMITS.max_zip_members:
        return LimitExceeded
    folded: set[str] = set()
    for name, _ in stored:
        if _unsafe_name(name) or name.casefold() in folded:
            return ZipError
        folded.add(name.casefold())
    total = 0
    for name, data in stored:
        if name.endswith("/"):
            continue
        total += len(data)
        if len(data) > ZIP_LIMITS.max_zip_member_bytes or total > ZIP_LIMITS.max_zip_total_bytes:
            return LimitExceeded
    return None


@given(
    st.lists(st.tuples(_name, st.binary(max_size=700)), max_size=10),
    st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
def test_zip_reader_against_its_rules(members: list[tuple[str, bytes]], method: int) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", method) as archive:
        warnings.simplefilter("ignore")  # duplicate names are the point, zipfile warns
        for name, data in members:
            archive.writestr(name, b"" if name.endswith("/") else data)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        # The names as zipfile stored them are the input of the rules (it rewrites a few).
        stored = [(i.filename, archive.read(i)) for i in archive.infolist()]
    expected = _expected_zip(stored)
    with no_file_writes():
        if expected is not None:
            with pytest.raises(expected):
                read_zip(buffer.getvalue(), ZIP_LIMITS)
            return
        contents = read_zip(buffer.getvalue(), ZIP_LIMITS)
    assert [(m.name, m.data) for m in contents.members] == [
        (n, d) for n, d in stored if not n.endswith("/")
    ]


# -- XDM references ---------------------------------------------------------------------------
_uri = st.one_of(
    st.sampled_from(
        ["DOC0001.XML", "doc0001.xml", "SUBSET01/DOC0001.XML", "../DOC0001.XML", "/DOC0001.XML",
         "file:DOC0001.XML", "SUBSET01\\DOC0001.XML", "./DOC0001.XML",
         "IHE_XDM/SUBSET01/DOC0001.XML", "SUBSET01/../SUBSET01/DOC0001.XML", "README.TXT",
         "../../README.TXT", "", "OTHER/X.PDF"]
    ),
    st.lists(_segment, min_size=1, max_size=3).map("/".join),
)  # fmt: skip
_member = st.sampled_from(
    ["IHE_XDM/SUBSET01/DOC0001.XML", "IHE_XDM/DOC0001.XML", "README.TXT", "IHE_XDM/OTHER/X.PDF",
     "IHE_XDM/SUBSET01/a/ß", "DOC0001.XML"]
)  # fmt: skip


@given(st.lists(_uri, min_size=1, max_size=4), st.lists(_member, unique=True, max_size=5))
def test_xdm_references_resolve_inside_the_archive(uris: list[str], names: list[str]) -> None:
    metadata = make_metadata(PAT_TROIS, [EntrySpec(uri, b"x") for uri in uris], subset="SUBSET01")
    archive = zip_tree([("IHE_XDM/SUBSET01/METADATA.XML", metadata)] + [(n, b"x") for n in names])
    with no_file_writes():
        package = read_xdm(archive, DocumentLimits())
    members = {m.name for m in package.contents.members}
    (submission,) = package.submissions
    for entry in submission.entries:
        if entry.member_name is None:
            continue
        uri = entry.uri or ""
        event("an entry resolved")  # the property is not vacuous: see --hypothesis-show-statistics
        assert entry.member_name in members
        assert not ("\\" in uri or ":" in uri or uri.startswith("/") or ".." in uri.split("/"))
        assert entry.member_name.casefold() in (
            posixpath.join("IHE_XDM/SUBSET01", uri).casefold(),
            posixpath.join("IHE_XDM", uri).casefold(),
        )


# -- CDA headers -------------------------------------------------------------------------------
# XML 1.0 text: no control characters other than white space, no surrogates or non-characters.
_xml_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Co"), blacklist_characters="\ufffe"),
    max_size=30,
)
_digits = st.text(alphabet="0123456789", min_size=13, max_size=13)


def _norm(text: str) -> str | None:
    return " ".join(text.split()) or None


@st.composite
def _patients(draw: st.DrawFn) -> Patient:
    matricule = draw(_digits)
    ins = matricule + compute_key(matricule) if draw(st.booleans()) else draw(_xml_text)
    return Patient(
        ins=ins,
        oid=draw(st.sampled_from(["1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.8", "9.9"])),
        family=draw(_xml_text),
        given_list=draw(_xml_text),
        first_given=draw(_xml_text),
        sex=draw(st.one_of(st.sampled_from(["M", "F", "U", "m", " f "]), _xml_text)),
        birth_time=draw(st.one_of(st.from_regex(r"[0-9]{4,8}", fullmatch=True), _xml_text)),
        birthplace=draw(st.one_of(st.none(), _xml_text)),
    )


@given(
    _patients(),
    _xml_text,
    st.one_of(st.none(), st.tuples(st.booleans(), st.binary(min_size=1, max_size=200))),
)
def test_cda_header_round_trip(
    patient: Patient, title: str, body: tuple[bool, bytes] | None
) -> None:
    # N1 bodies, half of them with a PDF header: both sides of the "announced as PDF" check.
    pdf = None if body is None else (b"%PDF-" if body[0] else b"") + body[1]
    spec = CdaSpec(patient=patient, title=title, level="N3" if pdf is None else "N1", pdf=pdf)
    with no_file_writes():
        try:
            cda = parse_cda(make_cda(spec), DocumentLimits())
        except DocumentError as exc:
            # The one refusal a well-formed document can earn: a PDF body that is not one.
            assert pdf is not None and not pdf.startswith(b"%PDF-"), exc
            return
    header = cda.header
    traits = header.traits
    assert traits.birth_family == _norm(patient.family)
    assert traits.first_given == _norm(patient.first_given)
    assert traits.given == (_norm(patient.given_list) or _norm(patient.first_given))
    assert traits.sex == parse_sex(patient.sex)
    assert traits.birth_date == hl7_date_to_iso(patient.birth_time)
    assert traits.birthplace == (_norm(patient.birthplace) if patient.birthplace else None)
    assert header.title == _norm(title)
    ids = {(i.root, i.extension) for i in header.patient_ids}
    assert (patient.oid, patient.ins.strip() or None) in ids
    assert cda.body == pdf


# -- PDF ---------------------------------------------------------------------------------------
PDF_LIMITS = DocumentLimits(
    max_pdf_pages=3, pdf_ins_pages=2, max_pdf_text_chars=400, pdf_time_budget_seconds=5
)
PDF_SEEDS = [
    make_pdf(["Compte rendu", "INS : 279035121518989"], pages=2, title="CR"),
    make_pdf(["x" * 80] * 6, pages=5),
    make_loop_pdf(),
]
_PDF_SNIPPETS = (
    b" 0 R",
    b"/Kids [1 0 R]",
    b"/Count 99999999",
    b"/Length 999999",
    b"/Filter /FlateDecode",
    b"/Encrypt 1 0 R",
    b"endobj",
    b"stream\n",
    b"<<",
    b">>",
    b"(",
    b"\\",
    b"trailer",
)


@given(mutated(PDF_SEEDS, _PDF_SNIPPETS))
def test_damaged_pdfs_give_typed_errors_and_bounded_output(data: bytes) -> None:
    with no_file_writes():
        try:
            info = read_pdf(data, PDF_LIMITS)
        except (PdfError, LimitExceeded):
            return
    assert 1 <= info.pages_read <= min(info.page_count, PDF_LIMITS.max_pdf_pages)
    assert info.pages_read <= PDF_LIMITS.pdf_ins_pages
    # Reading stops at a cap, at the last page, or after the page that carries the INS.
    assert (
        info.truncated
        or info.pages_read in (info.page_count, PDF_LIMITS.pdf_ins_pages)
        or (info.ins_page == info.pages_read and info.labelled_ins)
    )
    # Page texts are joined with one newline each.
    assert len(info.text) <= PDF_LIMITS.max_pdf_text_chars + info.pages_read
    assert len(info.metadata) <= 32 and all(len(v) <= 1000 for v in info.metadata.values())
    for value in info.labelled_ins:
        assert len(value) == 15 and value[13:] == compute_key(value[:13])


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789.,:-", min_size=1)


@given(
    st.lists(st.lists(_word, min_size=1, max_size=5).map(" ".join), min_size=1, max_size=4),
    st.integers(min_value=1, max_value=3),
    _digits,
)
def test_generated_pdfs_give_their_text_back(lines: list[str], pages: int, matricule: str) -> None:
    ins = matricule + compute_key(matricule)
    data = make_pdf([*lines, f"INS : {ins}"], pages=pages, title=lines[0])
    with no_file_writes():
        info = read_pdf(data, DocumentLimits())
    # The INS is on every page: the first is the only one read.
    assert (info.page_count, info.pages_read, info.ins_page, info.truncated) == (pages, 1, 1, False)
    text = " ".join(info.text.split())
    for line in lines:
        assert line in text
    assert info.metadata.get("Title") == lines[0]
    assert ins in info.labelled_ins
