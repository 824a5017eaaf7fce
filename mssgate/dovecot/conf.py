"""The private Dovecot's configuration: a pure function of paths and users.

Dovecot's configuration and state live under the data folder, its sockets in a short
runtime folder of that data folder (see `mssgate.dovecot.paths`), no inet listener exists
(our front door owns the network), and no system-wide file is read or touched: Dovecot is
always started with `-c` on the file rendered here.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

# Debian's dovecot-core creates these two: the unprivileged internal user and the user of
# the (here unused) login processes. Root installs rely on them.
_INTERNAL_USER = "dovecot"
_LOGIN_USER = "dovenull"
# When the gateway runs as root over a root-owned data folder, mail processes need some
# unprivileged uid; Debian's `mail` account exists on every install.
_FALLBACK_MAIL_USER = "mail"

SPECIAL_USE = (
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
)


@dataclass(frozen=True)
class Users:
    """Who Dovecot's processes run as."""

    privileged: bool
    mail_user: str
    mail_uid: int
    mail_gid: int
    internal_user: str
    internal_group: str
    login_user: str
    owner: str  # owns the sockets the gateway itself connects to


@dataclass(frozen=True)
class Layout:
    """Where the private instance keeps its files: configuration and state under the data
    folder, sockets in a short runtime folder (`mssgate.dovecot.paths`), mail in
    `mail_root` (the data folder's `mail/` unless it had to live elsewhere)."""

    data_dir: Path
    base_dir: Path
    mail_root: Path

    @property
    def root(self) -> Path:
        return self.data_dir / "dovecot"

    @property
    def config_file(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def lmtp_socket(self) -> Path:
        return self.base_dir / "lmtp"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "master.pid"


def resolve_users(data_dir: Path) -> Users:
    """As a normal user, everything runs as that user; as root, mail is handled by the data
    folder's owner (or `mail` when root owns it) and Dovecot's own processes by its
    packaged users."""
    uid = os.geteuid()
    me = pwd.getpwuid(uid).pw_name
    if uid != 0:
        group = grp.getgrgid(os.getegid()).gr_name
        return Users(False, me, uid, os.getegid(), me, group, me, me)
    owner_uid = data_dir.stat().st_uid if data_dir.exists() else 0
    mail = pwd.getpwuid(owner_uid) if owner_uid != 0 else pwd.getpwnam(_FALLBACK_MAIL_USER)
    for name in (_INTERNAL_USER, _LOGIN_USER):
        pwd.getpwnam(name)  # KeyError if Dovecot's package did not create it
    internal_group = grp.getgrgid(pwd.getpwnam(_INTERNAL_USER).pw_gid).gr_name
    return Users(
        True,
        mail.pw_name,
        mail.pw_uid,
        mail.pw_gid,
        _INTERNAL_USER,
        internal_group,
        _LOGIN_USER,
        me,
    )


def _quote(value: str | Path) -> str:
    text = str(value)
    if any(c in text for c in '"\\\n\r'):
        raise ValueError(f"path not usable in a Dovecot config: {text!r}")
    return f'"{text}"'


def render(layout: Layout, users: Users, *, instance: str) -> str:
    mail_root = layout.mail_root
    home = f"{mail_root}/%d/%n"
    group = grp.getgrgid(users.mail_gid).gr_name
    lines = [
        "# Written by mssgate at each start: edits are lost. See docs/imap.md.",
        f"base_dir = {_quote(layout.base_dir)}",
        f"state_dir = {_quote(layout.state_dir)}",
        f"instance_name = {_quote(instance)}",
        # stderr: the supervisor turns each line into a structured log event.
        "log_path = /dev/stderr",
        "log_timestamp =",
        "protocols = imap lmtp",
        "ssl = no",
        "shutdown_clients = yes",
        f"default_internal_user = {users.internal_user}",
        f"default_internal_group = {users.internal_group}",
        f"default_login_user = {users.login_user}",
        f"mail_uid = {users.mail_user}",
        f"mail_gid = {group}",
        f"first_valid_uid = {users.mail_uid}",
        f"last_valid_uid = {users.mail_uid}",
        f"first_valid_gid = {users.mail_gid}",
        f"last_valid_gid = {users.mail_gid}",
        f"mail_home = {_quote(home)}",
        "mail_location = maildir:~/Maildir",
        "mail_fsync = optimized",
        "auth_username_format = %Lu",
        # The gateway already wrote its own Received header; what clients see is what was
        # accepted (Dovecot still adds Return-Path).
        "lmtp_add_received_header = no",
        "lmtp_hdr_delivery_address = none",
        # Nobody logs in to this Dovecot: our front door authenticates, then starts
        # `imap -u USER`. An always-failing passdb keeps Dovecot's auth process happy.
        "passdb {",
        "  driver = static",
        "  args = nopassword=y",
        "  deny = yes",
        "}",
        "userdb {",
        "  driver = static",
        f"  args = allow_all_users=yes home={home}",
        "}",
        "service imap-login {",
        "  inet_listener imap {",
        "    port = 0",
        "  }",
        "  inet_listener imaps {",
        "    port = 0",
        "  }",
        "}",
        "service lmtp {",
        "  unix_listener lmtp {",
        f"    user = {users.owner}",
        "    mode = 0600",
        "  }",
        "}",
        "service auth {",
        "  unix_listener auth-userdb {",
        f"    user = {users.owner}",
        "    mode = 0600",
        "  }",
        "}",
        "namespace inbox {",
        "  inbox = yes",
    ]
    for name, flag in SPECIAL_USE:
        lines += [
            f"  mailbox {name} {{",
            f"    special_use = {flag}",
            "    auto = subscribe",
            "  }",
        ]
    lines.append("}")
    if not users.privileged:
        # Without root nothing can chroot or change user: every service runs as us.
        for service in ("anvil", "imap-login", "pop3-login", "submission-login"):
            lines += [f"service {service} {{", "  chroot =", "}"]
    return "\n".join(lines) + "\n"
