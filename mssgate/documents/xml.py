"""Hardened XML parsing shared by the CDA and XDM readers.

libxml2 is asked not to resolve entities, not to fetch anything, not to load a DTD and to keep
its default size/depth guards (`huge_tree=False`: 10 MB text nodes, 256 levels). On top, any
DOCTYPE is refused: CDA and ebRIM never need one, and refusing it removes XXE and entity
expansion (billion laughs) as a class instead of relying on each setting.
"""

from __future__ import annotations

from typing import Final

from lxml import etree

from mssgate.documents import budget
from mssgate.documents.errors import LimitExceeded, XmlError
from mssgate.documents.limits import DocumentLimits

# Fed to the parser in slices so that nodes are counted, and a tree of millions of tiny
# elements abandoned, while it is being built rather than after it took the memory.
_FEED: Final = 256 * 1024

# The DOCTYPE marker in the encodings an XML document may declare without a prolog guess.
_DOCTYPE_MARKERS: Final = tuple(
    "<!DOCTYPE".encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be")
) + tuple("<!ENTITY".encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be"))


def _parser() -> etree.XMLPullParser:
    # A parser per call: lxml parsers keep state and are not safe to share across threads.
    return etree.XMLPullParser(
        events=("start",),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
        remove_comments=True,
        collect_ids=False,
    )


def parse_xml(data: bytes, limits: DocumentLimits, *, what: str = "XML") -> etree._Element:
    """Parse untrusted XML bytes into an element tree, or raise `XmlError`/`LimitExceeded`."""
    if len(data) > limits.max_xml_bytes:
        raise LimitExceeded(f"{what} larger than {limits.max_xml_bytes} bytes")
    if any(marker in data for marker in _DOCTYPE_MARKERS):
        raise XmlError(f"{what} carries a DOCTYPE or entity declaration")
    try:
        root = _build(data, limits, what)
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"{what} is not well-formed XML") from exc
    except (ValueError, MemoryError) as exc:
        raise XmlError(f"{what} cannot be parsed") from exc
    docinfo = root.getroottree().docinfo
    # Authoritative check, whatever encoding slipped past the byte scan above.
    # Typed as object: lxml's stubs say internalDTD is never None, lxml returns None without one.
    internal_dtd: object = docinfo.internalDTD
    if getattr(docinfo, "doctype", "") or internal_dtd is not None:
        raise XmlError(f"{what} carries a DOCTYPE or entity declaration")
    return root


def _build(data: bytes, limits: DocumentLimits, what: str) -> etree._Element:
    """The tree, counting elements and attributes as they are built: against the message's
    budget inside the pipeline, else against the same bound for this document alone."""
    parser = _parser()
    nodes = 0
    for start in range(0, len(data), _FEED):
        parser.feed(data[start : start + _FEED])
        count = 0
        for _, element in parser.read_events():
            assert isinstance(element, etree._Element)  # "start" events carry elements only
            count += 1 + len(element.attrib)
        if budget.current() is not None:
            budget.charge_xml_nodes(count, what)
        else:
            nodes += count
            if nodes > limits.max_message_xml_nodes:
                raise LimitExceeded(f"{what} has more than {limits.max_message_xml_nodes} nodes")
    root: etree._Element = parser.close()
    return root


def local_name(element: etree._Element) -> str:
    # Comments and processing instructions have a function, not a string, as tag.
    tag: object = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]
