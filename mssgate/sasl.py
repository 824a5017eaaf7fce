"""The bearer-token SASL mechanisms' wire formats: OAUTHBEARER (RFC 7628) and XOAUTH2.

Pure functions shared by the SMTP and IMAP listeners: what a client's response says, and the
error challenge a failed OAUTHBEARER gets before its final refusal. Nothing here checks a
token (see `mssgate.oidc`) or decides who the client is (see `mssgate.bearer`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

OAUTHBEARER = "OAUTHBEARER"
XOAUTH2 = "XOAUTH2"
MECHANISMS = (OAUTHBEARER, XOAUTH2)

# A SASL response line (base64 of the client's message) may be this long, on the AUTH line
# itself (an inline initial response) or on its own line: a PSC access token is about 1 KB,
# a JWT with many claims a few; other command lines keep their short limits.
MAX_LINE = 12 * 1024
# The decoded message: base64 makes 4 bytes of 3.
MAX_MESSAGE = MAX_LINE * 3 // 4

# RFC 6750 2.1 b64token: what may follow "Bearer ".
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
# The message's whole syntax is ASCII key=value pairs separated by \x01 (RFC 7628 3.1).
_KEY = re.compile(rb"[A-Za-z]+")


@dataclass(frozen=True)
class BearerResponse:
    """What a client presented: the token and, when it named one, who it wants to act as."""

    mechanism: str
    authzid: str | None
    token: str


def parse(mechanism: str, message: bytes) -> BearerResponse | None:
    """The client's first message for `mechanism`, or None when it breaks the syntax."""
    if len(message) > MAX_MESSAGE:
        return None
    if mechanism == OAUTHBEARER:
        return _oauthbearer(message)
    if mechanism == XOAUTH2:
        return _xoauth2(message)
    return None


def _oauthbearer(message: bytes) -> BearerResponse | None:
    # gs2-header "n,a=user," or "n,,"; "y" and "p" ask for channel binding, which this
    # mechanism does not offer (RFC 7628 3.1: the server fails them).
    gs2, sep, rest = message.partition(b"\x01")
    if not sep:
        return None
    parts = gs2.split(b",")
    if len(parts) != 3 or parts[0] != b"n" or parts[2] != b"":
        return None
    authzid: str | None = None
    if parts[1]:
        if not parts[1].startswith(b"a="):
            return None
        authzid = _saslname(parts[1][2:])
        if authzid is None:
            return None
    token = _auth_value(rest)
    return BearerResponse(OAUTHBEARER, authzid, token) if token is not None else None


def _xoauth2(message: bytes) -> BearerResponse | None:
    # "user=" user "\x01auth=Bearer " token "\x01\x01" (Google's format, no GS2 header).
    user, sep, rest = message.partition(b"\x01")
    if not sep or not user.startswith(b"user="):
        return None
    try:
        authzid = user[5:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    token = _auth_value(rest)
    if token is None or not authzid:
        return None
    return BearerResponse(XOAUTH2, authzid, token)


def _saslname(raw: bytes) -> str | None:
    # RFC 5801: "," and "=" are written =2C and =3D; any other "=" is malformed.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if re.search(r"=(?!2C|3D)", text):
        return None
    return text.replace("=2C", ",").replace("=3D", "=") or None


def _auth_value(kvpairs: bytes) -> str | None:
    """The bearer token of `key=value\\x01...\\x01\\x01`, ending the message exactly there."""
    if not kvpairs.endswith(b"\x01\x01"):
        return None
    token: str | None = None
    for pair in kvpairs[:-2].split(b"\x01"):
        key, eq, value = pair.partition(b"=")
        if not eq or not _KEY.fullmatch(key) or not value.isascii():
            return None
        if key == b"auth":
            if token is not None:
                return None  # two tokens: which one did the client mean?
            scheme, space, credential = value.partition(b" ")
            if not space or scheme.lower() != b"bearer" or not _B64TOKEN.fullmatch(credential):
                return None
            token = credential.decode("ascii")
    return token


def error_challenge(issuer: str, scope: str = "openid") -> bytes:
    """RFC 7628 3.2.2's JSON for a failed OAUTHBEARER: where to get a token that works.

    The client answers it with a lone \\x01, then gets the final refusal."""
    document = {
        "status": "invalid_token",
        "scope": scope,
        "openid-configuration": issuer.rstrip("/") + "/.well-known/openid-configuration",
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii")


def is_error_acknowledgement(message: bytes) -> bool:
    """Whether the client answered the error challenge as RFC 7628 says (a lone \\x01)."""
    return message == b"\x01"
