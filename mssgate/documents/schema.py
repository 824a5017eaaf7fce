"""The published JSON schema of `DocumentRecord` (docs/document-record.schema.json).

`python -m mssgate.documents.schema --write` regenerates the file; `--check` fails when the
committed file no longer matches the model (the tests run the same comparison).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mssgate.documents.record import DocumentRecord

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "document-record.schema.json"


def render_schema() -> str:
    schema = DocumentRecord.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://mssgate.example/schemas/document-record.schema.json"
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        SCHEMA_PATH.write_text(render_schema(), encoding="utf-8")
        return 0
    if argv == ["--check"]:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
        if current != render_schema():
            print(f"{SCHEMA_PATH} is stale: run python -m mssgate.documents.schema --write")
            return 1
        return 0
    print("usage: python -m mssgate.documents.schema --write|--check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
