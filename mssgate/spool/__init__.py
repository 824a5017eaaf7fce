"""The durable spool: what SMTP accepted, until every recipient has it."""

from mssgate.spool.store import PendingDelivery, Spool, SpoolEntry, new_queue_id

__all__ = ["PendingDelivery", "Spool", "SpoolEntry", "new_queue_id"]
