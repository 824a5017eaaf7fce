"""Prometheus metrics of a live gateway change as a scripted scenario expects."""

from __future__ import annotations

import re

import httpx

from tests.smtp.conftest import ALICE, BOB, Gateway, message


def scrape(gateway: Gateway) -> dict[str, float]:
    text = httpx.get(
        f"https://127.0.0.1:{gateway.ports['api']}/metrics", verify=gateway.client_context()
    ).text
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def test_metrics_follow_accepts_and_rejects(gateway: Gateway) -> None:
    before = scrape(gateway)
    client = gateway.login()
    client.sendmail(ALICE, [BOB], message())
    client.mail(ALICE)
    assert client.docmd("RCPT TO:<nobody@hopital-a.test>")[0] == 550
    client.quit()
    gateway.wait_delivered(BOB, 1)
    gateway.wait_event("delivery.ok")
    after = scrape(gateway)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    accepted = 'mssgate_smtp_messages_total{listener="submission",outcome="accepted"}'
    assert delta(accepted) == 1
    rejected = [k for k in after if k.startswith("mssgate_smtp_rejections_total") and "5.1.1" in k]
    assert rejected and sum(delta(k) for k in rejected) == 1
    tls = [k for k in after if k.startswith("mssgate_tls_sessions_total") and "TLSv1.3" in k]
    assert tls and sum(delta(k) for k in tls) >= 1
    delivered = [k for k in after if k.startswith("mssgate_delivery_attempts_total")]
    assert any(delta(k) == 1 for k in delivered if "delivered" in k)
    assert "@" not in "".join(after)  # no addresses in labels
