"""The consumer API (FastAPI): lease, read, ack, nack; problem+json errors; OpenAPI.

Endpoints are plain functions (FastAPI runs them in its thread pool) because the queue speaks
to the database through synchronous SQLAlchemy; they stay thin: parse, call the queue, shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import Engine

from mssgate import __version__
from mssgate.api import admin, autoconfig, operations, problems, screening
from mssgate.api.auth import CurrentConsumer
from mssgate.api.limits import BodyLimit, Slots
from mssgate.api.problems import ApiProblem, Problem, responses
from mssgate.api.schemas import (
    AckLeaseOut,
    AckLeaseResponse,
    AckRequest,
    Health,
    LeaseOut,
    LeaseRequest,
    LeaseResponse,
    NackRequest,
    TransitionResponse,
)
from mssgate.config import Config
from mssgate.directory.consumers import Consumers
from mssgate.directory.models import Consumer
from mssgate.documents.record import DocumentRecord
from mssgate.logs import event
from mssgate.metrics import Metrics, scrape_registry
from mssgate.outbound.service import Outbound
from mssgate.outbound.store import OutboundStatus
from mssgate.outbound.zamqueue import ACK_MEDIA_TYPE, AckItem, ZamQueue
from mssgate.queue.models import QueueState
from mssgate.queue.service import DocumentQueue, ReceiptCallback

# Name -> reason for each supervised task or check that fails (see mssgate.supervisor).
HealthProbe = Callable[[], dict[str, str]]
# Name -> since when, for each other node sharing the database that went silent.
NodesDown = Callable[[], dict[str, str]]

log = logging.getLogger("mssgate.api")

DocumentId = Annotated[str, PathParam(min_length=1, max_length=64, description="Document id")]
OutboundId = Annotated[str, PathParam(min_length=1, max_length=32, description="Outbound id")]
AckId = Annotated[
    str, PathParam(min_length=1, max_length=64, description="The ZAM's MSH-10 (ack item id)")
]
LeaseKind = Annotated[
    str | None,
    Query(description="document (the default: documents only) or ack "
          "(business acknowledgements of the consumer's outbound messages)"),
]  # fmt: skip
LeaseTag = Annotated[
    str | None,
    Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
          description="Only documents a routing rule tagged with this label (`tag` action)"),
]  # fmt: skip
ORIGINAL_TYPE_HEADER = "X-Original-Content-Type"
HL7_MEDIA_TYPES = frozenset({"application/hl7-v2", "x-application/hl7-v2+er7"})


def _queue(request: Request) -> DocumentQueue:
    queue: DocumentQueue = request.app.state.queue
    return queue


def _blob_response(data: bytes, media_type: str, original: str | None) -> Response:
    # Set verbatim: Starlette would append "; charset=utf-8" to a text/* type, a claim about
    # bytes we serve untouched (an XML document declares its own encoding).
    headers = {
        "Content-Type": media_type,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if original is not None:
        headers[ORIGINAL_TYPE_HEADER] = original
    return Response(content=data, headers=headers)


def create_app(
    config: Config,
    engine: Engine,
    *,
    queue: DocumentQueue | None = None,
    on_receipt: ReceiptCallback | None = None,
    metrics: Metrics | None = None,
    health: HealthProbe | None = None,
    tasks: admin.TaskCounts | None = None,
    nodes_down: NodesDown | None = None,
    outbound: Outbound | None = None,
) -> FastAPI:
    """The ASGI application; `queue` defaults to one built from the configuration, `metrics`
    to the process-wide counters of mssgate.metrics; `tasks` (the supervisor's crash counts)
    is shown by the admin console; `outbound` (the RIS's sending, which needs the spool) is
    given by `mssgate serve`: without it /v1/outbound answers 503."""
    app = FastAPI(
        title="mssgate RIS integration API",
        version=__version__,
        description=(
            "Lease/ack queue of documents received by a mailbox (see docs/ris-integration.md)."
            " Authenticate with `Authorization: Bearer <token>` (mssgate consumer add)."
        ),
        docs_url=None,
        redoc_url=None,
    )
    app.state.queue = queue or DocumentQueue.from_config(config, engine, on_receipt=on_receipt)
    app.state.consumers = Consumers(engine, actor="api")
    app.state.config = config
    app.state.engine = engine
    app.state.metrics_registry = scrape_registry(engine, metrics)
    problems.install(app)
    app.state.outbound = outbound
    app.state.outbound_slots = Slots()
    # An HL7 message with its CDA and PDF is as large as the mail that will carry it.
    app.add_middleware(BodyLimit, routes={("POST", "/v1/outbound"): config.smtp.max_message_size})

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["operations"],
        responses={503: {"model": Health, "description": "A task or listener is failing"}},
    )
    def healthz(response: Response) -> Health:
        failing = health() if health is not None else {}
        # Shown, not failing: this node serves; a balancer that took it out because
        # another node is down would only make things worse.
        down = nodes_down() if nodes_down is not None else {}
        if failing:
            response.status_code = 503
            return Health(status="failing", failing=failing, nodes_down=down)
        return Health(status="ok", nodes_down=down)

    @app.post(
        "/v1/leases",
        response_model=LeaseResponse | AckLeaseResponse,
        tags=["queue"],
        responses=responses(400, 401, 422, 503),
        summary="Lease the next documents (or, with kind=ack, business acknowledgements) of "
        "the consumer, oldest first",
    )
    def lease(
        request: Request,
        consumer: CurrentConsumer,
        body: LeaseRequest | None = None,
        kind: LeaseKind = None,
        tag: LeaseTag = None,
    ) -> LeaseResponse | AckLeaseResponse:
        wanted = body or LeaseRequest()
        if kind == "ack":
            if tag is not None:
                raise ApiProblem(400, "tag filters documents, not kind=ack items")
            return _lease_acks(request, consumer, wanted)
        if kind not in (None, "document"):
            raise ApiProblem(400, "kind must be document (the default) or ack")
        leases = _queue(request).lease(
            consumer, max_documents=wanted.max, lease_seconds=wanted.lease_seconds, tag=tag
        )
        # Ids and the consumer's name only: the record itself names the patient.
        for x in leases:
            event(log, "queue.leased", document_id=x.document.id, consumer=consumer.name,
                  expires_at=x.expires_at.isoformat())  # fmt: skip
        return LeaseResponse(
            leases=[
                LeaseOut(lease_id=x.lease_id, expires_at=x.expires_at, document=x.document)
                for x in leases
            ]
        )

    _install_ack_routes(app)

    @app.get(
        "/v1/documents/{document_id}",
        response_model=DocumentRecord,
        tags=["documents"],
        responses=responses(401, 404, 422),
    )
    def document(request: Request, consumer: CurrentConsumer, document_id: DocumentId) -> Any:
        return _queue(request).document(consumer, document_id)

    @app.get(
        "/v1/documents/{document_id}/content",
        tags=["documents"],
        response_class=Response,
        responses={
            200: {
                "description": "The original bytes with their Content-Type, or OpenPGP "
                "ciphertext (application/pgp-encrypted) for a consumer with a key",
                "content": {"application/octet-stream": {}},
            },
            **responses(401, 404, 422),
        },
    )
    def content(request: Request, consumer: CurrentConsumer, document_id: DocumentId) -> Response:
        blob, original = _queue(request).content(consumer, document_id)
        return _blob_response(blob.data, blob.media_type, original)

    @app.get(
        "/v1/documents/{document_id}/hl7",
        tags=["documents"],
        response_class=Response,
        responses={
            200: {
                "description": "HL7 v2.6 MDM^T02 (T10 for a replacement), ER7, UTF-8",
                "content": {"x-application/hl7-v2+er7": {}},
            },
            **responses(401, 404, 422),
        },
    )
    def hl7(request: Request, consumer: CurrentConsumer, document_id: DocumentId) -> Response:
        blob = _queue(request).hl7(consumer, document_id)
        return _blob_response(blob.data, blob.media_type, None)

    @app.post(
        "/v1/documents/{document_id}/ack",
        response_model=TransitionResponse,
        tags=["queue"],
        responses=responses(401, 404, 409, 422),
    )
    def ack(
        request: Request, consumer: CurrentConsumer, document_id: DocumentId, body: AckRequest
    ) -> TransitionResponse:
        _queue(request).ack(consumer, document_id, body.lease_id)
        event(log, "queue.acked", document_id=document_id, consumer=consumer.name)
        return TransitionResponse(id=document_id, state=QueueState.DONE)

    @app.post(
        "/v1/documents/{document_id}/nack",
        response_model=TransitionResponse,
        tags=["queue"],
        responses=responses(401, 404, 409, 422),
    )
    def nack(
        request: Request, consumer: CurrentConsumer, document_id: DocumentId, body: NackRequest
    ) -> TransitionResponse:
        state = _queue(request).nack(
            consumer, document_id, body.lease_id, code=body.code, reason=body.reason
        )
        # The RIS's free-text reason may quote the patient: the code says enough here.
        event(log, "queue.nacked", document_id=document_id, consumer=consumer.name,
              code=body.code, state=state.value)  # fmt: skip
        return TransitionResponse(id=document_id, state=state)

    @app.post(
        "/v1/outbound",
        tags=["outbound"],
        response_class=Response,
        summary="Send a document: one HL7 v2 message (MDM^T02, MDM^T10, ORU^R01), ER7",
        responses={
            202: {"description": "Accepted: ACK MSA|AA, Location /v1/outbound/{id}",
                  "content": {"application/hl7-v2": {}}},
            400: {"description": "Not HL7: ACK MSA|AR with ERR",
                  "content": {"application/hl7-v2": {}}},
            422: {"description": "Refused: ACK MSA|AE or AR with ERR; nothing was sent",
                  "content": {"application/hl7-v2": {}}},
            **responses(401, 413, 415, 503),
        },
    )  # fmt: skip
    async def submit(request: Request, consumer: CurrentConsumer) -> Response:
        sender: Outbound | None = request.app.state.outbound
        if sender is None:
            raise ApiProblem(503, "sending is not enabled on this server")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in HL7_MEDIA_TYPES:
            raise ApiProblem(415, "the body must be Content-Type: application/hl7-v2 (ER7)")
        slots: Slots = request.app.state.outbound_slots
        if not await slots.take():
            raise ApiProblem(503, "too many submissions in progress; submit it again shortly",
                             headers={"Retry-After": "5"})  # fmt: skip
        try:
            body = await request.body()
            answer = await run_in_threadpool(sender.submit, consumer, body)
        finally:
            slots.give()
        headers = {"Cache-Control": "no-store"}
        if answer.outbound_id is not None:
            headers["Location"] = f"/v1/outbound/{answer.outbound_id}"
        return Response(
            content=answer.ack.encode(),
            status_code=answer.status,
            headers={**headers, "Content-Type": "application/hl7-v2; charset=utf-8"},
        )

    @app.get(
        "/v1/outbound/{outbound_id}",
        response_model=OutboundStatus,
        tags=["outbound"],
        responses=responses(401, 404, 422, 503),
        summary="Status per recipient of a message sent with POST /v1/outbound",
    )
    def outbound_status(
        request: Request, consumer: CurrentConsumer, outbound_id: OutboundId
    ) -> OutboundStatus:
        sender: Outbound | None = request.app.state.outbound
        if sender is None:
            raise ApiProblem(503, "sending is not enabled on this server")
        found = sender.status(consumer, outbound_id)
        if found is None:
            raise ApiProblem(404, f"no outbound message {outbound_id}")
        return found

    @app.get(
        "/v1/outbound/{outbound_id}/acks",
        response_model=list[str],
        tags=["outbound"],
        responses=responses(401, 404, 422, 503),
        summary="Business acknowledgements so far: ZAM^Z02 (reception), ZAM^Z03 (read), ER7",
    )
    def outbound_acks(
        request: Request, consumer: CurrentConsumer, outbound_id: OutboundId
    ) -> list[str]:
        sender: Outbound | None = request.app.state.outbound
        if sender is None:
            raise ApiProblem(503, "sending is not enabled on this server")
        found = sender.acks(consumer, outbound_id)
        if found is None:
            raise ApiProblem(404, f"no outbound message {outbound_id}")
        return found

    app.include_router(operations.router)
    app.include_router(autoconfig.router)
    app.include_router(screening.router)
    if config.admin.enabled:
        admin.install(app, config, engine, health=health, tasks=tasks)
    _publish_problem_schema(app)
    return app


def _zams(request: Request) -> ZamQueue:
    sender: Outbound | None = request.app.state.outbound
    if sender is None:
        raise ApiProblem(503, "sending is not enabled on this server")
    return sender.zams


def _lease_acks(request: Request, consumer: Consumer, wanted: LeaseRequest) -> AckLeaseResponse:
    leases = _zams(request).lease(
        consumer, max_items=wanted.max, lease_seconds=wanted.lease_seconds
    )
    for x in leases:
        event(log, "zam.leased", ack_id=x.ack.id, consumer=consumer.name,
              expires_at=x.expires_at.isoformat())  # fmt: skip
    return AckLeaseResponse(
        leases=[
            AckLeaseOut(lease_id=x.lease_id, expires_at=x.expires_at, ack=x.ack) for x in leases
        ]
    )


def _install_ack_routes(app: FastAPI) -> None:
    """Business acknowledgements (ZAM) of the consumer's outbound messages, as queue items
    of kind `ack` (mssgate.outbound.zamqueue): read, read as ER7, acknowledged."""

    @app.get(
        "/v1/acks/{ack_id}",
        response_model=AckItem,
        tags=["queue"],
        responses=responses(401, 404, 422, 503),
        summary="A business acknowledgement (ZAM) leased with kind=ack",
    )
    def ack_item(request: Request, consumer: CurrentConsumer, ack_id: AckId) -> AckItem:
        return _zams(request).item(consumer, ack_id)

    @app.get(
        "/v1/acks/{ack_id}/content",
        tags=["queue"],
        response_class=Response,
        responses={
            200: {"description": "The ZAM^Z01 message, HL7 v2.6 ER7, UTF-8",
                  "content": {ACK_MEDIA_TYPE: {}}},
            **responses(401, 404, 422, 503),
        },
    )  # fmt: skip
    def ack_content(request: Request, consumer: CurrentConsumer, ack_id: AckId) -> Response:
        item = _zams(request).item(consumer, ack_id)
        return _blob_response(item.content.encode(), f"{ACK_MEDIA_TYPE}; charset=utf-8", None)

    @app.post(
        "/v1/acks/{ack_id}/ack",
        response_model=TransitionResponse,
        tags=["queue"],
        responses=responses(401, 404, 409, 422, 503),
        summary="Acknowledge a leased business acknowledgement: it is not offered again",
    )
    def ack_ack(
        request: Request, consumer: CurrentConsumer, ack_id: AckId, body: AckRequest
    ) -> TransitionResponse:
        _zams(request).ack(consumer, ack_id, body.lease_id)
        event(log, "zam.acked", ack_id=ack_id, consumer=consumer.name)
        return TransitionResponse(id=ack_id, state=QueueState.DONE)


def _publish_problem_schema(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                Problem.model_json_schema()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
