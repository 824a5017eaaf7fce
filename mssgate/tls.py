"""The one place TLS is configured, for every listener and every outgoing connection.

TLS 1.2 and 1.3 only. For 1.2: ECDHE key exchange with AEAD suites (AES-GCM, ChaCha20) plus
the ECDHE CBC-SHA256/384 suites that the MSSanté client rules still list; TLS 1.3 suites are
all AEAD. Key exchange on elliptic curves only, in 1.3 too (X25519, P-256, P-384; P-256 alone
where the group list cannot be set, see `restrict_groups`). No compression (CRIME), no
renegotiation.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys
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


# Key-exchange groups, in preference order (OpenSSL group names).
EC_GROUPS = ("X25519", "P-256", "P-384")
# What is left when the full list cannot be set: the one curve every TLS stack has.
FALLBACK_GROUP = "P-256"
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl this Python's `_ssl` module is linked to (its symbols resolve through it)."""
    if sys.implementation.name != "cpython":
        return None
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    except (OSError, AttributeError):  # no such library or symbol (OpenSSL linked statically)
        return None
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The `SSL_CTX *` under `ctx`, or None when it cannot be found with certainty.

    CPython's context object starts with that pointer right after the object header (so from
    3.6 to at least 3.14); what is read there is trusted only when OpenSSL, asked for that
    context's options, answers exactly what Python says they are.
    """
    offset = object.__basicsize__
    if ssl.SSLContext.__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        return None
    pointer = ctypes.c_void_p.from_address(id(ctx) + offset).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        return None
    return pointer


def restrict_groups(ctx: ssl.SSLContext) -> str:
    """Key exchange on elliptic curves only, TLS 1.3 included; returns the group list set.

    Without this OpenSSL 3 also offers the RFC 7919 finite-field groups (ffdhe2048...) in
    TLS 1.3, and a client asking only for them gets one. Python 3.11's ssl cannot set a
    group list: `set_ecdh_curve`, its documented call, sets a single group, so P-256 is set
    first and stays if anything below fails. The wider list goes through OpenSSL's own
    SSL_CTX_set1_groups_list, called with ctypes on the pointer `_ssl_ctx_pointer` checked:
    X25519 is what most clients send a key share for (no HelloRetryRequest round trip), and
    P-384 is on the ANSSI list of curves.
    """
    ctx.set_ecdh_curve("prime256v1")
    lib = _libssl()
    pointer = _ssl_ctx_pointer(ctx, lib) if lib is not None else None
    if lib is None or pointer is None:
        return FALLBACK_GROUP
    wanted = ":".join(EC_GROUPS)
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, wanted.encode("ascii")) != 1:
        return FALLBACK_GROUP
    return wanted


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    restrict_groups(ctx)
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
