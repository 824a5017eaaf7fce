from __future__ import annotations

from mssgate.documents.schema import SCHEMA_PATH, main, render_schema


def test_committed_schema_matches_the_model() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), (
        "docs/document-record.schema.json is stale: python -m mssgate.documents.schema --write"
    )


def test_check_command_agrees() -> None:
    assert main(["--check"]) == 0
    assert main(["--bogus"]) == 2


def test_schema_lists_interface_fields() -> None:
    import json

    schema = json.loads(render_schema())
    for name in ("ins", "patient", "document", "imaging", "sha256", "size", "content_type"):
        assert name in schema["properties"]
    ins = schema["$defs"]["InsRecord"]["properties"]
    assert set(ins) >= {"value", "oid", "kind", "test", "qualified", "source"}
