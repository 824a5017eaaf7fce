"""SQLite gives naive datetimes back; the directory always speaks aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)
