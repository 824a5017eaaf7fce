"""Pro Santé Connect logins: OAUTHBEARER and XOAUTH2 with tokens from a real OpenID provider.

The provider (npm's oidc-provider, tests/oidc/provider.mjs) signs JWT access tokens whose
`preferred_username` is "8" + RPPS, as PSC's are; the clients are Python's smtplib and imaplib.
"""

from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest

from mssgate.config import OidcConfig
from mssgate.oidc import TokenRejected, TokenVerifier
from mssgate.sasl import BearerResponse, parse
from tests.conftest import DOMAIN, Cli
from tests.imap.conftest import ImapGateway, imap_datadir, require_dovecot, runner_env
from tests.oidc.conftest import ALICE_RPPS, AUDIENCE, BOB_RPPS, OPAQUE_AUDIENCE, OidcProvider
from tests.smtp.conftest import Gateway, free_env

pytestmark = pytest.mark.slow
__all__ = ["imap_datadir"]  # the fixture, imported for the IMAP tests

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "a long enough password"


def oauthbearer(token: str, authzid: str = "") -> bytes:
    gs2 = f"n,a={authzid}," if authzid else "n,,"
    return f"{gs2}\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def sasl_client(first: bytes) -> Callable[[bytes | None], str]:
    """An authobject for smtplib/imaplib: the message, then RFC 7628's \\x01 to a challenge."""

    def answer(challenge: bytes | None = None) -> str:
        return first.decode() if not challenge else "\x01"

    return answer


def verifier(provider: OidcProvider, **extra: object) -> TokenVerifier:
    config = OidcConfig(issuer=provider.issuer, audience=AUDIENCE, ca=provider.ca,
                        clock_skew_seconds=0, **extra)  # type: ignore[arg-type]  # fmt: skip
    return TokenVerifier(config)


def add_practitioners(cli: Cli) -> None:
    for who, rpps in ((ALICE, ALICE_RPPS), (BOB, BOB_RPPS)):
        cli.ok("directory", "add", who, "--name", who.split("@")[0], "--rpps", rpps,
               "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip


# -------------------------------------------------------------------- wire format
def test_sasl_messages() -> None:
    assert parse("OAUTHBEARER", oauthbearer("abc.def-_~+/=", ALICE)) == BearerResponse(
        "OAUTHBEARER", ALICE, "abc.def-_~+/="
    )
    assert parse("OAUTHBEARER", b"n,,\x01host=x\x01auth=Bearer t\x01\x01").authzid is None  # type: ignore[union-attr]
    assert parse("XOAUTH2", xoauth2(ALICE, "t")) == BearerResponse("XOAUTH2", ALICE, "t")
    for bad in (
        b"y,,\x01auth=Bearer t\x01\x01",  # channel binding asked: not offered
        b"n,,\x01auth=Bearer t\x01",  # unterminated
        b"n,,\x01auth=Basic t\x01\x01",
        b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",  # two tokens
        b"n,,\x01auth=Bearer a b\x01\x01",
        b"n,a=x=y,\x01auth=Bearer t\x01\x01",  # an unescaped '=' in the saslname
        b"n,,\x01auth=Bearer " + b"a" * 10_000 + b"\x01\x01",  # longer than any line allows
    ):
        assert parse("OAUTHBEARER", bad) is None, bad


# -------------------------------------------------------------------- token checks
def test_a_provider_token_names_the_practitioner(oidc_provider: OidcProvider) -> None:
    checker = verifier(oidc_provider, acr_values=("eidas1",))
    assert checker.verify(oidc_provider.token("alice")).idnat == "8" + ALICE_RPPS
    # The bare RPPS is PSC's other form.
    assert checker.verify(oidc_provider.token("alice-bare")).idnat == "8" + ALICE_RPPS
    refused = {
        "wrong audience": oidc_provider.token("alice", resource="https://other.test/"),
        "acr 'eidas0' not accepted": oidc_provider.token("alice-weak"),
        "no preferred_username claim": oidc_provider.token("no-rpps"),
        "not a JWT": "not-a-token",
    }
    for reason, token in refused.items():
        with pytest.raises(TokenRejected) as caught:
            checker.verify(token)
        assert caught.value.reason == reason
    # A token signed by another key under the provider's kid: the signature is what counts.
    forged = jwt.encode(
        jwt.decode(oidc_provider.token("bob"), options={"verify_signature": False}),
        _other_rsa_key(),
        algorithm="RS256",
        headers={"kid": "test-key-1"},
    )
    with pytest.raises(TokenRejected, match="InvalidSignatureError"):
        checker.verify(forged)
    checker.close()


def _other_rsa_key() -> object:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def expired_token(provider: OidcProvider) -> str:
    token = provider.token("alice-short")  # lives one second
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    # Waits for the clock to pass exp (the tests run with no leeway); asserts nothing.
    while time.time() <= exp + 1:
        time.sleep(0.2)
    return token


class CountingVerifier(TokenVerifier):
    """The real verifier, counting its JWKS fetches."""

    fetches = 0

    def _fetch_keys(self) -> dict[str | None, dict[str, object]]:
        self.fetches += 1
        return super()._fetch_keys()


@pytest.mark.parametrize(("refetch_min", "fetches"), [(3600, 1), (0, 3)])
def test_an_unknown_kid_refetches_the_keys_at_most_so_often(
    oidc_provider: OidcProvider, refetch_min: int, fetches: int
) -> None:
    config = OidcConfig(issuer=oidc_provider.issuer, audience=AUDIENCE, ca=oidc_provider.ca,
                        jwks_refetch_min_seconds=refetch_min)  # fmt: skip
    checker = CountingVerifier(config)
    good = oidc_provider.token("alice")
    assert checker.verify(good).idnat == "8" + ALICE_RPPS
    claims = jwt.decode(good, options={"verify_signature": False})
    for _ in range(2):  # a forger trying kids the provider never had
        forged = jwt.encode(claims, _other_rsa_key(), algorithm="RS256", headers={"kid": "x"})
        with pytest.raises(TokenRejected, match="unknown signing key"):
            checker.verify(forged)
    assert checker.fetches == fetches
    assert checker.verify(good).idnat == "8" + ALICE_RPPS  # the known key still works
    checker.close()


def test_an_expired_token_is_refused(oidc_provider: OidcProvider) -> None:
    token = expired_token(oidc_provider)
    checker = verifier(oidc_provider)
    with pytest.raises(TokenRejected, match="expired"):
        checker.verify(token)
    checker.close()


def test_introspection(oidc_provider: OidcProvider) -> None:
    checker = verifier(oidc_provider, introspection=True, client_id="gateway",
                       client_secret=oidc_provider_secret())  # fmt: skip
    opaque = oidc_provider.token("alice", resource=OPAQUE_AUDIENCE)
    with pytest.raises(TokenRejected, match="wrong audience"):
        checker.verify(opaque)
    config = OidcConfig(issuer=oidc_provider.issuer, audience=OPAQUE_AUDIENCE, ca=oidc_provider.ca,
                        introspection=True, client_id="gateway",
                        client_secret=oidc_provider_secret())  # fmt: skip
    checker.close()
    checker = TokenVerifier(config)
    assert checker.verify(opaque).idnat == "8" + ALICE_RPPS
    with pytest.raises(TokenRejected, match="inactive"):
        checker.verify("no-such-token")
    checker.close()


def oidc_provider_secret() -> str:
    from tests.oidc.conftest import SECRET

    return SECRET


# -------------------------------------------------------------------- SMTP
@pytest.fixture
def smtp_gateway(cli: Cli, datadir: Path, oidc_provider: OidcProvider) -> Iterator[Gateway]:
    add_practitioners(cli)
    gateway = Gateway(data=datadir, env={**free_env(datadir), **oidc_provider.env()})
    gateway.start()
    yield gateway
    gateway.stop()


def test_smtp_oauthbearer_and_xoauth2(smtp_gateway: Gateway, oidc_provider: OidcProvider) -> None:
    plain = smtplib.SMTP("127.0.0.1", smtp_gateway.ports["submission"], timeout=20)
    plain.ehlo("client.test")
    assert "oauthbearer" not in plain.esmtp_features.get("auth", "").lower()  # not before TLS
    plain.quit()

    client = smtp_gateway.submission()
    assert "OAUTHBEARER" in client.esmtp_features["auth"].split()
    assert "XOAUTH2" in client.esmtp_features["auth"].split()
    token = oidc_provider.token("alice")
    # smtplib puts the initial response on the AUTH line (about 1.2 KB here).
    code, _ = client.auth("OAUTHBEARER", sasl_client(oauthbearer(token, ALICE)))
    assert code == 235
    client.quit()

    client = smtp_gateway.submission()
    assert client.auth("XOAUTH2", sasl_client(xoauth2(ALICE, token)))[0] == 235
    client.quit()

    # Over SMTPS too, without an authorization identity (Alice has one mailbox).
    import ssl

    context = ssl.create_default_context(cafile=smtp_gateway.ca)
    smtps = smtplib.SMTP_SSL("127.0.0.1", smtp_gateway.ports["smtps"], timeout=20, context=context)
    smtps.ehlo("client.test")
    assert smtps.auth("OAUTHBEARER", sasl_client(oauthbearer(token)))[0] == 235
    smtps.quit()


def test_smtp_refusals(smtp_gateway: Gateway, oidc_provider: OidcProvider) -> None:
    cases = {
        "unknown RPPS": oauthbearer(oidc_provider.token("stranger")),
        "wrong audience": oauthbearer(oidc_provider.token("alice", resource="https://o.test/")),
        "a= names someone else": oauthbearer(oidc_provider.token("alice"), BOB),
    }
    for name, message in cases.items():
        client = smtp_gateway.submission()
        challenges: list[bytes] = []

        def answer(
            challenge: bytes | None = None, message: bytes = message, seen: list[bytes] = challenges
        ) -> str:
            if challenge:
                seen.append(challenge)
                return "\x01"
            return message.decode()

        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.auth("OAUTHBEARER", answer)
        assert caught.value.smtp_code == 535, name
        assert b"5.7.8" in caught.value.smtp_error, name
        # RFC 7628's error document came first.
        assert len(challenges) == 1 and b'"status":"invalid_token"' in challenges[0], name
        client.quit()
    failed = [e for e in smtp_gateway.events() if e.get("event") == "smtp.auth_failed"]
    assert [e["failures"] for e in failed] == [1, 2, 3]  # each counts toward the penalty
    reasons = [e["reason"] for e in smtp_gateway.events() if e.get("event") == "oidc.refused"]
    assert reasons == [
        "RPPS not in the directory",
        "wrong audience",
        "authorization identity is not this practitioner's",
    ]


def test_smtp_token_of_a_suspended_or_ambiguous_practitioner(
    smtp_gateway: Gateway, oidc_provider: OidcProvider, cli: Cli
) -> None:
    token = oidc_provider.token("alice")
    cli.ok("directory", "suspend", ALICE)
    client = smtp_gateway.submission()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.auth("OAUTHBEARER", sasl_client(oauthbearer(token)))
    client.quit()
    cli.ok("directory", "reactivate", ALICE)
    # A second mailbox under Alice's RPPS: without a name the token cannot choose.
    second = f"alice.cabinet@{DOMAIN}"
    cli.ok("directory", "add", second, "--name", "cabinet", "--rpps", ALICE_RPPS,
           "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    client = smtp_gateway.submission()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        client.auth("OAUTHBEARER", sasl_client(oauthbearer(token)))
    client.quit()
    client = smtp_gateway.submission()
    assert client.auth("OAUTHBEARER", sasl_client(oauthbearer(token, second)))[0] == 235
    client.quit()
    reasons = [e["reason"] for e in smtp_gateway.events() if e.get("event") == "oidc.refused"]
    assert reasons == [
        "account suspended",
        "several mailboxes for this RPPS: the client must name one",
    ]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_provider_down_is_a_temporary_failure(
    cli: Cli, datadir: Path, oidc_provider: OidcProvider
) -> None:
    add_practitioners(cli)
    env = oidc_provider.env(MSSGATE_OIDC__ISSUER=f"https://127.0.0.1:{closed_port()}")
    gateway = Gateway(data=datadir, env={**free_env(datadir), **env})
    gateway.start()
    try:
        token = oidc_provider.token("alice")
        for _ in range(2):
            client = gateway.submission()
            with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                client.auth("OAUTHBEARER", sasl_client(oauthbearer(token)))
            assert caught.value.smtp_code == 454
            client.quit()
        events = gateway.events()
        assert [e["event"] for e in events if str(e.get("event")).startswith("oidc.")] == [
            "oidc.unavailable",
            "oidc.unavailable",
        ]
        # Not the client's fault: nothing counted toward its penalty.
        assert not [e for e in events if e.get("event") == "smtp.auth_failed"]
    finally:
        gateway.stop()


def test_smtp_line_limits(smtp_gateway: Gateway) -> None:
    client = smtp_gateway.submission()
    # An AUTH line may carry 12 KiB; one byte more is refused like any long command.
    room = (12 * 1024 - len("AUTH OAUTHBEARER ")) // 4 * 4  # valid base64, just fits
    code, _ = client.docmd("AUTH", "OAUTHBEARER " + "A" * room)
    assert code == 334  # read whole, refused as credentials: the error challenge, then 535
    assert client.docmd("AQ==")[0] == 535
    code, _ = client.docmd("AUTH", "OAUTHBEARER " + "A" * (12 * 1024))
    assert code == 500
    # Other commands keep the short limit.
    code, _ = client.docmd("NOOP", "x" * 1024)
    assert code == 500
    client.close()


def test_smtp_without_oidc_offers_no_token_mechanism(cli: Cli, datadir: Path) -> None:
    add_practitioners(cli)
    gateway = Gateway(data=datadir, env=free_env(datadir))
    gateway.start()
    try:
        client = gateway.submission()
        assert "OAUTHBEARER" not in client.esmtp_features["auth"]
        code, _ = client.docmd("AUTH", "OAUTHBEARER " + base64.b64encode(b"n,,\x01").decode())
        assert code == 504
        client.quit()
    finally:
        gateway.stop()


# -------------------------------------------------------------------- IMAP
@pytest.fixture
def imap_oidc(cli: Cli, imap_datadir: Path, oidc_provider: OidcProvider) -> Iterator[ImapGateway]:
    require_dovecot()
    add_practitioners(cli)
    gateway = ImapGateway(
        data=imap_datadir, env={**runner_env(imap_datadir), **oidc_provider.env()}
    )
    gateway.start()
    yield gateway
    gateway.stop()


def test_imap_oauthbearer_and_xoauth2(imap_oidc: ImapGateway, oidc_provider: OidcProvider) -> None:
    plain = imaplib.IMAP4("127.0.0.1", imap_oidc.ports["imap"], timeout=30)
    assert "AUTH=OAUTHBEARER" not in plain.capabilities  # not before TLS
    plain.logout()

    client = imap_oidc.imaps()
    assert {"AUTH=OAUTHBEARER", "AUTH=XOAUTH2", "SASL-IR"} <= set(client.capabilities)
    token = oidc_provider.token("alice")
    typ, _ = client.authenticate("OAUTHBEARER", sasl_client(oauthbearer(token, ALICE)))
    assert typ == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()

    client = imap_oidc.imaps()
    assert client.authenticate("XOAUTH2", sasl_client(xoauth2(ALICE, token)))[0] == "OK"
    client.logout()


def test_imap_sasl_ir_and_refusals(imap_oidc: ImapGateway, oidc_provider: OidcProvider) -> None:
    client = imap_oidc.imaps()
    # SASL-IR (RFC 4959): the ~1.5 KB initial response on the command line itself.
    ir = base64.b64encode(oauthbearer(oidc_provider.token("alice"))).decode()
    tag = client._new_tag().decode()  # type: ignore[attr-defined]
    client.send(f"{tag} AUTHENTICATE OAUTHBEARER {ir}\r\n".encode())
    reply = client.readline()
    while reply.startswith(b"* "):
        reply = client.readline()
    assert reply.startswith(f"{tag} OK".encode()), reply
    client.shutdown()

    # A practitioner the directory does not know, and an expired token.
    for token in (oidc_provider.token("stranger"), expired_token(oidc_provider)):
        client = imap_oidc.imaps()
        challenges: list[bytes] = []

        def answer(
            challenge: bytes | None = None, token: str = token, seen: list[bytes] = challenges
        ) -> bytes:
            if challenge:
                seen.append(challenge)
                return b"\x01"
            return oauthbearer(token)

        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.authenticate("OAUTHBEARER", answer)
        assert challenges and b"invalid_token" in challenges[0]
        client.logout()


def test_imap_authenticate_line_limit(imap_oidc: ImapGateway) -> None:
    client = imap_oidc.imaps()
    tag = client._new_tag().decode()  # type: ignore[attr-defined]
    client.send(f"{tag} AUTHENTICATE OAUTHBEARER {'A' * (13 * 1024)}\r\n".encode())
    assert client.readline().startswith(b"* BYE")
    client.shutdown()


def test_imap_without_oidc(imap_datadir: Path, cli: Cli) -> None:
    add_practitioners(cli)
    gateway = ImapGateway(data=imap_datadir, env=runner_env(imap_datadir))
    gateway.start()
    try:
        client = gateway.imaps()
        assert "AUTH=OAUTHBEARER" not in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="Unsupported"):
            client.authenticate("OAUTHBEARER", sasl_client(b"n,,\x01auth=Bearer t\x01\x01"))
        client.logout()
    finally:
        gateway.stop()


def test_imap_provider_down(imap_datadir: Path, cli: Cli, oidc_provider: OidcProvider) -> None:
    add_practitioners(cli)
    env = oidc_provider.env(MSSGATE_OIDC__ISSUER=f"https://127.0.0.1:{closed_port()}")
    gateway = ImapGateway(data=imap_datadir, env={**runner_env(imap_datadir), **env})
    gateway.start()
    try:
        client = gateway.imaps()
        token = oidc_provider.token("alice")
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            client.authenticate("OAUTHBEARER", sasl_client(oauthbearer(token)))
        client.logout()
        assert gateway.events("oidc.unavailable")
        assert not gateway.events("imap.auth_failed")  # no penalty for the provider's fault
    finally:
        gateway.stop()
