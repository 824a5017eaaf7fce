"""The error taxonomy shared by every layer.

A `MssgateError` carries a client-safe message: the CLI prints it as one line, the API turns it
into a problem+json body, SMTP into a reply text. Detail that must not reach a client (paths of
keys, patient data, policy internals) goes to the structured log, never into `str(error)`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class MssgateError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(MssgateError):
    """The configuration cannot be loaded or is invalid."""


class ValidationFailed(MssgateError, ValueError):
    """An input from a user or a peer is malformed (address, RPPS, kind...).

    Also a ValueError, so that pydantic validators can raise it and keep its message.
    """


class UsageFailed(ValidationFailed):
    """A command-line option has a value the command does not know (exit 2, like a usage
    error, but reported as one readable line)."""


class NotFound(MssgateError):
    """The named object does not exist."""


class Conflict(MssgateError):
    """The object exists already, or the change contradicts the current state."""


class StorageError(MssgateError):
    """The database or the data folder failed (unreachable, read-only, corrupt)."""


class PKIError(MssgateError):
    """A key or certificate cannot be created, read or used."""


def describe_validation(exc: ValidationError) -> str:
    """One line for a pydantic ValidationError; our own errors speak for themselves."""
    parts = []
    for err in exc.errors():
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, MssgateError):
            parts.append(str(cause))
            continue
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {cause if cause is not None else err['msg']}")
    return "; ".join(parts)
