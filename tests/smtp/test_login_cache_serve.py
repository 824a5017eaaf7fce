"""The login cache in `mssgate serve`, over real sockets: smtplib AUTH PLAIN over TLS (SMTPS)
and imaplib LOGIN through the IMAP front door share one cache; a directory change made by
the CLI (another process, another engine, as another node would) ends it at once; a wrong
password after a cached success is refused and counted by the penalty. The cache's use is
read from /metrics, never from timing."""

from __future__ import annotations

import imaplib
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, Cli
from tests.smtp.conftest import ALICE, PASSWORD, Gateway, free_env
from tests.smtp.test_metrics_serve import scrape

pytestmark = pytest.mark.skipif(
    shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin") is None,
    reason="Dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)",
)

HIT = 'mssgate_auth_cache_lookups_total{outcome="hit"}'
MISS = 'mssgate_auth_cache_lookups_total{outcome="miss"}'
NEW_PASSWORD = "another long password"


@pytest.fixture
def gateway_dir(cli: Cli) -> Iterator[Path]:
    # Dovecot's mail user must reach the data folder: a folder of our own under /tmp.
    root = Path(tempfile.mkdtemp(prefix="mssgate-logincache-"))
    root.chmod(0o711)
    data = root / "data"
    cli.ok("init", "--data", str(data), "--domain", DOMAIN)
    cli.ok("--config", str(data / "mssgate.toml"), "directory", "add", ALICE, "--name", "A",
           "--rpps", "99700367909", "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    yield data
    shutil.rmtree(root, ignore_errors=True)


def start(data: Path, **env: str) -> Gateway:
    gateway = Gateway(data=data, env=free_env(data))
    gateway.env.update(
        MSSGATE_IMAP__ENABLED="true",
        MSSGATE_IMAP__PORT="0",
        MSSGATE_IMAP__IMAPS_PORT="0",
        MSSGATE_SMTP__AUTH_FAILURE_DELAY_MAX_SECONDS="0.2",
        **env,
    )
    gateway.start()
    return gateway


def smtps_plain(gw: Gateway, password: str = PASSWORD) -> None:
    """AUTH PLAIN with its initial response, inside implicit TLS; raises on 535."""
    client = smtplib.SMTP_SSL(
        "127.0.0.1", gw.ports["smtps"], context=gw.client_context(), timeout=30
    )
    try:
        client.ehlo("client.test")
        client.user, client.password = ALICE, password
        client.auth("PLAIN", client.auth_plain)
    finally:
        client.close()


def imap_login(gw: Gateway, password: str = PASSWORD) -> None:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", gw.ports["imaps"], ssl_context=gw.client_context(), timeout=30
    )
    try:
        client.login(ALICE, password)
    except imaplib.IMAP4.error:
        client.shutdown()
        raise
    assert client.select("INBOX")[0] == "OK"  # the session behind the front door works
    client.logout()


def test_cached_logins_over_smtp_and_imap_and_what_ends_them(cli: Cli, gateway_dir: Path) -> None:
    gw = start(gateway_dir)
    cfg = ["--config", str(gateway_dir / "mssgate.toml")]
    try:
        base = scrape(gw)

        def delta(name: str) -> float:
            return scrape(gw).get(name, 0.0) - base.get(name, 0.0)

        smtps_plain(gw)  # verified in full, remembered
        assert (delta(HIT), delta(MISS)) == (0, 1)
        smtps_plain(gw)
        imap_login(gw)  # one cache for both protocols
        assert (delta(HIT), delta(MISS)) == (2, 1)

        # A wrong password after a cached success: refused, and the penalty counts it.
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtps_plain(gw, PASSWORD + "x")
        assert refused.value.smtp_code == 535
        gw.wait_event("smtp.auth_failed", failures=1)
        with pytest.raises(imaplib.IMAP4.error):
            imap_login(gw, PASSWORD[:-1])
        gw.wait_event("imap.auth_failed", failures=2)
        assert delta(HIT) == 2

        # Another process changes the password: the cached one stops working at once.
        cli.ok(*cfg, "directory", "passwd", ALICE, "--password-stdin", stdin=NEW_PASSWORD + "\n")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtps_plain(gw)
        with pytest.raises(imaplib.IMAP4.error):
            imap_login(gw)
        assert delta(HIT) == 2
        smtps_plain(gw, NEW_PASSWORD)
        imap_login(gw, NEW_PASSWORD)
        assert delta(HIT) == 3

        # Suspended by another process: refused at once, cache or not.
        cli.ok(*cfg, "directory", "suspend", ALICE)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtps_plain(gw, NEW_PASSWORD)
        with pytest.raises(imaplib.IMAP4.error):
            imap_login(gw, NEW_PASSWORD)
        cli.ok(*cfg, "directory", "reactivate", ALICE)
        imap_login(gw, NEW_PASSWORD)
        assert delta(HIT) == 4

        # Removed: refused.
        cli.ok(*cfg, "directory", "remove", ALICE)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtps_plain(gw, NEW_PASSWORD)
        assert delta(HIT) == 4
    finally:
        gw.stop()


def test_cache_seconds_zero_verifies_every_login(gateway_dir: Path) -> None:
    gw = start(gateway_dir, MSSGATE_AUTH__CACHE_SECONDS="0")
    try:
        for _ in range(2):
            smtps_plain(gw)
            imap_login(gw)
        after = scrape(gw)
        assert after.get(HIT, 0.0) == 0 and after.get(MISS, 0.0) == 0
        assert len([e for e in gw.events() if e.get("event") == "smtp.auth"]) == 2
    finally:
        gw.stop()
