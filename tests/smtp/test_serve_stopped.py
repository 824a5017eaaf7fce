"""`serve.stopped` names every listener the gateway closed, as `serve.started` named them
(issue 18 item 10: it listed the SMTP ones only)."""

from __future__ import annotations

from tests.smtp.conftest import Gateway


def test_serve_stopped_names_every_listener_serve_started_named(gateway: Gateway) -> None:
    gateway.stop()
    events = gateway.events()
    [started] = [e for e in events if e.get("event") == "serve.started"]
    [stopped] = [e for e in events if e.get("event") == "serve.stopped"]
    opened = started["ports"]
    assert isinstance(opened, dict) and {"submission", "smtps", "mta", "api"} <= set(opened)
    assert stopped["listeners"] == list(opened)
