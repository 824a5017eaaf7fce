"""The error taxonomy shared by every layer.

A `MssgateError` carries a client-safe message: the CLI prints it as one line, the API turns it
into a problem+json body, SMTP into a reply text. Detail that must not reach a client (paths of
keys, patient data, policy internals) goes to the structured log, never into `str(error)`.
"""

from __future__ import annotations


class MssgateError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(MssgateError):
    """The configuration cannot be loaded or is invalid."""


class ValidationFailed(MssgateError):
    """An input from a user or a peer is malformed (address, RPPS, kind...)."""


class NotFound(MssgateError):
    """The named object does not exist."""


class Conflict(MssgateError):
    """The object exists already, or the change contradicts the current state."""


class StorageError(MssgateError):
    """The database or the data folder failed (unreachable, read-only, corrupt)."""


class PKIError(MssgateError):
    """A key or certificate cannot be created, read or used."""
