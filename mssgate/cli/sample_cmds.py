"""`mssgate sample KIND --out DIR`: the fictitious files the README tour uses."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mssgate.cli.context import say
from mssgate.samples import SAMPLES, write_sample

Kind = StrEnum("Kind", {name.upper().replace("-", "_"): name for name in SAMPLES})  # type: ignore[misc]


def sample(
    kind: Annotated[Kind, typer.Argument(help="What to write.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write into (made if missing).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a small fictitious sample: an Annuaire extract, a peer CA certificate, an IHE XDM
    archive, a CDA or a mail with a D2LM screening form (test patient, test INS: a deployment
    takes its documents only with policy.allow_test_ins = true)."""
    path = write_sample(kind.value, out, force=force)
    say(f"wrote {path}: {SAMPLES[kind.value].what}")
