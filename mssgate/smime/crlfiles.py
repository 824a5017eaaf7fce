"""The CRL files of `policy.crl_files`, followed while the gateway serves.

A CRL is good until its nextUpdate; after that, in the `require` revocation mode the gateway
uses, every certificate its CA issued is refused ("revocation status unknown"). Operators
refresh the files from their CA (IGC-Santé publishes new lists well before nextUpdate), so
the gateway must see a replaced file without a restart:

- `current()` is what each verification asks for. At most every `CHECK_SECONDS` it stats the
  files (inode, size, mtime, ctime: a file renamed over, or rewritten in place) and reads only
  a changed one. A file that cannot be read, is not a CRL (a download half written), is
  another authority's list, a delta list where a complete one was (or the reverse) or was
  issued before the list in force (it would forget revocations) leaves the last good list
  in force and is logged; the file is tried again once it changes.
- Every check also looks at each list's nextUpdate: one warning from a day before it, one
  error once past it (logged once per list and nextUpdate), and the Prometheus gauge
  `mssgate_crl_next_update_seconds{crl=...}` computes the time left at each scrape (and makes
  the scrape a check too, so a quiet gateway still warns).

The path validation cache keys on each CRL's digest (mssgate.smime.pathcache): a reloaded
list is another key, so no success remembered under the old list answers for the new one.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mssgate import metrics
from mssgate.errors import ConfigError
from mssgate.logs import event

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0
WARN_BEFORE = dt.timedelta(days=1)
# A CRL file bigger than this is not a CRL we will hold in memory (IGC-Santé's are a few MB).
MAX_CRL_BYTES = 64 * 1024 * 1024

_Signature = tuple[int, int, int, int]


class CrlUnusable(Exception):
    """A CRL file that cannot be read or parsed; the message names the file, never its bytes."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    data: bytes
    signature: _Signature
    issuer: x509.Name
    delta: bool  # a delta CRL (RFC 5280 §5.2.4): only the changes since a complete list
    last_update: dt.datetime
    next_update: dt.datetime | None
    revoked: int


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: Path) -> _Loaded:
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_size > MAX_CRL_BYTES:
                raise CrlUnusable(f"{path}: larger than {MAX_CRL_BYTES} bytes")
            data = handle.read(MAX_CRL_BYTES + 1)
    except OSError as exc:
        raise CrlUnusable(f"{path}: {exc.strerror or exc.__class__.__name__}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        revoked = len(crl)  # entries are parsed lazily: this reads them all
        last_update, next_update = crl.last_update_utc, crl.next_update_utc
        issuer = crl.issuer
        try:
            crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
            delta = True
        except x509.ExtensionNotFound:
            delta = False
    except ValueError:
        raise CrlUnusable(f"{path}: not a PEM or DER CRL") from None
    return _Loaded(data, _signature(st), issuer, delta, last_update, next_update, revoked)


def _label(path: Path, taken: set[str]) -> str:
    # The metric label: the file name in the token alphabet mssgate.metrics allows.
    base = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip("._-")[:28] or "crl"
    label, n = base, 1
    while label in taken:
        n += 1
        label = f"{base}-{n}"
    taken.add(label)
    return label


class _File:
    def __init__(self, path: Path, label: str, loaded: _Loaded) -> None:
        self.path = path
        self.label = label
        self.loaded = loaded
        self.failed: _Signature | None = None
        # (nextUpdate, "expiring" | "expired") already said, so each is logged once.
        self.said: set[tuple[dt.datetime | None, str]] = set()


class CrlFiles:
    """The CRLs a verification uses, re-read from their files when they change."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        check_seconds: float = CHECK_SECONDS,
        warn_before: dt.timedelta = WARN_BEFORE,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """Reads every file now: at start an unusable file is a configuration error."""
        self._check_seconds = check_seconds
        self._warn_before = warn_before
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        taken: set[str] = set()
        self._files: list[_File] = []
        for path in paths:
            try:
                loaded = _read(path)
            except CrlUnusable as exc:
                raise ConfigError(f"policy.crl_files: {exc}") from None
            self._files.append(_File(path, _label(path, taken), loaded))
        self._current = tuple(f.loaded.data for f in self._files)
        self._checked = clock()
        with self._lock:
            self._watch_dates()
        for file in self._files:
            metrics.crl_next_update(file.label, self._seconds_left_fn(file))

    @classmethod
    def empty(cls) -> CrlFiles:
        return cls(())

    def current(self) -> tuple[bytes, ...]:
        """The lists in force (DER or PEM bytes, one per file), checked against their files
        at most every `check_seconds`."""
        if self._files and self._clock() - self._checked >= self._check_seconds:
            self.check()
        return self._current

    def check(self) -> None:
        """Stats every file, reloads the changed ones, and says what is due or past due."""
        with self._lock:
            self._checked = self._clock()
            changed = False
            for file in self._files:
                changed |= self._refresh(file)
            if changed:
                self._current = tuple(f.loaded.data for f in self._files)
            self._watch_dates()

    def _refresh(self, file: _File) -> bool:
        try:
            signature = _signature(os.stat(file.path))
        except OSError:
            signature = None
        if signature is not None and signature in (file.loaded.signature, file.failed):
            return False
        try:
            loaded = _read(file.path)
            if loaded.issuer != file.loaded.issuer:
                # A refresh job that fetched the wrong URL: taking it would leave the
                # file's own CA without a list, and every signature it issued refused
                # for good ("revocation status unknown"), not merely delayed.
                raise CrlUnusable(
                    f"{file.path}: issued by another authority"
                    f" ({loaded.issuer.rfc4514_string()}, not"
                    f" {file.loaded.issuer.rfc4514_string()})"
                )
            if loaded.delta != file.loaded.delta:
                # A delta in place of the complete list leaves the CA with no complete list
                # (status unknown for all it issued); the reverse drops the changes.
                kind = "a delta CRL" if loaded.delta else "a complete CRL, not a delta CRL"
                raise CrlUnusable(f"{file.path}: {kind} where the file held the other kind")
            if loaded.last_update < file.loaded.last_update:
                # An older list (a stale mirror, a backup restored) would forget revocations
                # the one in force knows of.
                raise CrlUnusable(f"{file.path}: issued before the list in force")
        except CrlUnusable as exc:
            if file.failed != signature:
                file.failed = signature
                metrics.crl_reload(file.label, "failed")
                event(log, "crl.reload_failed", level=logging.WARNING, crl=file.label,
                      reason=str(exc), kept="the last good list")  # fmt: skip
            return False
        file.failed = None
        if loaded.data == file.loaded.data:
            file.loaded = loaded  # touched, same list
            return False
        file.loaded = loaded
        metrics.crl_reload(file.label, "reloaded")
        event(log, "crl.reloaded", crl=file.label, revoked=loaded.revoked,
              next_update=None if loaded.next_update is None
              else loaded.next_update.isoformat())  # fmt: skip
        return True

    def _watch_dates(self) -> None:
        now = self._now()
        for file in self._files:
            due = file.loaded.next_update
            if due is None:
                continue
            left = (due - now).total_seconds()
            if left <= 0:
                self._say_once(file, "expired", logging.ERROR, left)
            elif left <= self._warn_before.total_seconds():
                self._say_once(file, "expiring", logging.WARNING, left)

    def _say_once(self, file: _File, what: str, level: int, left: float) -> None:
        key = (file.loaded.next_update, what)
        if key in file.said:
            return
        file.said.add(key)
        due = file.loaded.next_update
        event(log, f"crl.{what}", level=level, crl=file.label, seconds_left=round(left),
              next_update=None if due is None else due.isoformat())  # fmt: skip

    def _seconds_left_fn(self, file: _File) -> Callable[[], float]:
        def seconds_left() -> float:
            # A scrape is a check too: a gateway that gets no mail still notices a new file
            # and still warns before nextUpdate.
            if self._clock() - self._checked >= self._check_seconds:
                self.check()
            due = file.loaded.next_update
            if due is None:
                return float("inf")
            return (due - self._now()).total_seconds()

        return seconds_left
