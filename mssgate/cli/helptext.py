"""Help output: a command's line in its group's list is the first paragraph of its docstring.
Typer's rich mode keeps that paragraph's line breaks there (they are only where the source
wraps at 100 columns), so `mssgate --help` and `mssgate quarantine --help` broke sentences
mid-way ("...with the running server's policy" / "(test INS, ..."); the command's own `--help`
joins them. This joins them in the list too; a blank line still ends the paragraph.

Typer's rich_utils costs a quarter of a second to import (rich's markdown, panels...), so it
is patched when a group first formats its help, not when the command tree is built: a command
that prints no help never imports it."""

from __future__ import annotations

import inspect
from typing import Any

from typer.core import TyperGroup

_format_help = TyperGroup.format_help
_patched = False


def _join_first_paragraph() -> None:
    global _patched
    if _patched:
        return
    from typer import rich_utils

    make_command_help = rich_utils._make_command_help

    def first_paragraph_on_one_line(*, help_text: str, markup_mode: Any) -> Any:
        first = inspect.cleandoc(help_text).split("\n\n")[0]
        return make_command_help(help_text=" ".join(first.split("\n")), markup_mode=markup_mode)

    rich_utils._make_command_help = first_paragraph_on_one_line
    _patched = True


# `Any`: Typer ships its own copy of click, whose Context is not click's.
def _format_help_joined(self: TyperGroup, ctx: Any, formatter: Any) -> None:
    _join_first_paragraph()
    _format_help(self, ctx, formatter)


TyperGroup.format_help = _format_help_joined  # type: ignore[method-assign]
