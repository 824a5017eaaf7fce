"""The append-only, hash-chained audit trail."""

from mssgate.audit.chain import AuditEntry, VerifyReport, append, entries, verify

__all__ = ["AuditEntry", "VerifyReport", "append", "entries", "verify"]
