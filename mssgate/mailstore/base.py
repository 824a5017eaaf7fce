"""The MailStore contract: hand one message to one local mailbox, durably."""

from __future__ import annotations

from typing import Protocol

from mssgate.errors import MssgateError


class DeliveryFailed(MssgateError):
    """The store refused or failed. `permanent` says whether a retry can help; `ambiguous`
    that the store may have the message all the same (the connection was lost after it was
    sent, before the reply), so that a retry may store it twice."""

    def __init__(self, message: str, *, permanent: bool = False, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.ambiguous = ambiguous


class MailStore(Protocol):
    def deliver(self, recipient: str, message: bytes, *, delivery_id: str, sender: str) -> None:
        """Stores `message` for `recipient` and returns only once it is durable.

        `sender` is the envelope sender (MAIL FROM as spooled, "" for a notification's null
        sender): the stored message carries it as its one Return-Path (RFC 5321 §4.4), any
        Return-Path that came with the message being dropped.

        `delivery_id` is stable across retries of the same delivery, so that a store can
        recognise a message it already has (a crash between its write and our bookkeeping)
        and not store it twice.

        Raises:
            DeliveryFailed: nothing was stored, unless its `ambiguous` says it may have been.
        """
        ...
