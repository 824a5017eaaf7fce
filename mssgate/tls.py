"""The one place TLS is configured, for every listener and every outgoing connection.

TLS 1.2 and 1.3 only. For 1.2: ECDHE key exchange with AEAD suites (AES-GCM, ChaCha20) plus
the ECDHE CBC-SHA256/384 suites that the MSSanté client rules still list; TLS 1.3 suites are
all AEAD. No compression (CRIME), no renegotiation.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path

from mssgate.errors import PKIError

TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES256-SHA384",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-RSA-AES128-SHA256",
    ]
)


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE


def server_context(
    cert: Path, key: Path, *, client_cas: Iterable[str] = (), request_client_cert: bool = False
) -> ssl.SSLContext:
    """A server context. With `request_client_cert`, clients may present a certificate,
    verified against `client_cas` (PEM texts); without one they still connect (SMTP then
    decides: AUTH EXTERNAL, a peer MTA's identity)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise PKIError(
            f"cannot load the TLS certificate {cert} and key {key.name}: {exc}"
        ) from None
    if request_client_cert:
        cas = list(client_cas)
        if not cas:
            raise PKIError("a client certificate is requested but no CA is configured")
        for pem in cas:
            ctx.load_verify_locations(cadata=pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def add_client_cas(ctx: ssl.SSLContext, pems: Iterable[str]) -> None:
    """Adds trust anchors to a live context (a peer put on the trust list at run time).

    OpenSSL ignores a CA it already has, so this is safe to call with the full list.
    """
    for pem in pems:
        ctx.load_verify_locations(cadata=pem)


def client_context(
    *, ca_pem: str | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """For connections we open (relay to a peer operator, tests): verify the server against
    `ca_pem` (or the system store), present our certificate when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    if ca_pem is not None:
        ctx.load_verify_locations(cadata=ca_pem)
    else:
        ctx.load_default_certs()
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, str] | None:
    """(version, cipher) of an established TLS session, for logs and trace headers."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    if cipher is None or version is None:
        return None
    return version, cipher[0]
