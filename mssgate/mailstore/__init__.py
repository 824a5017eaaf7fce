"""Where accepted mail for local mailboxes ends up."""

from mssgate.mailstore.base import DeliveryFailed, MailStore
from mssgate.mailstore.lmtp import LmtpStore
from mssgate.mailstore.maildir import MaildirStore

__all__ = ["DeliveryFailed", "LmtpStore", "MailStore", "MaildirStore"]
