"""Delivery to Dovecot over LMTP, on a unix socket or (an existing Dovecot's) host:port.

`deliver` returns only after LMTP's 250 for the recipient: Dovecot answers it once the
message is saved (and fsynced, `mail_fsync = optimized`), so the spool may then forget it.
The mailbox, with its special-use folders, is created by the first delivery.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from pathlib import Path

from mssgate.config import DeliveryConfig, parse_lmtp_target
from mssgate.mailstore.base import DeliveryFailed
from mssgate.mailstore.maildir import check_mailbox_name
from mssgate.returnpath import return_path_field, strip_return_path

_DEFAULTS = DeliveryConfig()  # serve passes delivery.lmtp_timeout_seconds


class LmtpStore:
    def __init__(
        self, target: str | Path, *, timeout: float = _DEFAULTS.lmtp_timeout_seconds
    ) -> None:
        self._host, self._port = parse_lmtp_target(target)
        self.socket_path = target  # what logs and errors name
        self._timeout = timeout

    def deliver(self, recipient: str, message: bytes, *, delivery_id: str, sender: str) -> None:
        # delivery_id cannot reach Dovecot's dedup (it has none for LMTP): a crash between
        # Dovecot's 250 and the spool's bookkeeping delivers twice rather than never.
        check_mailbox_name(recipient)
        try:
            return_path_field(sender)  # the same check as the Maildir store's
        except ValueError as exc:
            raise DeliveryFailed(str(exc), permanent=True) from exc
        # Dovecot writes Return-Path from MAIL FROM; a copy left in the message would be a
        # second one, above which a reader cannot tell the true one.
        message = strip_return_path(message)
        try:
            client = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryFailed(f"LMTP connect to {self.socket_path} failed: {exc}") from exc
        try:
            try:
                self._envelope(client, sender, recipient)
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                raise DeliveryFailed(f"LMTP session failed: {exc}") from exc
            try:
                self._data(client, message)
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                # Lost once DATA was under way: Dovecot may have saved the message and
                # died (or been killed) before its 250, so the retry may be a duplicate.
                raise DeliveryFailed(f"LMTP session failed in DATA: {exc}", ambiguous=True) from exc
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()

    def _connect(self) -> smtplib.SMTP:
        if self._port is None:
            return smtplib.LMTP(self._host, timeout=self._timeout)
        # LMTP over TCP carries mail in clear: loopback or a trusted segment only
        # (docs/imap.md, "An existing Dovecot").
        return smtplib.LMTP(self._host, self._port, timeout=self._timeout)

    @staticmethod
    def _envelope(
        client: smtplib.SMTP,
        sender: str,
        recipient: str,
        *,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> None:
        client.ehlo_or_helo_if_needed()  # LHLO, for smtplib.LMTP
        # The real envelope sender: with MAIL FROM:<> every message read as a bounce.
        code, text = client.mail(sender, mail_options)
        if code != 250:
            _refused(code, text)
        code, text = client.rcpt(recipient, rcpt_options)
        if code != 250:
            _refused(code, text)

    @staticmethod
    def _data(client: smtplib.SMTP, message: bytes) -> None:
        # With one recipient, LMTP's single reply after the data is that recipient's.
        text: bytes | str
        try:
            code, text = client.data(message)
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            code, text = exc.smtp_code, exc.smtp_error
        if code != 250:
            _refused(code, text)


def _refused(code: int, text: bytes | str) -> None:
    reply = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text)[:200]
    raise DeliveryFailed(f"LMTP refused: {code} {reply}", permanent=500 <= code < 600)
