"""Statements compiled once and run on the driver's own cursor: the queue's hot path (issue 17).

Executing an already built SQLAlchemy statement still cost some 35 µs of Python (the execution
context, parameter processing, the result's metadata), about half of a lease+ack's CPU on
SQLite. A `Prepared` statement is written in SQLAlchemy Core and compiled by the connection's
dialect like any other, with the same bind and result processors (SQLite's datetimes stored
and read as SQLAlchemy stores them); only that per-execution machinery is skipped. It runs
inside the caller's SQLAlchemy transaction, on the same driver connection.

What stays as with `Connection.execute`: the engine's `before_cursor_execute` and
`after_cursor_execute` listeners are called (tests and tools count statements with them), a
driver error is raised as SQLAlchemy's exception class for it (OperationalError,
IntegrityError...), and a lost connection invalidates the pooled connection.

Only statements whose parameters are plain values (no IN lists that expand) are supported.
"""

from __future__ import annotations

import collections
import contextlib
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # Positional drivers (sqlite3): the parameter names in the order of the placeholders.
    order: tuple[str, ...] | None
    # Values the statement binds itself (literals such as a state's name).
    defaults: dict[str, Any]
    binds: tuple[tuple[str, Callable[[Any], Any]], ...]
    results: tuple[Callable[[Any], Any] | None, ...]
    row: Any


class Prepared:
    """`statement` returns `columns` (in that order), or nothing when there are none."""

    def __init__(self, statement: ClauseElement, columns: Iterable[Column[Any]] = ()) -> None:
        self._statement = statement
        self._columns = tuple(columns)
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def _for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect)
        if found is not None:
            return found
        compiled = self._statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if getattr(compiled, "_has_expanding_params", False) or any(
            bind.expanding for bind in compiled.binds.values()
        ):
            raise TypeError("a Prepared statement cannot expand IN lists")
        binds = []
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                binds.append((name, process))
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in self._columns
        )
        defaults = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }
        found = _Compiled(
            sql=compiled.string,
            order=tuple(compiled.positiontup or ()) if compiled.positional else None,
            defaults=defaults,
            binds=tuple(binds),
            results=results,
            row=collections.namedtuple("Row", [c.name for c in self._columns])
            if self._columns
            else None,
        )
        self._compiled[dialect] = found
        return found

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Runs the statement; its rows (named tuples of `columns`), processed."""
        compiled = self._for(conn.dialect)
        got = _run(conn, compiled, compiled.sql, _args(compiled, params), many=False)
        if compiled.row is None:
            return []
        make = compiled.row._make
        results = compiled.results
        if not any(results):
            return [make(raw) for raw in got]
        return [
            make([value if p is None else p(value) for p, value in zip(results, raw, strict=True)])
            for raw in got
        ]

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any | None:
        got = self.rows(conn, params)
        return got[0] if got else None

    def many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """Runs the statement once per parameter set (executemany); no rows back."""
        compiled = self._for(conn.dialect)
        args = [_args(compiled, one) for one in params]
        _run(conn, compiled, compiled.sql, args, many=True)


def _args(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
    values = {**compiled.defaults, **params}
    for name, process in compiled.binds:
        if name in values:
            values[name] = process(values[name])
    if compiled.order is None:
        return values
    return tuple(values[name] for name in compiled.order)


def _run(conn: Connection, compiled: _Compiled, sql: str, args: Any, *, many: bool) -> list[Any]:
    driver = conn.connection.dbapi_connection
    assert driver is not None
    cursor = driver.cursor()
    dispatch = conn.dispatch
    try:
        if dispatch.before_cursor_execute:
            dispatch.before_cursor_execute(conn, cursor, sql, args, None, many)
        if many:
            cursor.executemany(sql, args)
        else:
            cursor.execute(sql, args)
        got = cursor.fetchall() if compiled.row is not None else []
        if dispatch.after_cursor_execute:
            dispatch.after_cursor_execute(conn, cursor, sql, args, None, many)
        return list(got)
    except conn.dialect.loaded_dbapi.Error as exc:
        disconnected = conn.dialect.is_disconnect(exc, driver, cursor)
        if disconnected and not conn.invalidated:
            # As SQLAlchemy's own execution does: the pool's older connections went with the
            # server too (a PostgreSQL restart), and are replaced at their next checkout
            # instead of each failing one transaction.
            conn.engine.pool._invalidate(conn.connection, exc)
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            args,
            exc,
            conn.dialect.loaded_dbapi.Error,
            connection_invalidated=disconnected,
            dialect=conn.dialect,
        ) from exc
    finally:
        # A connection gone already cannot close its cursor; the error raised says so.
        with contextlib.suppress(conn.dialect.loaded_dbapi.Error):
            cursor.close()
