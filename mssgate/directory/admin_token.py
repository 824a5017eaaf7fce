"""The admin console's token (`mssgate admin token`) and the session cookies it opens.

One token at a time: a new one replaces the row, so the old token stops working at once.
Only its SHA-256 is stored (a 256-bit random token needs no slow hash, as for consumers).
A console session is a cookie signed with a random key kept in the same row: the server
checks the signature and the expiry inside it, and a new token (a new key) ends every
session opened with the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select

from mssgate import audit
from mssgate.db.schema import admin_token
from mssgate.db.tx import write
from mssgate.directory.timeutil import now

ADMIN_TOKEN_PREFIX = "mssa_"  # noqa: S105 (a public prefix, apart from consumers' mssg_)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Row:
    token_sha256: str
    session_key: bytes


class AdminToken:
    def __init__(self, engine: Engine, actor: str) -> None:
        self._engine = engine
        self._actor = actor

    def rotate(self) -> tuple[str, bool]:
        """A new token (shown once, stored hashed) and whether it replaced one."""
        token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        values = {
            "token_sha256": _digest(token),
            "session_key": secrets.token_hex(32),
            "created_at": now(),
        }
        with write(self._engine) as conn:
            replaced = conn.execute(select(admin_token.c.id)).first() is not None
            if replaced:
                conn.execute(admin_token.update().where(admin_token.c.id == 1).values(**values))
            else:
                conn.execute(admin_token.insert().values(id=1, **values))
            audit.append(
                conn,
                actor=self._actor,
                action="admin.token",
                subject="admin console",
                detail={"replaced": replaced},
            )
        return token, replaced

    def _row(self) -> _Row | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(admin_token.c.token_sha256, admin_token.c.session_key)
            ).first()
        if row is None:
            return None
        return _Row(row.token_sha256, bytes.fromhex(row.session_key))

    def check(self, token: str) -> bool:
        """Whether `token` is the current admin token (read on every request: a new token
        takes effect at once in every process)."""
        if not token.startswith(ADMIN_TOKEN_PREFIX) or len(token) > 200:
            return False
        row = self._row()
        return row is not None and hmac.compare_digest(row.token_sha256, _digest(token))

    def open_session(self, token: str, seconds: int) -> str | None:
        """A session cookie's value for the holder of the token, valid `seconds`; None for
        a wrong token."""
        row = self._row()
        if row is None or not token.startswith(ADMIN_TOKEN_PREFIX) or len(token) > 200:
            return None
        if not hmac.compare_digest(row.token_sha256, _digest(token)):
            return None
        payload = f"{int(time.time()) + seconds}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{_sign(row.session_key, payload)}"

    def session_valid(self, cookie: str, max_seconds: int) -> bool:
        """Whether a session cookie is ours, unexpired and signed with the current key."""
        expires, sep, rest = cookie.partition(".")
        nonce, sep2, mac = rest.partition(".")
        if not (sep and sep2 and expires.isdigit() and len(cookie) <= 200):
            return False
        left = int(expires) - time.time()
        # Never longer than a session lasts now (the setting may have been shortened).
        if not 0 < left <= max_seconds:
            return False
        row = self._row()
        if row is None:
            return False
        return hmac.compare_digest(mac, _sign(row.session_key, f"{expires}.{nonce}"))


def _sign(key: bytes, payload: str) -> str:
    return hmac.new(key, b"mssgate-admin-session:" + payload.encode("utf-8"), "sha256").hexdigest()
