"""Where the private Dovecot keeps what cannot live in the data folder, and how those
folders are made without trusting anything an attacker could have planted.

Its sockets go to a short runtime folder named by a hash of the data folder's path: a
unix socket's name must fit in 108 bytes (`sun_path`), and a data folder may be anywhere,
however deep. As root that is `/run/mssgate/<key>`; as a user `$XDG_RUNTIME_DIR/mssgate/<key>`
when the session has one, else `/tmp/mssgate-<uid>/<key>`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from mssgate.errors import MssgateError

RUN_ROOT = Path("/run/mssgate")
# As root, for a data folder whose parents the mail user cannot traverse: its mail store.
STATE_ROOT = Path("/var/lib/mssgate")
TMP = Path("/tmp")  # noqa: S108 - only ever a parent of a folder checked by private_dir()
_KEY_HEX = 12  # 48 bits: enough to tell apart the data folders of one machine


class UnsafeFolder(MssgateError):
    """A folder we would use is not what we would have made (symlink, owner, modes)."""


def instance_key(data_dir: Path) -> str:
    """A short, stable name for one data folder (its absolute, resolved path)."""
    return hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:_KEY_HEX]


def private_dir(path: Path, *, mode: int, uid: int | None = None, gid: int = -1) -> Path:
    """`path` as a directory owned by `uid` (default: us) that nobody else may write to.

    It is created with `mode` when missing. An existing one is accepted only if it is a
    real directory (not a symlink: `lstat`), owned by `uid`, and not writable by group or
    others; anything else is refused, never repaired: in a shared folder such as /tmp it
    may have been planted by someone else. Its parent must already be trustworthy.
    """
    owner = os.geteuid() if uid is None else uid
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    else:
        # Only we can reach the new folder until these two calls: no window for anyone.
        if owner != os.geteuid() or gid != -1:
            os.chown(path, owner, gid)
        os.chmod(path, mode)  # the umask may have taken bits away
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFolder(f"{path} exists and is not a folder (a symlink?): remove it")
    if st.st_uid != owner:
        raise UnsafeFolder(
            f"{path} belongs to uid {st.st_uid}, not {owner}: refusing to use it; remove it"
        )
    if st.st_mode & 0o022:
        raise UnsafeFolder(
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}): remove it"
        )
    return path


def _session_runtime(env: Mapping[str, str], uid: int) -> Path | None:
    """$XDG_RUNTIME_DIR when it is what the spec says it is: ours, mode 0700."""
    value = env.get("XDG_RUNTIME_DIR", "")
    if not value.startswith("/"):
        return None
    try:
        st = os.lstat(value)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700:
        return Path(value)
    return None


def runtime_parent(
    *,
    uid: int,
    env: Mapping[str, str],
    run_root: Path = RUN_ROOT,
    tmp: Path = TMP,
) -> tuple[Path, int]:
    """(the folder under which each data folder gets its runtime folder, that folder's mode)."""
    if uid == 0 and os.access(run_root.parent, os.W_OK):
        # 0755: Dovecot's unprivileged processes (dovecot, dovenull, the mail user) reach
        # their sockets below, as they do in Debian's own /run/dovecot.
        return run_root, 0o755
    session = _session_runtime(env, uid) if uid != 0 else None
    if session is not None:
        return session / "mssgate", 0o700
    # A shared, sticky /tmp: our own folder in it, created atomically or checked by lstat;
    # once it is ours nobody else can rename or replace it. Root's is searchable (0711) so
    # that the unprivileged processes can reach the sockets; nobody can list it.
    return tmp / f"mssgate-{uid}", 0o711 if uid == 0 else 0o700


def runtime_dir(
    data_dir: Path,
    *,
    create: bool = False,
    uid: int | None = None,
    env: Mapping[str, str] | None = None,
    run_root: Path = RUN_ROOT,
    tmp: Path = TMP,
) -> Path:
    """The short runtime folder of this data folder; with `create`, made (or checked) with
    its parent by `private_dir`."""
    me = os.geteuid() if uid is None else uid
    parent, parent_mode = runtime_parent(
        uid=me, env=os.environ if env is None else env, run_root=run_root, tmp=tmp
    )
    path = parent / instance_key(data_dir)
    if create:
        private_dir(parent, mode=parent_mode, uid=me)
        private_dir(path, mode=0o755 if me == 0 else 0o700, uid=me)
    return path


def unreachable_parent(path: Path, uid: int, gid: int) -> Path | None:
    """The first parent of `path` that `uid`/`gid` cannot traverse (mode bits, not ACLs)."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return parent
    return None


def outside_mail_root(data_dir: Path, *, state_root: Path = STATE_ROOT) -> Path:
    return state_root / instance_key(data_dir) / "mail"


# The note beside the mail outside names its data folder and a token that the data folder
# keeps in this file: the key is only the path's hash, and a data folder made again at the
# same path (or another path of the same hash) must not find the earlier one's mail.
_NOTE = "data-folder"
_TOKEN_FILE = "mail-placement"  # noqa: S105 - a file name; its token opens nothing


def _data_token(data_dir: Path, *, create: bool) -> str | None:
    path = data_dir / _TOKEN_FILE
    try:
        found = path.read_text().strip() or None
    except FileNotFoundError:
        found = None
    if found is not None or not create:
        return found
    token = secrets.token_hex(16)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    # Not a secret (the note outside repeats it): readable like the note. Written whole
    # or not at all.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(f"{token}\n")
    tmp.replace(path)
    return token


def _claimed(data_dir: Path, outside: Path) -> Path:
    """`outside`, once its note says it is this data folder's; else UnsafeFolder."""
    try:
        lines = (outside.parent / _NOTE).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    if len(lines) < 2:
        return outside  # placed before the token existed: its folder's, as it was then
    if _data_token(data_dir, create=False) != lines[1]:
        raise UnsafeFolder(
            f"{outside} holds the mail of another data folder (once at {lines[0]}; a data "
            f"folder made again at this path finds the earlier one's mail there): move "
            f"{outside.parent} away, keeping it if its mail matters, then start again"
        )
    return outside


def placed_mail_root(data_dir: Path, *, state_root: Path = STATE_ROOT) -> Path:
    """`DATA/mail`, or the folder outside it once mail was placed there (see `mail_root`):
    whatever writes mailboxes (Dovecot, or plain Maildir with IMAP off) writes there."""
    outside = outside_mail_root(data_dir, state_root=state_root)
    return _claimed(data_dir, outside) if outside.is_dir() else data_dir / "mail"


def mail_root(
    data_dir: Path, *, mail_uid: int, mail_gid: int, privileged: bool, state_root: Path = STATE_ROOT
) -> Path:
    """Where this data folder's mail lives: `DATA/mail`, unless a privileged Dovecot's mail
    user cannot traverse a parent of the data folder (a clone under /root, a `mktemp -d`
    folder): then `/var/lib/mssgate/<key>/mail`. Once placed there it stays there."""
    outside = outside_mail_root(data_dir, state_root=state_root)
    if outside.is_dir():
        return _claimed(data_dir, outside)
    if privileged:
        blocked = unreachable_parent(data_dir / "mail", mail_uid, mail_gid)
        # The data folder itself is ours to open to the mail user's group; its parents are
        # not, and their modes are never changed.
        if blocked is not None and blocked != data_dir:
            return outside
    return data_dir / "mail"


def make_outside_mail_root(data_dir: Path, *, state_root: Path = STATE_ROOT) -> bool:
    """Makes `/var/lib/mssgate/<key>/` (root's, searchable, not listable) with a note naming
    its data folder and the token it keeps (`DATA/mail-placement`), and moves an existing
    `DATA/mail` into it (same filesystem only). Returns whether mail was moved. The mail
    folder's owner is the supervisor's business."""
    mail = outside_mail_root(data_dir, state_root=state_root)
    private_dir(state_root, mode=0o755)
    private_dir(mail.parent, mode=0o711)
    _claimed(data_dir, mail)
    token = _data_token(data_dir, create=True)
    note = mail.parent / _NOTE
    tmp = note.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(f"{data_dir}\n{token}\n")
    tmp.replace(note)
    if mail.exists():
        return False
    inside = data_dir / "mail"
    if inside.is_symlink() or not inside.is_dir():
        return False
    try:
        os.rename(inside, mail)
    except OSError as exc:
        raise UnsafeFolder(
            f"mail in {inside} must move to {mail}, which its mail user can reach, and "
            f"cannot be renamed there ({exc.strerror}): move it yourself, then start again"
        ) from None
    return True
