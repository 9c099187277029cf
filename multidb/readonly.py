"""Backends' read-only modes, and the guard that refuses writes before they are sent.

Two kinds of engine need them:

- A replica engine is read-only for its whole life: each new DBAPI connection
  is put in the backend's read-only mode once, when it connects, and every
  write statement on it is refused before it reaches the server.
- A primary engine is read-only only inside a read session's transaction
  (``role="read"`` on a primary, or a read that fell back to it). The mode is
  set when that transaction begins and never outlives it: PostgreSQL's
  ``SET TRANSACTION READ ONLY`` and MySQL's ``START TRANSACTION READ ONLY``
  end with the transaction; SQLite's ``PRAGMA query_only`` is switched off
  again when the connection goes back to the pool.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from .errors import ReadOnlyError
from .statements import Kind, classify_text

__all__ = ["begin_read_only", "install_primary", "install_replica"]

_FLAG = "multidb_read_only"

# Statements that put one connection in read-only mode for good (replicas).
_SESSION_READ_ONLY = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
    "sqlite": "PRAGMA query_only = ON",
}
# Statements that make the transaction just begun read-only (primaries).
_TRANSACTION_READ_ONLY = {
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "START TRANSACTION READ ONLY",
    "mariadb": "START TRANSACTION READ ONLY",
    "sqlite": "PRAGMA query_only = ON",
}


def install_replica(engine: Engine, name: str) -> None:
    """Make every connection of ``engine`` read-only and refuse writes on it."""
    sql = _SESSION_READ_ONLY.get(engine.dialect.name)

    if sql is not None:

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql)
            finally:
                cursor.close()
            if engine.dialect.name != "sqlite":
                dbapi_connection.commit()

    def _refuse_writes(cursor: Any, statement: str, *args: Any) -> None:
        if classify_text(statement) is Kind.WRITE:
            raise ReadOnlyError(_refusal(name, statement))

    _guard(engine, _refuse_writes)


def install_primary(engine: Engine, name: str) -> None:
    """Refuse writes on ``engine``'s connections while a read session holds them."""

    def _refuse_writes(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        if context is None:  # do_execute_no_params passes (cursor, statement, context)
            context = parameters
        # The flag is an execution option of the read session's Connection:
        # it ends with that Connection and never reaches the pool.
        if context.execution_options.get(_FLAG) and classify_text(statement) is Kind.WRITE:
            raise ReadOnlyError(_refusal(name, statement))

    _guard(engine, _refuse_writes)

    if engine.dialect.name == "sqlite":
        # PRAGMA query_only belongs to the DBAPI connection: switch it off on the way back.
        @event.listens_for(engine, "checkin")
        def _end_query_only(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            if record.info.pop(_FLAG, None) and dbapi_connection is not None:
                dbapi_connection.execute("PRAGMA query_only = OFF")


def _guard(engine: Engine, refuse: Any) -> None:
    """Run ``refuse`` before each statement is sent.

    A dialect event, not ``before_cursor_execute``: any ConnectionEvents
    listener on an engine makes every Connection of it dispatch through a
    joined event dispatcher at each step of every statement (about 15-25 us
    per session on SQLite); ``do_execute`` costs one call per statement.
    """
    for name in ("do_execute", "do_executemany", "do_execute_no_params"):
        event.listen(engine, name, refuse)


def begin_read_only(connection: Connection) -> None:
    """Put the transaction ``connection`` has just begun on a primary in read-only mode."""
    connection.execution_options(**{_FLAG: True})  # in place, for this Connection only
    if connection.dialect.name == "sqlite":
        connection.info[_FLAG] = True  # see install_primary's checkin hook
    sql = _TRANSACTION_READ_ONLY.get(connection.dialect.name)
    if sql is not None:
        connection.exec_driver_sql(sql)


def _refusal(name: str, statement: str) -> str:
    first = " ".join(statement.split())[:60]
    return (
        f"{name}: refused to send {first!r} on a read-only connection, nothing was sent; "
        "write in a session with role='write'"
    )
