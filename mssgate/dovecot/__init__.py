"""Dovecot as the mailbox engine: a private instance (or an existing one) and its sessions."""

from mssgate.dovecot.backend import DovecotBackend, DovecotSession
from mssgate.dovecot.supervisor import DovecotError, DovecotSupervisor, find_dovecot

__all__ = ["DovecotBackend", "DovecotError", "DovecotSession", "DovecotSupervisor", "find_dovecot"]
