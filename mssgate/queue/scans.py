"""When a lease looks for lapsed leases (the documents' per mailbox, the ZAMs' per consumer).

A scan in every lease cost as much as the lease itself (issue 17's profile), so a lease scans
at most once per interval for its key; but a lease that finds fewer items ready than it asks
for scans anyway, so that it never answers "nothing" while a lapsed lease waits (the MLLP
push, which sees such a document waiting, would ask again at once, a connection to the RIS
each time). `serve`'s maintenance reaps every lapsed lease regardless.
"""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime, timedelta

INTERVAL = timedelta(seconds=1)
# Keys whose last scan is kept before those older than the interval are forgotten.
MEMORY = 1024


class ScanTimes:
    def __init__(self, *, interval: timedelta = INTERVAL, memory: int = MEMORY) -> None:
        self._interval = interval
        self._memory = memory
        self._last: dict[Hashable, datetime] = {}

    def due(self, key: Hashable, now: datetime) -> bool:
        last = self._last.get(key)
        return last is None or not last <= now < last + self._interval

    def mark(self, key: Hashable, now: datetime) -> None:
        if len(self._last) >= self._memory:
            # A scan older than the interval counts as none: forgetting it changes nothing,
            # and the map stays the size of the keys leased from in the last interval.
            self._last = {k: at for k, at in self._last.items() if at <= now < at + self._interval}
        self._last[key] = now

    def forget(self) -> None:
        """Every scan counts as none: called when a transaction that may have held one was
        rolled back. The next lease of each mailbox scans again (a scan twice costs a read)."""
        self._last = {}

    def keys(self) -> list[Hashable]:
        return list(self._last)
