"""Queue records as they cross the edges (API JSON, CLI JSON, the serve wiring)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mssgate.documents.record import DocumentInfo, DocumentRecord


class QueueState(enum.StrEnum):
    READY = "ready"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"


class QueueEntry(BaseModel):
    """One queued document with its delivery state, for operators (CLI) and the API."""

    model_config = ConfigDict(frozen=True)

    id: str
    mailbox: str
    state: QueueState
    attempts: int
    received_at: datetime
    sender: str
    sha256: str
    size: int
    content_type: str
    encrypted: bool
    lease_consumer: str | None = None
    lease_expires_at: datetime | None = None
    last_code: int | None = None
    last_reason: str | None = None
    receipt_to: str | None = None
    # The mailbox's earliest entry with the same bytes (this one came in a new message).
    duplicate_of: str | None = None
    updated_at: datetime
    record: DocumentRecord


class Lease(BaseModel):
    model_config = ConfigDict(frozen=True)

    lease_id: str
    expires_at: datetime
    document: DocumentRecord


class Blob(BaseModel):
    """Bytes served to a consumer: the original, or OpenPGP ciphertext of it."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False)
    media_type: str
    encrypted: bool


NackCode = Literal[902, 903, 904, 905, 906]


class QuarantineState(enum.StrEnum):
    HELD = "held"
    RELEASED = "released"


class QuarantineEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    received_at: datetime
    mailbox: str
    sender: str
    message_id: str | None
    subject: str | None
    code: int
    reason: str
    sha256: str
    size: int
    content_type: str
    origin: str
    state: QuarantineState
    document: DocumentInfo | None = None
    updated_at: datetime
    # Stored encrypted to the mailbox's RIS key: the gateway cannot read or release it.
    encrypted: bool = False


class Receipt(BaseModel):
    """An MDN waiting in the outbox for the mail side to sign and send."""

    model_config = ConfigDict(frozen=True)

    id: str
    document_id: str
    created_at: datetime
    recipient: str
    sender: str
    outcome: Literal["processed", "error"]
    mdn: bytes = Field(repr=False)
