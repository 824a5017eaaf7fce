"""The published OpenAPI document (docs/openapi.json): `python -m mssgate.api.openapi FILE`.

Built from the application itself, with no database behind it, so that the committed file
and the running API cannot drift apart unnoticed (a test compares them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from mssgate.api.app import create_app
from mssgate.config import Config
from mssgate.db import open_engine


def openapi_document() -> dict[str, Any]:
    engine = open_engine("sqlite://")
    try:
        return create_app(Config(), engine).openapi()
    finally:
        engine.dispose()


def render() -> str:
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m mssgate.api.openapi FILE\n")
        return 2
    Path(argv[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
