"""Maildir delivery under the data folder, in the layout Dovecot reads.

`<root>/<domain>/<local>/Maildir/{tmp,new,cur}`: Dovecot's `mail_location =
maildir:~/Maildir` with `mail_home = <root>/%d/%n`. Until the gateway's Dovecot receives mail
over LMTP this store writes the files itself; it stays useful for tests and small setups.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mssgate.fsutil import ensure_dir, write_durably
from mssgate.mailstore.base import DeliveryFailed
from mssgate.returnpath import with_return_path

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._+-'=")


def check_mailbox_name(recipient: str) -> tuple[str, str]:
    """(local, domain) of a recipient whose parts are safe as path components.

    The directory accepts only addresses whose characters are all in _SAFE (see
    mssgate.identifiers); checking again here keeps a path out of anyone's reach even if a
    caller forgot. Dovecot builds the same path from the LMTP recipient.
    """
    local, _, domain = recipient.rpartition("@")
    if not local or not domain or not set(local) <= _SAFE or not set(domain) <= _SAFE:
        raise DeliveryFailed(f"unsafe mailbox name {recipient!r}", permanent=True)
    if local.startswith(".") or domain.startswith("."):
        raise DeliveryFailed(f"unsafe mailbox name {recipient!r}", permanent=True)
    return local, domain


class MaildirStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Maildir names carry the host name; a ':' or '/' in it would break the name.
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")

    def maildir(self, recipient: str) -> Path:
        local, domain = check_mailbox_name(recipient)
        return self.root / domain / local / "Maildir"

    def deliver(self, recipient: str, message: bytes, *, delivery_id: str, sender: str) -> None:
        box = self.maildir(recipient)
        try:
            # What Dovecot's LMTP does for the other store: the envelope's Return-Path first.
            message = with_return_path(message, sender)
        except ValueError as exc:
            raise DeliveryFailed(str(exc), permanent=True) from exc
        try:
            for sub in ("tmp", "new", "cur"):
                ensure_dir(box / sub)
            # A stable name per delivery: a retry after a crash finds the file in new/. No
            # ",S=<size>" in it: a retry may carry other bytes of the same message (sealed
            # again for encryption at rest, with a new session key) and must still match.
            name = f"{delivery_id}.{self._host}"
            target = box / "new" / name
            if target.exists():
                return
            write_durably(target, message, tmp_dir=box / "tmp")
        except OSError as exc:
            raise DeliveryFailed(f"maildir write failed: {os.strerror(exc.errno or 0)}") from exc
