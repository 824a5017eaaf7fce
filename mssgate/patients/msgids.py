"""Message identifiers read from header fields the sender controls, with bounds.

A patient's reply names the message it answers in In-Reply-To and References (RFC 5322
3.6.4). Both are the sender's text: a References of ten thousand ids, ids of a megabyte,
comments, folding. What is read here is bounded whatever the field holds: at most
`MAX_ID_CHARS` per id, and of References only its first and last ids (the thread's start,
where a professional's first message is, and the messages just before the reply).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

# A Message-ID we record is at most this long (the column is 255): longer ids are never ours.
MAX_ID_CHARS = 250
# Of References, the first and the last ids are kept (RFC 5322: the parent's References then
# its Message-ID, so the thread's root comes first and the parent last).
REFERENCES_HEAD = 8
REFERENCES_TAIL = 24
IN_REPLY_TO_MAX = 8
# No more ids than this are ever looked up for one message.
MAX_LOOKUP = IN_REPLY_TO_MAX + REFERENCES_HEAD + REFERENCES_TAIL

# "<" id-left "@" id-right ">": printable ASCII without space, "<", ">" or a second "@" on
# either side (no backtracking over a hostile field: the search stays linear). Comments and
# folding between ids are skipped by the search; an id inside a comment is only one more
# candidate, looked up like the others (the lookup, not the syntax, is the check).
_ID_PART = rb"[!-;=?A-~]{1,%d}" % MAX_ID_CHARS
_MSG_ID = re.compile(rb"<" + _ID_PART + rb"@" + _ID_PART + rb">")


def _ids(value: str) -> Iterable[str]:
    raw = value.encode("utf-8", "replace")
    for match in _MSG_ID.finditer(raw):
        text = match.group(0)
        if len(text) <= MAX_ID_CHARS:
            yield text.decode("ascii")


def message_id(fields: list[str]) -> str | None:
    """The one msg-id of a message's Message-ID field(s), or None: no field, several, or not
    exactly one id we could record."""
    if len(fields) != 1:
        return None
    found = list(_first(_ids(fields[0]), 2))
    return found[0] if len(found) == 1 else None


def referenced(in_reply_to: list[str], references: list[str]) -> list[str]:
    """The ids a reply names, bounded (at most MAX_LOOKUP), without repeats, in order."""
    out: dict[str, None] = {}
    for value in in_reply_to:
        for mid in _ids(value):
            if len(out) >= IN_REPLY_TO_MAX:
                break
            out.setdefault(mid)
    head: list[str] = []
    tail: deque[str] = deque(maxlen=REFERENCES_TAIL)
    for value in references:
        for mid in _ids(value):
            if len(head) < REFERENCES_HEAD:
                head.append(mid)
            else:
                tail.append(mid)
    for mid in [*head, *tail]:
        out.setdefault(mid)
    return list(out)[:MAX_LOOKUP]


def _first(ids: Iterable[str], n: int) -> Iterable[str]:
    for i, mid in enumerate(ids):
        if i >= n:
            return
        yield mid
