"""The RIS integration queue: documents leased to consumers, acked, nacked or dead.

`DocumentQueue` is the one interface (SQLite and PostgreSQL backends behind it); `ingest`
turns a delivered message into queued and quarantined documents; `hl7mdm` and `mdn` are the
pure builders of what a RIS reads and what the sender gets back.
"""

from mssgate.queue.crypto import AtRestCipher, EncryptionError
from mssgate.queue.hl7mdm import MdmEnvelope, build_mdm, parse_mdm
from mssgate.queue.ingest import IngestReport, ingest, ingest_message, release
from mssgate.queue.mdn import build_mdn, receipt_recipient
from mssgate.queue.models import (
    Blob,
    Lease,
    QuarantineEntry,
    QuarantineState,
    QueueEntry,
    QueueState,
    Receipt,
)
from mssgate.queue.quarantine import QuarantineStore
from mssgate.queue.service import (
    DocumentQueue,
    Holder,
    LeaseLost,
    NewDocument,
    QueueSettings,
    ReceiptCallback,
)

__all__ = [
    "AtRestCipher",
    "Blob",
    "DocumentQueue",
    "EncryptionError",
    "Holder",
    "IngestReport",
    "Lease",
    "LeaseLost",
    "MdmEnvelope",
    "NewDocument",
    "QuarantineEntry",
    "QuarantineState",
    "QuarantineStore",
    "QueueEntry",
    "QueueSettings",
    "QueueState",
    "Receipt",
    "ReceiptCallback",
    "build_mdm",
    "build_mdn",
    "ingest",
    "ingest_message",
    "parse_mdm",
    "receipt_recipient",
    "release",
]
