"""`GET /metrics` over real HTTPS: counters bumped by the mail path, gauges read from the
database at scrape time, nothing that names a person."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from mssgate import metrics
from mssgate.db import open_engine, upgrade
from mssgate.db.schema import spool_messages, spool_recipients
from mssgate.documents.limits import DocumentLimits
from mssgate.metrics import DatabaseCollector, Metrics, render, scrape_registry
from tests.api.conftest import Api
from tests.documents.factory import CdaSpec, make_cda
from tests.queue.helpers import RIS_A, SENDER, cda, deliver, mail

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(api: Api) -> tuple[str, Samples]:
    with api.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


def test_counters_move_when_the_functions_are_called(api: Api) -> None:
    _, before = scrape(api)
    metrics.message_accepted("submission")
    metrics.message_accepted("submission")
    metrics.message_rejected("mta", "RCPT", "5.7.1")
    metrics.message_rejected("mta", "DATA", "5.7.1")
    metrics.tls_session("mta", "TLSv1.3")
    metrics.smime("valid")
    # Deliveries are counted by the workers themselves: tests/relay/test_metrics.py and
    # tests/imap/test_units.py run them.
    _, after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mssgate_smtp_messages_total", listener="submission", outcome="accepted") == 2
    # A refusal at DATA is a rejected message; one at RCPT is only a rejection.
    assert delta("mssgate_smtp_messages_total", listener="mta", outcome="rejected") == 1
    assert delta("mssgate_smtp_rejections_total", listener="mta", stage="RCPT", status="5.7.1") == 1
    assert delta("mssgate_smtp_rejections_total", listener="mta", stage="DATA", status="5.7.1") == 1
    assert delta("mssgate_tls_sessions_total", listener="mta", version="TLSv1.3") == 1
    assert delta("mssgate_smime_results_total", result="valid") == 1


def test_api_connections_count_their_tls_version(api: Api) -> None:
    # Each scrape below opens its own connection, counted before the page is rendered.
    _, before = scrape(api)
    with api.client() as client:
        assert client.get("/healthz").status_code == 200
    _, after = scrape(api)
    name, labels = "mssgate_tls_sessions_total", {"listener": "api", "version": "TLSv1.3"}
    assert value(after, name, **labels) - value(before, name, **labels) == 2


def test_database_gauges_follow_the_queue_and_the_quarantine(api: Api) -> None:
    _, before = scrape(api)
    assert value(before, "mssgate_database_up") == 1
    first = mail([cda(1), cda(2)])
    deliver(api.queue, first, delivery="0000000000001REPLAY")
    deliver(api.queue, mail([make_cda(CdaSpec(include_ins=False))], n=2))
    # The same delivery again (an at-least-once replay: same spool entry, same bytes)
    # counts nothing twice.
    deliver(api.queue, first, delivery="0000000000001REPLAY")
    text, after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "mssgate_queue_documents", state="ready") == 2
    assert value(after, "mssgate_queue_documents", state="leased") == 0
    assert value(after, "mssgate_quarantine_documents") == 1
    assert value(after, "mssgate_quarantine_bytes") > 0
    assert delta("mssgate_documents_total", type="cda-n3", outcome="queued") == 2
    assert delta("mssgate_documents_total", type="cda-n3", outcome="quarantined") == 1
    assert value(after, "mssgate_queue_oldest_ready_age_seconds") >= 0

    class Ris:
        name = "ris-a"
        mailbox = RIS_A

    api.queue.lease(Ris(), max_documents=1)
    _, leased = scrape(api)
    assert value(leased, "mssgate_queue_documents", state="ready") == 1
    assert value(leased, "mssgate_queue_documents", state="leased") == 1
    # No address, subject or patient name reaches the page, whatever was ingested.
    for secret in (RIS_A, SENDER, "PAT-TROIS", "DOMINIQUE", "279035121518989"):
        assert secret not in text


def test_ages_and_spool_backlog_are_computed_at_scrape_time(tmp_path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    with engine.begin() as conn:
        for i, state in enumerate(("queued", "queued", "done")):
            conn.execute(
                insert(spool_messages).values(
                    id=f"m{i}",
                    received_at=now,
                    listener="mta",
                    sender="a@b.test",
                    size=10,
                    state=state,
                )
            )
        conn.execute(
            insert(spool_recipients).values(
                spool_id="m0",
                recipient="x@peer.test",
                route="relay",
                state="pending",
                attempts=0,
                next_attempt_at=now,
                updated_at=now,
            )
        )
    collector = DatabaseCollector(engine, clock=lambda: now + timedelta(seconds=90))
    families = {f.name: f for f in collector.collect()}
    assert families["mssgate_spool_messages_queued"].samples[0].value == 2
    relay = [
        s
        for s in families["mssgate_spool_recipients_pending"].samples
        if s.labels["route"] == "relay"
    ]
    assert relay[0].value == 1
    assert families["mssgate_queue_oldest_lease_age_seconds"].samples[0].value == 0
    engine.dispose()


def test_a_dead_database_still_answers_with_database_up_0(tmp_path) -> None:
    # No schema: every query fails, as it would with the database down.
    engine = open_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    registry = scrape_registry(engine, Metrics(process=False))
    samples = parse(render(registry).decode())
    assert value(samples, "mssgate_database_up") == 0
    engine.dispose()


@pytest.mark.parametrize(
    ("listener", "stage", "status"),
    [
        ("dr.house@hopital-a.test", "RCPT", "5.7.1"),
        ("mta", "RCPT <dr.house@hopital-a.test>", "5.7.1"),
        ("mta", "RCPT", "550 no such user dr.house@hopital-a.test"),
    ],
)
def test_label_values_never_carry_addresses(listener: str, stage: str, status: str) -> None:
    own = Metrics(process=False)
    own.message_rejected(listener, stage, status)
    text = render(own.registry).decode()
    assert "@" not in text and "house" not in text
    assert "mssgate_smtp_rejections_total{" in text and '"other"' in text


def test_a_fresh_metrics_is_isolated_from_the_process_one() -> None:
    own = Metrics(process=False)
    own.message_accepted("smtps")
    samples = parse(render(own.registry).decode())
    assert value(samples, "mssgate_smtp_messages_total", listener="smtps", outcome="accepted") == 1
    with pytest.raises(ValueError, match="queued, duplicate or quarantined"):
        own.document("pdf", "lost")


def test_a_release_by_another_process_shows_at_the_next_scrape(api: Api) -> None:
    from mssgate.queue import DocumentQueue, ingest_message
    from mssgate.queue.ingest import release

    [held] = ingest_message(
        api.queue,
        mail([cda(7)]),
        mailbox=RIS_A,
        sender=SENDER,
        message_id=None,
        subject=None,
        received_at=datetime.now(UTC),
        limits=DocumentLimits(),
        allow_test_oids=False,  # test INS refused: held
    )
    _, before = scrape(api)
    assert value(before, "mssgate_quarantine_documents") == 1
    assert value(before, "mssgate_quarantine_released_documents") == 0
    # What `mssgate quarantine release` does, with its own engine as its own process would:
    # no counter of the serving process moves, the database does.
    engine = open_engine(api.config.database_url)
    try:
        other = DocumentQueue(engine, data_dir=api.config.server.data_dir)
        release(other, held, limits=DocumentLimits(), allow_test_oids=True, actor="cli:test")
    finally:
        engine.dispose()
    _, after = scrape(api)
    assert value(after, "mssgate_quarantine_documents") == 0
    assert value(after, "mssgate_quarantine_released_documents") == 1
    assert value(after, "mssgate_queue_documents", state="ready") == 1


def test_a_repeated_document_counts_as_duplicate_not_queued(api: Api) -> None:
    from mssgate.queue.ingest import ingest

    _, before = scrape(api)
    raw = mail([cda(8)])
    reports = []
    for delivery in ("0000000000001FIRST", "0000000000002AGAIN", "0000000000002AGAIN"):
        reports.append(
            ingest(
                api.queue,
                raw,
                delivery=delivery,
                mailbox=RIS_A,
                sender=SENDER,
                message_id=None,
                subject=None,
                received_at=datetime.now(UTC),
                limits=DocumentLimits(),
                allow_test_oids=True,
            )
        )
    first, again, replay = reports
    assert (len(first.queued), first.duplicates, first.replayed) == (1, [], [])
    assert again.duplicates == again.queued and again.replayed == []  # same bytes, new mail
    assert replay.replayed == replay.queued == again.queued  # the same delivery, run again
    _, after = scrape(api)

    def delta(outcome: str) -> float:
        name, labels = "mssgate_documents_total", {"type": "cda-n3", "outcome": outcome}
        return value(after, name, **labels) - value(before, name, **labels)

    assert (delta("queued"), delta("duplicate")) == (1, 1)
