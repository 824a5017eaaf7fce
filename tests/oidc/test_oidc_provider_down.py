"""A Pro Santé Connect provider that does not answer is asked again at most once per
`oidc.jwks_refetch_min_seconds`, whatever clients send meanwhile.

A provider failure is a temporary failure for the client (454 / NO [UNAVAILABLE]) and counts
nothing toward its login penalty: without this bound every AUTH with a made-up token (any
RS256 JWT) made one more connection to a provider that is down, and held a worker thread up
to `http_timeout_seconds` each, unpenalised, the same pool DATA's checks run on.

The provider here is a real TCP listener that counts the connections made to it and closes
each one at once (what a provider behind a broken proxy does).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mssgate.config import OidcConfig
from mssgate.oidc import ProviderError, TokenVerifier


@dataclass
class DeadProvider:
    issuer: str
    connections: int = 0


@pytest.fixture
def dead_provider() -> Iterator[DeadProvider]:
    listener = socket.create_server(("127.0.0.1", 0))
    provider = DeadProvider(f"https://127.0.0.1:{listener.getsockname()[1]}")

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            provider.connections += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield provider
    listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone would not
    listener.close()
    thread.join(timeout=30)


def made_up_token(issuer: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"iss": issuer, "aud": "https://mssgate.test/", "exp": 2**40}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "whatever"})


@pytest.mark.parametrize(("refetch_min", "asked"), [(3600, 1), (0, 4)])
def test_a_provider_that_does_not_answer_is_not_asked_at_each_login(
    dead_provider: DeadProvider, refetch_min: int, asked: int
) -> None:
    config = OidcConfig(issuer=dead_provider.issuer, audience="https://mssgate.test/",
                        jwks_refetch_min_seconds=refetch_min)  # fmt: skip
    checker = TokenVerifier(config)
    token = made_up_token(dead_provider.issuer)
    for _ in range(4):
        with pytest.raises(ProviderError):
            checker.verify(token)
    checker.close()
    assert dead_provider.connections == asked


@pytest.mark.parametrize(("refetch_min", "asked"), [(3600, 1), (0, 4)])
def test_introspection_of_a_provider_that_does_not_answer(
    dead_provider: DeadProvider, refetch_min: int, asked: int
) -> None:
    config = OidcConfig(
        issuer=dead_provider.issuer,
        audience="https://mssgate.test/",
        introspection=True,
        introspection_endpoint=dead_provider.issuer + "/token/introspection",
        client_id="gateway",
        client_secret="secret",
        jwks_refetch_min_seconds=refetch_min,
    )
    checker = TokenVerifier(config)
    for _ in range(4):
        with pytest.raises(ProviderError):
            checker.verify("an-opaque-token")
    checker.close()
    assert dead_provider.connections == asked
