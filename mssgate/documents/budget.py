"""What one message may cost the pipeline, whatever the number of parts carrying it.

The per-part caps of `DocumentLimits` stop one archive or one XML file from exploding, but a
message of forty archives, each under every cap, still multiplies them by forty. A
`MessageBudget` counts, across the whole message, the bytes the pipeline decodes (MIME
transfer encodings, zip members, base64 bodies), the documents it finds and the XML nodes it
builds; the first charge over a bound raises `BudgetExceeded` and the message is held whole.

The budget of the message being processed lives in a context variable so that the readers
deep in the pipeline charge it without a parameter threaded through every signature; outside
`process_message` no budget is active and charges are free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

from mssgate.documents.limits import DocumentLimits
from mssgate.errors import MssgateError


class BudgetExceeded(MssgateError):
    """The message as a whole is over a per-message bound. Deliberately not a
    `DocumentError`: the per-document handlers must not catch it and hold one part, it ends
    the whole message (one quarantine entry)."""


class MessageBudget:
    def __init__(self, limits: DocumentLimits) -> None:
        self._limits = limits
        self.decoded_bytes = 0
        self.documents = 0
        self.xml_nodes = 0

    def charge_bytes(self, count: int, what: str) -> None:
        self.decoded_bytes += count
        cap = self._limits.max_message_decoded_bytes
        if self.decoded_bytes > cap:
            raise BudgetExceeded(
                f"message decodes to more than {cap} bytes (limit per message, at {what})"
            )

    def charge_document(self) -> None:
        self.documents += 1
        cap = self._limits.max_message_documents
        if self.documents > cap:
            raise BudgetExceeded(f"message carries more than {cap} documents (limit per message)")

    def charge_xml_nodes(self, count: int, what: str) -> None:
        self.xml_nodes += count
        cap = self._limits.max_message_xml_nodes
        if self.xml_nodes > cap:
            raise BudgetExceeded(
                f"message holds more than {cap} XML nodes (limit per message, at {what})"
            )


_CURRENT: Final[ContextVar[MessageBudget | None]] = ContextVar("message_budget", default=None)


@contextlib.contextmanager
def message_budget(limits: DocumentLimits) -> Iterator[MessageBudget]:
    budget = MessageBudget(limits)
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def current() -> MessageBudget | None:
    return _CURRENT.get()


def charge_bytes(count: int, what: str) -> None:
    budget = _CURRENT.get()
    if budget is not None:
        budget.charge_bytes(count, what)


def charge_document() -> None:
    budget = _CURRENT.get()
    if budget is not None:
        budget.charge_document()


def charge_xml_nodes(count: int, what: str) -> None:
    budget = _CURRENT.get()
    if budget is not None:
        budget.charge_xml_nodes(count, what)
