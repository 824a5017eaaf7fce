"""Durable file writes: the write, the file's fsync, the rename, the directory's fsync.

A file that a client was told is safe (SMTP 250) must survive a power cut, and a reader must
never see it half-written; a rename within one directory is atomic, and fsyncing the
directory makes the rename itself durable.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(target: Path, data: bytes, *, tmp_dir: Path, mode: int = 0o600) -> None:
    """Writes `data` to `target` through a temporary file in `tmp_dir` (same filesystem)."""
    tmp = tmp_dir / f".{target.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The target folder's fsync makes the new name durable. The temporary folder's is not
    # needed: a name that comes back there after a crash is a stale temporary file.
    fsync_dir(target.parent)


def write_new_durably(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Creates `target` (never an existing file) with `data`, fsynced, name included.

    No rename: for files that nobody reads before a later commit says they are complete
    (the spool's message files, read only once their row is committed). A crash midway
    leaves a file without a row, which recovery deletes.
    """
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        target.unlink(missing_ok=True)
        raise
    os.close(fd)
    fsync_dir(target.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    return path
