"""Outgoing relay to peer operators' gateways over mutual TLS (docs/relay.md)."""

from mssgate.relay.backoff import retry_delay
from mssgate.relay.client import (
    Outcome,
    RecipientOutcome,
    SmtpSession,
    Timeouts,
    relay_message,
)
from mssgate.relay.dsn import RecipientFailure, build_dsn
from mssgate.relay.worker import OnDsn, RelayWorker

__all__ = [
    "OnDsn",
    "Outcome",
    "RecipientFailure",
    "RecipientOutcome",
    "RelayWorker",
    "SmtpSession",
    "Timeouts",
    "build_dsn",
    "relay_message",
    "retry_delay",
]
