"""Help output: a command's line in its group's list is the first paragraph of its docstring.
Typer's rich mode keeps that paragraph's line breaks there (they are only where the source
wraps at 100 columns), so `mssgate --help` and `mssgate quarantine --help` broke sentences
mid-way ("...with the running server's policy" / "(test INS, ..."); the command's own `--help`
joins them. This joins them in the list too; a blank line still ends the paragraph."""

from __future__ import annotations

import inspect
from typing import Any

from typer import rich_utils

_make_command_help = rich_utils._make_command_help


def _first_paragraph_on_one_line(*, help_text: str, markup_mode: Any) -> Any:
    first = inspect.cleandoc(help_text).split("\n\n")[0]
    return _make_command_help(help_text=" ".join(first.split("\n")), markup_mode=markup_mode)


rich_utils._make_command_help = _first_paragraph_on_one_line
