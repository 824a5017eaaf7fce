"""Per-message budgets (issue 12 item 12): many parts, each under every per-part cap, may not
add up to a blow-up. Over a budget the message is held whole, as ONE quarantine outcome whose
reason names the budget, and none of its documents is passed on."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from mssgate.documents import DocumentLimits, QuarantineCode, process_message

from .factory import PAT_TROIS, CdaSpec, EntrySpec, make_cda, make_mail, make_xdm


def _xdm(index: int, padding: int = 0) -> bytes:
    # Random padding in a comment: real bytes for the inflate counter, no tree nodes.
    cda = make_cda(CdaSpec(doc_root=f"1.2.250.1.999.{index}"))
    if padding:
        cda = cda.replace(b"?>", b"?>\n<!--" + os.urandom(padding).hex().encode() + b"-->", 1)
    return make_xdm(PAT_TROIS, [EntrySpec("DOC0001.XML", cda)])


def _one_whole_message_hold(raw: bytes, limits: DocumentLimits, words: str) -> None:
    result = process_message(raw, limits=limits, allow_test_oids=True)
    assert result.accepted == (), "no document of an over-budget message is passed on"
    [held] = result.outcomes
    assert held.origin == "message" and held.content == raw
    assert held.code == QuarantineCode.OTHER
    assert words in held.reason and "per message" in held.reason, held.reason


def test_many_archives_over_the_decoded_bytes_budget_are_one_hold() -> None:
    # Each archive is far under the per-archive caps; forty of them are not.
    raw = make_mail([("IHE_XDM.ZIP", _xdm(i, 40_000), "application/zip") for i in range(40)])
    limits = DocumentLimits(max_message_decoded_bytes=2 * 1024 * 1024)
    assert limits.max_zip_total_bytes > 100_000
    _one_whole_message_hold(raw, limits, "decodes to more than 2097152 bytes")


def test_documents_across_archives_over_the_document_budget_are_one_hold() -> None:
    raw = make_mail([("IHE_XDM.ZIP", _xdm(i), "application/zip") for i in range(6)])
    limits = DocumentLimits(max_message_documents=5)
    assert limits.max_documents > 5  # the per-archive cap alone would pass each archive
    _one_whole_message_hold(raw, limits, "more than 5 documents")


def test_a_cda_of_tiny_elements_over_the_node_budget_is_one_hold() -> None:
    cda = make_cda(CdaSpec())
    tiny = b"<a/>" * 30_000
    bloated = cda.replace(b"</ClinicalDocument>", b"<x>" + tiny + b"</x></ClinicalDocument>")
    raw = make_mail([("CR.xml", bloated, "text/xml"), ("CR2.xml", cda, "text/xml")])
    _one_whole_message_hold(raw, DocumentLimits(max_message_xml_nodes=20_000), "XML nodes")


def test_nodes_add_up_over_the_documents_of_one_message() -> None:
    cdas = [make_cda(CdaSpec(doc_root=f"1.2.250.1.999.{i}")) for i in range(4)]
    one = process_message(make_mail([("CR.xml", cdas[0], "text/xml")]), allow_test_oids=True)
    assert len(one.accepted) == 1
    raw = make_mail([(f"CR{i}.xml", c, "text/xml") for i, c in enumerate(cdas)])
    # Enough for any one of the documents, not for the four of them.
    limits = DocumentLimits(max_message_xml_nodes=2 * _nodes(cdas[0]))
    _one_whole_message_hold(raw, limits, "XML nodes")


def _nodes(xml: bytes) -> int:
    from lxml import etree

    root = etree.fromstring(xml)
    return sum(1 + len(e.attrib) for e in root.iter() if isinstance(e.tag, str))


def test_under_the_budgets_nothing_changes() -> None:
    raw = make_mail([("IHE_XDM.ZIP", _xdm(i), "application/zip") for i in range(3)])
    result = process_message(raw, allow_test_oids=True)
    assert len(result.accepted) == 3 and result.quarantined == ()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6))
def test_document_budget_is_exact(count: int, cap: int) -> None:
    raw = make_mail([("IHE_XDM.ZIP", _xdm(i), "application/zip") for i in range(count)])
    result = process_message(
        raw, limits=DocumentLimits(max_message_documents=cap), allow_test_oids=True
    )
    if count <= cap:
        assert len(result.accepted) == count
    else:
        assert [o.origin for o in result.outcomes] == ["message"]


_names = st.sampled_from(["a", "b", "x:c", "ClinicalDocument"])


@st.composite
def _xml(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 300))
    attrs = draw(st.lists(st.integers(0, 3), min_size=count, max_size=count))
    parts = [b'<r xmlns:x="urn:x">']
    for i, n in enumerate(attrs):
        name = draw(_names).encode()
        pairs = b"".join(b' k%d="%d"' % (j, i) for j in range(n))
        parts.append(b"<%s%s>t%d</%s>" % (name, pairs, i, name))
    parts.append(b"</r>")
    return b"".join(parts)


def _count(xml: bytes) -> int:
    from lxml import etree

    return sum(1 + len(e.attrib) for e in etree.fromstring(xml).iter())


@settings(max_examples=60, deadline=None)
@given(_xml(), st.integers(-3, 3), st.sampled_from([1, 7, 256 * 1024]))
def test_xml_node_cap_is_exact_and_the_tree_unchanged(xml: bytes, offset: int, feed: int) -> None:
    """The slice-fed parser builds the tree `etree.fromstring` builds, and refuses exactly
    the documents over the cap (elements and attributes), whatever the slice boundaries."""
    from mssgate.documents import xml as xml_module

    saved, xml_module._FEED = xml_module._FEED, feed  # slices of 1 and 7 bytes too
    try:
        _check_cap(xml, offset)
    finally:
        xml_module._FEED = saved


def _check_cap(xml: bytes, offset: int) -> None:
    from lxml import etree

    from mssgate.documents.errors import LimitExceeded
    from mssgate.documents.xml import parse_xml

    nodes = _count(xml)
    cap = max(1, nodes + offset)
    limits = DocumentLimits(max_message_xml_nodes=cap)
    if nodes > cap:
        try:
            parse_xml(xml, limits)
        except LimitExceeded:
            return
        raise AssertionError("over the cap, not refused")
    root = parse_xml(xml, limits)
    assert etree.tostring(root) == etree.tostring(etree.fromstring(xml))
