"""Key exchange on elliptic curves only, TLS 1.3 included: OpenSSL 3 would otherwise agree
to a finite-field group (RFC 7919 ffdhe*) with a client that offers nothing else.

The real `openssl s_client` against a live gateway, on an implicit-TLS and a STARTTLS
listener (one context factory serves every listener).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

from mssgate.tls import EC_GROUPS, restrict_groups
from tests.smtp.conftest import Gateway

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="no openssl binary")
LISTENERS = [("smtps", None), ("mta", "smtp")]


def handshake(gateway: Gateway, listener: str, starttls: str | None, *args: str) -> str:
    """s_client's whole output; raises when the handshake fails."""
    assert OPENSSL is not None
    command = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{gateway.ports[listener]}", *args]
    if starttls is not None:
        command += ["-starttls", starttls]
    done = subprocess.run(command, input=b"", capture_output=True, timeout=30, check=False)
    output = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode != 0 or "Cipher is (NONE)" in output:
        raise AssertionError(f"handshake failed: {output}")
    return output


def test_every_context_gets_the_full_curve_list() -> None:
    # On this platform (CPython, OpenSSL as a shared library) the fallback to P-256 alone
    # must not be what runs: the tests below would then not see X25519 or P-384.
    assert restrict_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) == ":".join(EC_GROUPS)


@pytest.mark.parametrize(("listener", "starttls"), LISTENERS)
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_finite_field_groups_refused(
    gateway: Gateway, listener: str, starttls: str | None, version: str
) -> None:
    for groups in ("ffdhe2048", "ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192"):
        with pytest.raises(AssertionError, match="handshake failed"):
            handshake(gateway, listener, starttls, version, "-groups", groups)


@pytest.mark.parametrize(("listener", "starttls"), LISTENERS)
def test_curves_accepted(gateway: Gateway, listener: str, starttls: str | None) -> None:
    cases = [
        ("-tls1_3", "X25519", "X25519"),
        ("-tls1_3", "P-256", "ECDH, prime256v1"),
        ("-tls1_3", "P-384", "ECDH, secp384r1"),
        # In 1.2 the client's groups also bound the curve of an ECDSA certificate (RFC 8422),
        # and ours is on P-256: a 1.2 client offers it along with the one tried.
        ("-tls1_2", "X25519:P-256", "X25519"),
        ("-tls1_2", "P-256", "ECDH, prime256v1"),
    ]
    for version, groups, temp_key in cases:
        output = handshake(gateway, listener, starttls, version, "-groups", groups)
        assert f"Server Temp Key: {temp_key}," in output, (version, groups)
    # A curve outside the list is not agreed to either: the list is exact.
    with pytest.raises(AssertionError, match="handshake failed"):
        handshake(gateway, listener, starttls, "-tls1_3", "-groups", "P-521")


def test_client_preference_reaches_a_shared_curve(gateway: Gateway) -> None:
    # A client offering ffdhe first and a curve after it ends on the curve, not the DH group.
    output = handshake(gateway, "smtps", None, "-tls1_3", "-groups", "ffdhe2048:P-256")
    assert "Server Temp Key: ECDH, prime256v1" in output
