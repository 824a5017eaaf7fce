"""The woman's calendar day: the 15-day deadline of a second reading counts in the days of
the place she lives, not UTC's. In Paris a case is a day older from midnight local time (22:00
or 23:00 UTC), in Cayenne three hours after midnight UTC, in Réunion four hours before it.

The zone is her département's (the form's postal code): overseas ones their own, every other
(metropolitan France, Corsica, none known) Europe/Paris, where the screening programme and
this gateway's operators are.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import cache
from typing import Final
from zoneinfo import ZoneInfo

METROPOLITAN: Final = "Europe/Paris"
OVERSEAS: Final = {
    "971": "America/Guadeloupe",
    "972": "America/Martinique",
    "973": "America/Cayenne",
    "974": "Indian/Reunion",
    "975": "America/Miquelon",
    "976": "Indian/Mayotte",
    "977": "America/St_Barthelemy",
    "978": "America/Marigot",
}

# A day counted from: a calendar date as given (`--as-of`, `?as_of=`), the same for every
# case; or an instant (now), which is a different date in each zone.
AsOf = date | datetime


@cache
def _zone(name: str) -> ZoneInfo:
    # The tzdata package (a dependency) holds the zones where the system has none
    # (python:3.11-slim on Debian 13 ships no /usr/share/zoneinfo).
    return ZoneInfo(name)


def zone_of(departement: str | None) -> ZoneInfo:
    return _zone(OVERSEAS.get(departement or "", METROPOLITAN))


def local_date(departement: str | None, as_of: AsOf) -> date:
    """The calendar day of a woman of `departement` at `as_of`: the date itself when given
    one; an instant's date in her zone (a naive instant is taken as UTC)."""
    if not isinstance(as_of, datetime):
        return as_of
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return as_of.astimezone(zone_of(departement)).date()


def dates_by_zone(as_of: datetime) -> tuple[date, dict[date, list[str]]]:
    """(the metropolitan date, {date: the overseas départements at that date}) at `as_of`:
    for a query counting each case from its own local day (a few dates, not one per case)."""
    overseas: dict[date, list[str]] = {}
    for departement in OVERSEAS:
        overseas.setdefault(local_date(departement, as_of), []).append(departement)
    return local_date(None, as_of), overseas
