"""Shared pieces of the fuzz targets: byte mutation, and a watch on file writes.

A fuzz target's property is more than "no crash": what it must never do is part of it. Our
parsers work in memory (a zip is never extracted, a PDF never saved), so any file created or
written while one runs is a bug, found here through Python's audit hooks (PEP 578), which see
every `open`, `os.open`, rename, removal and directory creation, whatever module makes them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from hypothesis import strategies as st

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_FILE_EVENTS = frozenset(
    {"os.remove", "os.rename", "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.chmod"}
)
_watch = threading.local()
_installed = False


def _is_write(event: str, args: tuple[object, ...]) -> str | None:
    if event == "open":
        path, mode, flags = args
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            return str(path)
        if mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS:
            return str(path)
        return None
    if event in _FILE_EVENTS and args:
        return str(args[0])
    return None


def _hook(event: str, args: tuple[object, ...]) -> None:
    allowed: Path | bool | None = getattr(_watch, "allowed", False)
    if allowed is False:
        return  # not watching: one attribute read per event, nothing more
    path = _is_write(event, args)
    if path is None or "__pycache__" in path:
        return  # a lazily imported module may cache its bytecode
    if isinstance(allowed, Path) and Path(path).resolve().is_relative_to(allowed.resolve()):
        return
    _watch.seen.append(f"{event} {path}")


@contextlib.contextmanager
def no_file_writes(allowed: Path | None = None) -> Iterator[list[str]]:
    """Fails the block if it creates, writes, renames or removes a file outside `allowed`.

    Only the calling thread is watched: a test's own server threads are not its concern.
    """
    global _installed
    if not _installed:
        sys.addaudithook(_hook)  # cannot be removed again: it stays idle when not watching
        _installed = True
    _watch.allowed, _watch.seen = allowed, []
    try:
        yield _watch.seen
    finally:
        seen: list[str] = _watch.seen
        _watch.allowed = False
    assert seen == [], f"files written: {seen[:5]}"


@st.composite
def mutated(
    draw: st.DrawFn, seeds: Sequence[bytes], snippets: Sequence[bytes] = (b"\x00", b"\xff")
) -> bytes:
    """A seed damaged by a few flips, cuts, insertions of `snippets` and duplications."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        if not data:
            data = bytearray(b"\n")
        position = draw(st.integers(min_value=0, max_value=len(data) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "duplicate"]))
        if action == "flip":
            data[position] = draw(st.integers(min_value=0, max_value=255))
        elif action == "delete":
            del data[position : position + draw(st.integers(min_value=1, max_value=64))]
        elif action == "insert":
            data[position:position] = draw(st.sampled_from(snippets))
        else:
            # Repeating a slice makes what a flip rarely does: a second part, header or entry.
            end = position + draw(st.integers(min_value=1, max_value=256))
            data[position:position] = data[position:end]
    if draw(st.booleans()):
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    return bytes(data)
