"""Help output: a plain flag (`--json`, `--force`, `--help`) takes no value, so its line shows
no type. Typer's rich help prints `<bool>` there, which reads as if a value were expected
(`--json true`); this hides it for every flag of the tree, Typer's own `--help` included."""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich


# `Any`: Typer ships its own copy of click, whose Context is not click's.
def _flag_shows_no_type(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_shows_no_type  # type: ignore[method-assign]
