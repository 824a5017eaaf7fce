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


def test_a_sigterm_as_soon_as_serve_json_appears_stops_serve_cleanly(
    gateway_setup: Gateway,
) -> None:
    """serve.json tells scripts serve is up; a SIGTERM sent the moment it appears found
    Python's default handler (installed only after the file, the event and the banner) and
    killed serve undrained, without serve.started or serve.stopped (seen once under load)."""
    gateway_setup.start()  # returns as soon as run/serve.json exists
    code = gateway_setup.stop()
    events = [e.get("event") for e in gateway_setup.events()]
    assert code == 0, gateway_setup.logs()
    assert "serve.started" in events and "serve.stopped" in events
