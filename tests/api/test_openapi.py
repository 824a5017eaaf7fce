"""The published OpenAPI document is the application's, and no generated request makes the
API fail with a 5xx (schemathesis, in process, with a valid token)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from sqlalchemy import Engine

from mssgate.api.app import create_app
from mssgate.api.openapi import openapi_document, render
from mssgate.config import Config
from mssgate.directory import Directory
from mssgate.outbound.service import Outbound
from mssgate.queue import DocumentQueue, QueueSettings
from mssgate.spool import Spool
from tests.queue.helpers import RIS_A, add_consumer, fill

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_openapi_is_current() -> None:
    committed = json.loads(DOCS.read_text(encoding="utf-8"))
    assert committed == openapi_document(), (
        "docs/openapi.json is stale: python -m mssgate.api.openapi docs/openapi.json"
    )
    assert DOCS.read_text(encoding="utf-8") == render()


def test_contract_paths_are_published() -> None:
    paths = openapi_document()["paths"]
    for path in (
        "/v1/leases",
        "/v1/documents/{document_id}",
        "/v1/documents/{document_id}/content",
        "/v1/documents/{document_id}/hl7",
        "/v1/documents/{document_id}/ack",
        "/v1/documents/{document_id}/nack",
        "/healthz",
    ):
        assert path in paths


@pytest.fixture
def fuzz_target(gateway: tuple[Config, Engine]) -> Iterator[tuple[schemathesis.Schema, str]]:
    config, engine = gateway
    _, token = add_consumer(engine, "ris-a", RIS_A)
    queue = DocumentQueue(engine, settings=QueueSettings(), data_dir=config.server.data_dir)
    fill(queue, 3)
    # The RIS's sending with a real spool: generated HL7 bodies go through the real parser.
    spool = Spool(engine, config.server.data_dir / "spool")
    outbound = Outbound(config, Directory(engine, actor="test"), spool)
    app = create_app(config, engine, queue=queue, outbound=outbound)
    yield schemathesis.openapi.from_asgi("/openapi.json", app), token


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(
    fuzz_target: tuple[schemathesis.Schema, str],
) -> None:
    schema, token = fuzz_target
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except Exception as exc:  # collect all operations' failures, not just the first
            failures.append(f"{operation.label}: {exc}")
    assert failures == []
