"""The append-only, hash-chained audit trail."""

from mssgate.audit.chain import (
    AuditEntry,
    NewEntry,
    VerifyReport,
    append,
    append_many,
    batched,
    entries,
    verify,
)

__all__ = [
    "AuditEntry",
    "NewEntry",
    "VerifyReport",
    "append",
    "append_many",
    "batched",
    "entries",
    "verify",
]
