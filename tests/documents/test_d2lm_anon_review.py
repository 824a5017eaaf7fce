"""Hostile review of the GP's copy of an L2 result (issue 16 section 2): the L2 reader
written where a CRCDC's software may write it, in shapes the first version did not read."""

from __future__ import annotations

import unicodedata

import pytest
from lxml import etree

from mssgate.documents.cda import parse_cda
from mssgate.documents.d2lm_anon import PLACEHOLDER, AnonymisationError, anonymise_l2_reader
from mssgate.documents.d2lm_samples import D2lmSpec, Reader, make_d2lm
from mssgate.documents.limits import DocumentLimits

LIMITS = DocumentLimits()
H = "urn:hl7-org:v3"
NS = {"h": H}
L2_SECTION = "//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.174']"


def h(path: str) -> str:
    return "/".join(f"{{{H}}}{step}" for step in path.split("/"))


def form(reader: Reader) -> etree._Element:
    return etree.fromstring(make_d2lm(D2lmSpec(l2_reader=reader, l2_right="ACR1", l2_left="ACR1")))


def section(root: etree._Element) -> etree._Element:
    found = root.xpath(L2_SECTION, namespaces=NS)
    assert isinstance(found, list) and len(found) == 1
    [element] = found
    assert isinstance(element, etree._Element)
    return element


def copy_text(root: etree._Element) -> str:
    data = anonymise_l2_reader(bytes(etree.tostring(root, encoding="UTF-8")), LIMITS).data
    return unicodedata.normalize("NFC", data.decode()).casefold()


def _section_author(root: etree._Element, *, ident: dict[str, str]) -> etree._Element:
    author = etree.Element(h("author"))
    etree.SubElement(author, h("time"), value="20210729")
    assigned = etree.SubElement(author, h("assignedAuthor"))
    etree.SubElement(assigned, h("id"), ident)
    section(root).find(h("title")).addnext(author)  # type: ignore[union-attr]
    return assigned


def test_a_reader_without_rpps_and_an_unstructured_name_is_masked() -> None:
    """A section author the CRCDC's software names by its own id and a name written as one
    string: no RPPS tells a namesake, so the name is the reader's and goes."""
    reader = Reader("810000000123", "ROY", "Alain", "alain.roy@mssante.fr")
    root = form(reader)
    assigned = _section_author(root, ident={"root": "1.2.250.1.999.1", "extension": "LECT-7"})
    person = etree.SubElement(assigned, h("assignedPerson"))
    etree.SubElement(person, h("name")).text = "Dr Alain ROY"
    assert "roy" not in copy_text(root)


def test_a_reader_named_by_family_name_only_is_masked() -> None:
    """An informant with the reader's family name and a title, no given name, no RPPS."""
    reader = Reader("810000000123", "ROY", "Alain")
    root = form(reader)
    informant = etree.Element(h("informant"))
    entity = etree.SubElement(informant, h("assignedEntity"))
    etree.SubElement(entity, h("id"), nullFlavor="UNK")
    etree.SubElement(entity, h("telecom"), value="tel:+33140000007")
    name = etree.SubElement(etree.SubElement(entity, h("assignedPerson")), h("name"))
    etree.SubElement(name, h("prefix")).text = "Dr"
    etree.SubElement(name, h("family")).text = "Roy"
    root.find(h("custodian")).addprevious(informant)  # type: ignore[union-attr]
    text = copy_text(root)
    assert "roy" not in text
    assert "0000007" not in text  # the role went whole: its telephone too


def test_the_reader_written_otherwise_in_the_narrative_is_masked() -> None:
    """Hyphen for a space, a typographic apostrophe, decomposed accents (NFD): one name."""
    reader = Reader("810000000123", "D'ARTAGNAN MONTÉGUT", "Hélène")
    root = form(reader)
    text = section(root).find(".//" + h("text"))
    assert text is not None
    nfd = unicodedata.normalize("NFD", "Hélène d\u2019Artagnan-Montégut")
    text.text = f"Deuxième lecture : Dr {nfd}."
    out = copy_text(root)
    for trace in ("artagnan", "montégut", "hélène"):
        assert trace not in out, trace
    assert PLACEHOLDER.casefold() in out


def _without_performer(root: etree._Element) -> None:
    event = root.find(h("documentationOf/serviceEvent"))
    assert event is not None
    for performer in event.findall(h("performer")):
        event.remove(performer)


def test_authors_in_the_other_order_without_a_performer_give_no_copy() -> None:
    """The L2 reader listed first and no serviceEvent performer to tell the L1 reader: which
    author is L2 is a guess (the order), so no copy goes rather than one masking the L1
    reader and naming the L2 one."""
    reader = Reader("810000000123", "ROY", "Alain")
    root = form(reader)
    first, second = root.findall(h("author"))
    first.addprevious(second)  # L2, then L1
    _without_performer(root)
    data = bytes(etree.tostring(root, encoding="UTF-8"))
    try:
        copy = anonymise_l2_reader(data, LIMITS)
    except AnonymisationError as exc:
        assert "L1" in str(exc)
    else:
        assert b"810000000123" not in copy.data, "the L2 reader went to the GP"


def test_an_author_besides_the_two_readers_gives_no_copy() -> None:
    """A third author with a person (a CRCDC physician validating the reading): who it is to
    the GP is unknown, and nothing masks it; no copy rather than a guess."""
    reader = Reader("810000000123", "ROY", "Alain")
    root = form(reader)
    last = root.findall(h("author"))[-1]
    third = etree.Element(h("author"))
    etree.SubElement(third, h("time"), value="20210729")
    assigned = etree.SubElement(third, h("assignedAuthor"))
    etree.SubElement(assigned, h("id"), root="1.2.250.1.71.4.2.1", extension="810000000999")
    name = etree.SubElement(etree.SubElement(assigned, h("assignedPerson")), h("name"))
    etree.SubElement(name, h("family")).text = "VALIDEUR"
    last.addnext(third)
    with pytest.raises(AnonymisationError, match="author"):
        anonymise_l2_reader(bytes(etree.tostring(root, encoding="UTF-8")), LIMITS)


def test_comments_instructions_and_cdata_carry_nothing_of_the_reader() -> None:
    reader = Reader("810000000123", "ROY", "Alain", "alain.roy@mssante.fr")
    data = make_d2lm(D2lmSpec(l2_reader=reader, l2_right="ACR1", l2_left="ACR1"))
    marker = "INTERPRÉTATION DU DEUXIÈME LECTEUR".encode()
    assert data.count(marker) == 1
    data = data.replace(
        marker,
        marker + b"<!-- lu par ROY 810000000123 --><?lecteur ROY?>"
        b"<![CDATA[ : Dr Alain ROY (alain.roy@mssante.fr)]]>",
    )
    out = anonymise_l2_reader(data, LIMITS).data.decode().casefold()
    for trace in ("roy", "810000000123", "alain"):
        assert trace not in out, trace


def test_the_reader_s_name_in_an_id_or_its_reference_gives_no_copy() -> None:
    """XML IDs and the references to them are not rewritten (a reference must still point
    at its ID): the reader's name there is a place the copy does not clean, so none goes."""
    reader = Reader("810000000123", "ROY", "Alain")
    root = form(reader)
    text = section(root).find(".//" + h("text"))
    assert text is not None
    content = etree.SubElement(text, h("content"), ID="lecture-roy")
    content.text = "Lecture"
    with pytest.raises(AnonymisationError, match="still in <content>"):
        anonymise_l2_reader(bytes(etree.tostring(root, encoding="UTF-8")), LIMITS)


def _organisation(parent: etree._Element, tag: str, extension: str, name: str) -> None:
    organisation = etree.SubElement(parent, h(tag))
    etree.SubElement(organisation, h("id"), root="1.2.250.1.71.4.2.2", extension=extension)
    etree.SubElement(organisation, h("name")).text = name
    etree.SubElement(organisation, h("telecom"), value="tel:+33100000042")


def test_the_reader_s_practice_named_elsewhere_is_masked() -> None:
    """The L2 author's organisation (the reader's own practice) is masked in its entry; the
    same organisation as the custodian told the GP where the reader works."""
    reader = Reader("810000000123", "ROY", "Alain")
    root = form(reader)
    l2 = root.findall(h("author/assignedAuthor"))[1]
    _organisation(l2, "representedOrganization", "1750000042", "Cabinet du Petit Pont")
    custodian = root.find(h("custodian/assignedCustodian"))
    assert custodian is not None
    for child in list(custodian):
        custodian.remove(child)
    _organisation(custodian, "representedCustodianOrganization", "1750000042",
                  "Cabinet du Petit Pont")  # fmt: skip
    data = bytes(etree.tostring(root, encoding="UTF-8"))
    copy = anonymise_l2_reader(data, LIMITS)
    text = copy.data.decode()
    for trace in ("1750000042", "Petit Pont", "0000042"):
        assert trace not in text, trace
    assert parse_cda(copy.data, LIMITS).header.title == parse_cda(data, LIMITS).header.title


def test_an_organisation_of_the_l1_reader_too_is_kept() -> None:
    """Both readers of one practice (the ANS example): the L1 side names it, so it stays
    where it is not the L2 author's own entry."""
    reader = Reader("810000000123", "ROY", "Alain")
    root = form(reader)
    l1, l2 = root.findall(h("author/assignedAuthor"))
    for author in (l1, l2):
        _organisation(author, "representedOrganization", "1750000042", "Cabinet du Petit Pont")
    copy = anonymise_l2_reader(bytes(etree.tostring(root, encoding="UTF-8")), LIMITS)
    kept = etree.fromstring(copy.data).findall(h("author/assignedAuthor"))[0]
    assert kept.findtext(h("representedOrganization/name")) == "Cabinet du Petit Pont"


def _narrative(root: etree._Element, *parts: tuple[str, str]) -> None:
    """The L2 section's narrative as a paragraph of (tag, text) runs ("" for bare text)."""
    text = section(root).find(".//" + h("text"))
    assert text is not None
    for child in list(text):
        text.remove(child)
    text.text = None
    paragraph = etree.SubElement(text, h("paragraph"))
    last: etree._Element | None = None
    for tag, run in parts:
        if tag:
            last = etree.SubElement(paragraph, h(tag))
            last.text = run
        elif last is None:
            paragraph.text = (paragraph.text or "") + run
        else:
            last.tail = (last.tail or "") + run


def test_the_reader_s_name_split_across_the_narrative_s_elements_gives_no_copy() -> None:
    """A name no one element holds whole (styled initials, given and family name in two
    runs): each text is clean alone, the paragraph a person reads is not."""
    reader = Reader("810000000123", "ROY", "Alain")
    for parts in (
        (("", "Lu par Dr R"), ("content", "OY"), ("", ".")),
        (("content", "Dr Alain"), ("", " "), ("content", "ROY")),
    ):
        root = form(reader)
        _narrative(root, *parts)
        data = bytes(etree.tostring(root, encoding="UTF-8"))
        try:
            copy = anonymise_l2_reader(data, LIMITS)
        except AnonymisationError as exc:
            assert "narrative" in str(exc)
            continue
        words = etree.fromstring(copy.data).xpath(f"string({L2_SECTION}//*[local-name()='text'])",
                                                  namespaces=NS)  # fmt: skip
        assert isinstance(words, str)
        assert "roy" not in words.casefold() and "alain" not in words.casefold(), words
