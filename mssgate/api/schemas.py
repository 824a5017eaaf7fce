"""Request and response bodies of the consumer API (the OpenAPI schema comes from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mssgate.documents.record import DocumentRecord
from mssgate.outbound.zamqueue import AckItem
from mssgate.queue.models import QueueState


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LeaseRequest(_Body):
    max: int = Field(10, ge=1, le=1000, description="At most this many documents")
    lease_seconds: int | None = Field(
        None, ge=1, le=86_400, description="Lease length; the gateway's default when absent"
    )


class LeaseOut(BaseModel):
    lease_id: str
    expires_at: datetime
    document: DocumentRecord


class LeaseResponse(BaseModel):
    leases: list[LeaseOut]


class AckLeaseOut(BaseModel):
    lease_id: str
    expires_at: datetime
    ack: AckItem


class AckLeaseResponse(BaseModel):
    """POST /v1/leases?kind=ack: business acknowledgements (ZAM) instead of documents."""

    leases: list[AckLeaseOut]


class AckRequest(_Body):
    lease_id: str = Field(min_length=1, max_length=64)


class NackRequest(_Body):
    lease_id: str = Field(min_length=1, max_length=64)
    code: Literal[902, 903, 904, 905, 906] = Field(
        description="ANS integration error: 902 unknown patient, 903 INS absent, "
        "904 INS or traits mismatch, 905 INS incomplete, 906 other"
    )
    reason: str = Field("", max_length=1000)


class TransitionResponse(BaseModel):
    id: str
    state: QueueState


class Health(BaseModel):
    status: Literal["ok", "failing"]
    # Supervised task or check -> why it fails (a task that keeps crashing, a listener that
    # stopped serving). Empty when the status is ok.
    failing: dict[str, str] = Field(default_factory=dict)
    # Other nodes sharing the database that sent no heartbeat for `node.down_after_seconds`
    # (name -> how long, or "never served"). Does not make this node failing.
    nodes_down: dict[str, str] = Field(default_factory=dict)
