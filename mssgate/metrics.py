"""Prometheus metrics: event counters bumped by the mail path, gauges read from the database.

Counters live in a registry of our own, never prometheus_client's global one, so that a test
(or a second gateway in one process) can hold a fresh `Metrics` and nothing leaks between
them. The module-level functions bump the process-wide default, which `GET /metrics` serves.

Label values are client-facing text in the end (a scrape is unauthenticated): every value is
forced into a short token alphabet, so an address, a subject or a patient name handed here by
mistake becomes "other" instead of a label. Bounded alphabets also bound cardinality.

The gauges (queue depth, quarantine size, spool backlog, ages) are computed at scrape time by
`DatabaseCollector`, so they are right across several gateway processes sharing PostgreSQL
and never drift from the rows they describe.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.samples import Sample
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from mssgate.db.clock import database_now
from mssgate.db.schema import (
    nodes,
    outbound_acks,
    quarantine,
    queue_documents,
    spool_documents,
    spool_messages,
    spool_recipients,
)
from mssgate.directory.timeutil import aware
from mssgate.screening.cases import overdue_counts

log = logging.getLogger(__name__)

__all__ = [
    "CONTENT_TYPE",
    "DatabaseCollector",
    "Metrics",
    "auth_cache",
    "crl_next_update",
    "crl_reload",
    "default",
    "delivery",
    "delivery_retried_after_ambiguous_failure",
    "document",
    "message_accepted",
    "message_rejected",
    "render",
    "scrape_registry",
    "smime",
    "task_crashed",
    "tls_session",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
# A counter sample: its name (…_total) and its labels, sorted.
CounterKey = tuple[str, tuple[tuple[str, str], ...]]
OTHER: Final = "other"

# Tokens only: letters, digits and . _ - (no "@", no spaces), short. An address or a
# free-text reason cannot pass, whatever a caller hands over.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_ENHANCED_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# TLS versions as ssl.SSLSocket.version() names them.
_TLS_VERSIONS: Final = frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "SSLv3", "none"})


def _token(value: object) -> str:
    text = str(value)
    if _TOKEN.fullmatch(text) and "@" not in text:
        return text.lower()
    return OTHER


def _status(value: object) -> str:
    text = str(value)
    return text if _ENHANCED_STATUS.fullmatch(text) else OTHER


def _tls_version(value: object) -> str:
    text = str(value) if value is not None else "none"
    return text if text in _TLS_VERSIONS else OTHER


DOCUMENT_OUTCOMES = ("queued", "duplicate", "quarantined")


class Metrics:
    """The gateway's event counters, in a registry of their own."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sources: list[Callable[[], Mapping[CounterKey, float]]] = []
        reg = self.registry
        self.smtp_messages = Counter(
            "mssgate_smtp_messages",
            "Messages that reached the end of DATA, by listener and outcome.",
            ["listener", "outcome"],
            registry=reg,
        )
        self.smtp_rejections = Counter(
            "mssgate_smtp_rejections",
            "SMTP rejections by listener, stage (MAIL, RCPT, DATA...) and enhanced status.",
            ["listener", "stage", "status"],
            registry=reg,
        )
        self.smime_results = Counter(
            "mssgate_smime_results",
            "S/MIME verification results (valid, unsigned, invalid, untrusted...).",
            ["result"],
            registry=reg,
        )
        self.tls_sessions = Counter(
            "mssgate_tls_sessions",
            "TLS sessions established, by listener and protocol version.",
            ["listener", "version"],
            registry=reg,
        )
        self.documents = Counter(
            "mssgate_documents",
            "Documents extracted from delivered mail, by format and outcome (queued; duplicate:"
            " queued again, same bytes as an earlier one of the mailbox; quarantined).",
            ["type", "outcome"],
            registry=reg,
        )
        self.delivery_attempts = Counter(
            "mssgate_delivery_attempts",
            "Delivery attempts by route (local, relay) and outcome.",
            ["route", "outcome"],
            registry=reg,
        )
        self.ambiguous_retries = Counter(
            "mssgate_delivery_retried_after_ambiguous_failure",
            "Deliveries retried after a failure that may have delivered (connection lost after "
            "the message was sent, before the reply): each one may be a duplicate.",
            ["route"],
            registry=reg,
        )
        self.task_crashes = Counter(
            "mssgate_task_crashes",
            "Unexpected ends of a long-running task of serve (delivery, relay...), each"
            " followed by a restart.",
            ["task"],
            registry=reg,
        )
        self.crl_next_update_seconds = Gauge(
            "mssgate_crl_next_update_seconds",
            "Seconds until the nextUpdate of each file of policy.crl_files, computed at the"
            " scrape (negative: past it, and every signer that CA vouches for is refused).",
            ["crl"],
            registry=reg,
        )
        self.crl_reloads = Counter(
            "mssgate_crl_reloads",
            "CRL files read again after they changed, by file and outcome (reloaded, or"
            " failed: the last good list stays in force).",
            ["crl", "outcome"],
            registry=reg,
        )
        self.auth_cache_lookups = Counter(
            "mssgate_auth_cache_lookups",
            "Password logins checked against the login cache ([auth] cache_seconds), by"
            " outcome: hit (no Argon2id verification) or miss.",
            ["outcome"],
            registry=reg,
        )
        if process:
            # Linux /proc figures (CPU, memory, open files) and the Python version: what an
            # operator checks first when a gateway misbehaves.
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)

    def message_accepted(self, listener: str) -> None:
        self.smtp_messages.labels(_token(listener), "accepted").inc()

    def message_rejected(self, listener: str, stage: str, status: str) -> None:
        """A rejection at any stage; `status` is the enhanced code (RFC 3463), e.g. 5.7.1.

        Every rejection counts in `mssgate_smtp_rejections`; one at DATA (the message was
        whole and refused) also counts as a rejected message.
        """
        lst, stg = _token(listener), _token(stage)
        # SMTP verbs read best in capitals (MAIL, RCPT, DATA); "other" stays as it is.
        stg = stg if stg == OTHER else stg.upper()
        self.smtp_rejections.labels(lst, stg, _status(status)).inc()
        if stg == "DATA":
            self.smtp_messages.labels(lst, "rejected").inc()

    def tls_session(self, listener: str, version: str | None) -> None:
        self.tls_sessions.labels(_token(listener), _tls_version(version)).inc()

    def smime(self, result: str) -> None:
        self.smime_results.labels(_token(result)).inc()

    def document(self, type: str, outcome: str) -> None:
        if outcome not in DOCUMENT_OUTCOMES:
            raise ValueError(
                f"document outcome must be queued, duplicate or quarantined, not {outcome!r}"
            )
        self.documents.labels(_token(type), outcome).inc()

    def delivery(self, route: str, outcome: str) -> None:
        self.delivery_attempts.labels(_token(route), _token(outcome)).inc()

    def delivery_retried_after_ambiguous_failure(self, route: str) -> None:
        self.ambiguous_retries.labels(_token(route)).inc()

    def task_crashed(self, task: str) -> None:
        self.task_crashes.labels(_token(task)).inc()

    def crl_next_update(self, crl: str, seconds_left: Callable[[], float]) -> None:
        self.crl_next_update_seconds.labels(_token(crl)).set_function(seconds_left)

    def crl_reload(self, crl: str, outcome: str) -> None:
        self.crl_reloads.labels(_token(crl), _token(outcome)).inc()

    def auth_cache(self, outcome: str) -> None:
        self.auth_cache_lookups.labels(_token(outcome)).inc()

    def add_counts(self, source: Callable[[], Mapping[CounterKey, float]]) -> None:
        """Counters bumped in other processes (the acceptance children of `serve --workers`),
        added into this one's at each scrape: one /metrics for the whole gateway."""
        self._sources.append(source)

    def counts(self) -> dict[CounterKey, float]:
        """This process's counter samples, for a parent's `add_counts`."""
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in self.registry.collect()
            if metric.type == "counter"
            for sample in metric.samples
            # Ours only: the process collector's CPU and memory stay the parent's own.
            if sample.name.startswith("mssgate_") and sample.name.endswith("_total")
        }

    def collect(self) -> Iterator[Metric]:
        """So that a Metrics can itself be registered in a scrape registry."""
        extra: dict[CounterKey, float] = {}
        for source in self._sources:
            for key, value in source().items():
                extra[key] = extra.get(key, 0.0) + value
        for metric in self.registry.collect():
            if extra and metric.type == "counter":
                samples = []
                for sample in metric.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    samples.append(sample._replace(value=sample.value + extra.pop(key, 0.0)))
                total = f"{metric.name}_total"
                for key in [k for k in extra if k[0] == total]:
                    samples.append(Sample(total, dict(key[1]), extra.pop(key)))
                metric.samples = samples
            yield metric


def _age(now: datetime, oldest: datetime | None) -> float:
    if oldest is None:
        return 0.0
    return max(0.0, (now - aware(oldest)).total_seconds())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DatabaseCollector:
    """Gauges read at scrape time: a few aggregate queries, no row leaves the database."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._engine = engine
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        # Describing without querying keeps registration free of database access.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "mssgate_database_up", "1 when the metrics queries reached the database."
        )
        try:
            families = self._read()
        except SQLAlchemyError as exc:
            # A scrape must still answer (that is how the outage gets noticed).
            log.warning("metrics: database unreachable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        now = self._clock()
        qd = queue_documents.c
        with self._engine.connect() as conn:
            by_state = {
                str(state): int(n)
                for state, n in conn.execute(select(qd.state, func.count()).group_by(qd.state))
            }
            oldest_lease = conn.execute(
                select(func.min(qd.updated_at)).where(qd.state == "leased")
            ).scalar()
            oldest_ready = conn.execute(
                select(func.min(qd.received_at)).where(qd.state == "ready")
            ).scalar()
            held, held_bytes = conn.execute(
                select(func.count(), func.coalesce(func.sum(quarantine.c.size), 0)).where(
                    quarantine.c.state == "held"
                )
            ).one()
            # Released by `mssgate quarantine release`, a process of its own: a counter in
            # this one would never see it.
            released = conn.execute(
                select(func.count()).where(quarantine.c.state == "released")
            ).scalar_one()
            spooled = conn.execute(
                select(func.count()).where(spool_messages.c.state == "queued")
            ).scalar()
            pending = {
                str(route): int(n)
                for route, n in conn.execute(
                    select(spool_recipients.c.route, func.count())
                    .where(spool_recipients.c.state == "pending")
                    .group_by(spool_recipients.c.route)
                )
            }
            # Delivered messages still waiting for the document pipeline: its backlog.
            pending["documents"] = int(
                conn.execute(
                    select(func.count()).where(spool_documents.c.state == "pending")
                ).scalar_one()
            )
            # ZAMs a RIS leases with kind=ack (mssgate.outbound.zamqueue): one that stopped
            # taking them shows here before it complains.
            acks = {
                str(state): int(n)
                for state, n in conn.execute(
                    select(outbound_acks.c.state, func.count()).group_by(outbound_acks.c.state)
                )
            }
            oldest_ack = conn.execute(
                select(func.min(outbound_acks.c.created_at)).where(outbound_acks.c.state == "ready")
            ).scalar()
            # Second readings (L2) still open past the warning and the 15-day deadline.
            screening = overdue_counts(conn, now)  # each woman's local date
            # Several nodes: each one's heartbeat and the entries only it can deliver.
            node_rows = conn.execute(select(nodes.c.name, nodes.c.heartbeat_at)).all()
            # Heartbeats are stamped with the database's clock (mssgate.nodes): read so.
            beat_clock = database_now(conn)
            by_node: dict[str | None, int] = dict(
                conn.execute(
                    select(spool_messages.c.node, func.count())
                    .where(spool_messages.c.state == "queued")
                    .group_by(spool_messages.c.node)
                ).all()
            )

        depth = GaugeMetricFamily(
            "mssgate_queue_documents", "Documents in the RIS queue, by state.", labels=["state"]
        )
        for state in ("ready", "leased", "done", "dead"):
            depth.add_metric([state], int(by_state.get(state, 0)))
        lease_age = GaugeMetricFamily(
            "mssgate_queue_oldest_lease_age_seconds",
            "Age of the oldest lease still held (0 when none).",
        )
        lease_age.add_metric([], _age(now, oldest_lease))
        ready_age = GaugeMetricFamily(
            "mssgate_queue_oldest_ready_age_seconds",
            "How long the oldest ready document has waited for a consumer (0 when none).",
        )
        ready_age.add_metric([], _age(now, oldest_ready))
        held_count = GaugeMetricFamily(
            "mssgate_quarantine_documents", "Documents held in quarantine for an operator."
        )
        held_count.add_metric([], int(held))
        released_count = GaugeMetricFamily(
            "mssgate_quarantine_released_documents",
            "Documents released from quarantine by an operator, ever (read from the database).",
        )
        released_count.add_metric([], int(released))
        held_size = GaugeMetricFamily(
            "mssgate_quarantine_bytes", "Bytes of the documents held in quarantine."
        )
        held_size.add_metric([], int(held_bytes))
        spool = GaugeMetricFamily(
            "mssgate_spool_messages_queued", "Accepted messages not yet fully delivered."
        )
        spool.add_metric([], int(spooled or 0))
        recipients = GaugeMetricFamily(
            "mssgate_spool_recipients_pending",
            "Recipients still waiting for delivery, by route (documents: delivered messages"
            " waiting for the document pipeline).",
            labels=["route"],
        )
        for route in ("local", "relay", "documents"):
            recipients.add_metric([route], int(pending.get(route, 0)))
        zams = GaugeMetricFamily(
            "mssgate_outbound_acks",
            "Business acknowledgements (ZAM) of outbound messages, items of kind ack, by state.",
            labels=["state"],
        )
        for state in ("ready", "leased", "done"):
            zams.add_metric([state], int(acks.get(state, 0)))
        zam_age = GaugeMetricFamily(
            "mssgate_outbound_acks_oldest_ready_age_seconds",
            "How long the oldest ready ZAM has waited for its RIS to lease it (0 when none).",
        )
        zam_age.add_metric([], _age(now, oldest_ack))
        silence = GaugeMetricFamily(
            "mssgate_node_heartbeat_age_seconds",
            "Seconds since each node's last heartbeat (-1: never served).",
            labels=["node"],
        )
        held_by = GaugeMetricFamily(
            "mssgate_node_spool_messages_queued",
            "Accepted messages not yet fully delivered, by the node whose data folder holds"
            " them (only that node can deliver them).",
            labels=["node"],
        )
        for name, beat in node_rows:
            silence.add_metric([str(name)], -1.0 if beat is None else _age(beat_clock, beat))
            held_by.add_metric([str(name)], int(by_node.get(name, 0)))
        overdue = GaugeMetricFamily(
            "mssgate_screening_cases_overdue",
            "Screening second readings (L2) sent to a CRCDC and still open more than `days`"
            " days after the mammogram (the result is due within 15).",
            labels=["days"],
        )
        for days, count in sorted(screening.items()):
            overdue.add_metric([str(days)], count)
        return [
            overdue,
            silence,
            held_by,
            depth,
            lease_age,
            ready_age,
            held_count,
            released_count,
            held_size,
            spool,
            recipients,
            zams,
            zam_age,
        ]


_default = Metrics()


def default() -> Metrics:
    """The process-wide counters that the module-level functions bump."""
    return _default


def message_accepted(listener: str) -> None:
    """A message accepted (250 after DATA) on `listener` (submission, smtps, mta)."""
    _default.message_accepted(listener)


def message_rejected(listener: str, stage: str, status: str) -> None:
    """A rejection on `listener` at `stage` (CONNECT, AUTH, MAIL, RCPT, DATA) with the
    enhanced status code (e.g. "5.7.1")."""
    _default.message_rejected(listener, stage, status)


def tls_session(listener: str, version: str | None) -> None:
    """A TLS handshake completed; `version` as ssl.SSLObject.version() gives it."""
    _default.tls_session(listener, version)


def smime(result: str) -> None:
    """One S/MIME verification result (a short token: valid, unsigned, invalid...)."""
    _default.smime(result)


def document(type: str, outcome: str) -> None:
    """A document extracted from mail: `type` is its format, `outcome` queued|quarantined."""
    _default.document(type, outcome)


def delivery(route: str, outcome: str) -> None:
    """One delivery attempt: `route` local|relay, `outcome` delivered|deferred|failed."""
    _default.delivery(route, outcome)


def delivery_retried_after_ambiguous_failure(route: str) -> None:
    """A delivery on `route` failed after the whole message was sent and before the reply
    (it may have arrived) and will be tried again: at least once makes that a possible
    duplicate, which this counts."""
    _default.delivery_retried_after_ambiguous_failure(route)


def task_crashed(task: str) -> None:
    """A supervised task of serve ended with an exception (it is restarted)."""
    _default.task_crashed(task)


def crl_next_update(crl: str, seconds_left: Callable[[], float]) -> None:
    """The gauge of one CRL file (its label `crl`) reads `seconds_left()` at each scrape."""
    _default.crl_next_update(crl, seconds_left)


def crl_reload(crl: str, outcome: str) -> None:
    """A changed CRL file was read again: `outcome` reloaded|failed."""
    _default.crl_reload(crl, outcome)


def scrape_registry(engine: Engine, metrics: Metrics | None = None) -> CollectorRegistry:
    """A registry holding the counters of `metrics` (default: the process's) and the
    database gauges of `engine`: what one API application serves."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics or _default)
    registry.register(DatabaseCollector(engine))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything in `registry`."""
    return generate_latest(registry)


def auth_cache(outcome: str) -> None:
    """A password login looked up in the login cache: "hit" or "miss"."""
    _default.auth_cache(outcome)
