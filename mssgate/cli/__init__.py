"""Entry point: runs the command tree and turns every error into one line and an exit code.

0 ok, 1 error (one readable line on stderr), 2 usage. No traceback reaches an operator unless
MSSGATE_DEBUG is set.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from mssgate.errors import MssgateError, UsageFailed

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"mssgate: error: {message}\n")
    return code


def _config_first(args: list[str]) -> list[str]:
    """`--config FILE` moved before the command: it is the root's option, and Click refuses it
    after a subcommand (`mssgate directory list --config F`: "No such option"), where users
    put it when told that every command takes it. Nothing after `--` is touched."""
    end = args.index("--") if "--" in args else len(args)
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        arg = args[i]
        if arg == "--config" and i + 1 < end:
            moved += args[i : i + 2]
            i += 2
            continue
        if arg.startswith("--config="):
            moved.append(arg)
        else:
            rest.append(arg)
        i += 1
    return moved + rest + args[end:]


def run(argv: Sequence[str] | None = None) -> int:
    """Runs one command and returns its exit code (tests call this in-process)."""
    from mssgate.cli.app import app

    args = _config_first(list(sys.argv[1:] if argv is None else argv))
    try:
        # Standalone mode: Typer itself prints usage errors (exit 2) and exits; anything
        # else propagates here because pretty exceptions are off.
        app(args=args, prog_name="mssgate")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return EXIT_OK
        if isinstance(code, int):
            return code
        return _fail(str(code), EXIT_ERROR)
    except UsageFailed as exc:
        return _fail(str(exc), EXIT_USAGE)
    except MssgateError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("MSSGATE_DEBUG"):
            traceback.print_exc()
        return _fail(f"internal error ({exc.__class__.__name__}); set MSSGATE_DEBUG=1", 1)
    return EXIT_OK


def main() -> None:
    sys.exit(run())
