"""An object named by the start of its ID: tables show whole IDs, but an operator types or
pastes what fits, so every command that takes an ID takes any unique prefix of it.

One resolver for every kind of ID (quarantine, queue, spool): the rules are the same
everywhere, and so are the messages.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Column, Engine, func, select

from mssgate.errors import MssgateError, NotFound, UsageFailed

# Six hexadecimal characters are 16 million values: enough for a prefix to name one object
# among the thousands a gateway holds, short enough to type.
MIN_PREFIX = 6


class AmbiguousId(MssgateError):
    """A prefix names more than one object."""


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (escape character \\) for the values starting with `prefix`, whose own
    % and _ match only themselves."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def resolve_id(
    engine: Engine,
    column: Column[str],
    given: str,
    *,
    what: str,
    case: Literal["lower", "upper"] = "lower",
) -> str:
    """The one ID in `column` that is `given` or starts with it.

    `what` names the object in messages ("quarantined document"); `case` is the one case of
    this kind of ID (hexadecimal IDs are lower case, spool queue IDs upper case), so that a
    prefix typed in the other case still matches. A whole ID wins even if it is the prefix of
    another. Too short is a usage error (exit 2); none is NotFound; several
    is AmbiguousId, saying how many.
    """
    if len(given) < MIN_PREFIX:
        raise UsageFailed(
            f"{what} ID {given!r} is too short: give at least {MIN_PREFIX} characters"
        )
    given = given.lower() if case == "lower" else given.upper()
    with engine.connect() as conn:
        exact = conn.execute(select(column).where(column == given)).scalar_one_or_none()
        if exact is not None:
            return str(exact)
        # SQLite's LIKE ignores ASCII case, PostgreSQL's does not: the prefix is in the IDs'
        # one case, so both answer the same.
        matching = column.like(like_prefix(given), escape="\\")
        found = conn.execute(select(column).where(matching).limit(2)).scalars().all()
        if len(found) == 1:
            return str(found[0])
        if not found:
            raise NotFound(f"no {what} {given!r}")
        count = conn.execute(
            select(func.count()).select_from(column.table).where(matching)
        ).scalar_one()
    raise AmbiguousId(f"{what} ID prefix {given!r} matches {count} entries: give more characters")
