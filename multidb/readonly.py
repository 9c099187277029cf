"""Backends' read-only modes, and the guard that refuses what is not a read before it is sent.

Two kinds of engine need them:

- A replica engine is read-only for its whole life: each new DBAPI connection
  is put in the backend's read-only mode once, when it connects, and every
  statement on it must pass :func:`~multidb.statements.read_refusal` (an
  allow-list) before it reaches the server.
- A primary engine is read-only only while a read session holds one of its
  connections (``role="read"`` on a primary, or a read that fell back to it).
  The mode is set when that transaction begins (PostgreSQL's ``SET
  TRANSACTION READ ONLY``, MySQL's ``START TRANSACTION READ ONLY``, SQLite's
  ``PRAGMA query_only``) and the same allow-list applies until the
  connection goes back to the pool.

The allow-list refuses whatever would end or change the read-only mode
(transaction control, ``SET``, ``PRAGMA query_only``, ``ATTACH``, several
statements in one string), so the session cannot switch it off. What a read
session may leave on a connection (a session advisory lock taken by a
function, a setting) is reset when the connection goes back to the pool,
before any other session gets it; only connections whose statements called
a function not known to be harmless pay for that reset (one round trip).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from .errors import ReadOnlyError
from .statements import read_refusal, resets_state

__all__ = [
    "READ_ONLY_OPTION",
    "begin_read_only",
    "install_primary",
    "install_replica",
    "scalar_outside_transaction",
]

log = logging.getLogger("multidb.routing")

_FLAG = "multidb_read_only"  # in a pooled connection's info: a read session holds it
# The execution option of a primary's read-only view: its transactions begin read-only.
READ_ONLY_OPTION = _FLAG
_DIRTY = "multidb_reset"  # in a pooled connection's info: reset it before reuse

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
# One query that drops what a read session may have left, and says whether the
# connection is still in the read-only state it should be in (False: discard it).
_RESET = {
    ("postgresql", "replica"): "SELECT current_setting('default_transaction_read_only') = 'on'"
    " FROM (SELECT pg_advisory_unlock_all()) AS unlocked",
    ("postgresql", "primary"): "SELECT s.setting = s.reset_val"
    " FROM (SELECT pg_advisory_unlock_all()) AS unlocked, pg_settings AS s"
    " WHERE s.name = 'default_transaction_read_only'",
    ("mysql", "replica"): "SELECT RELEASE_ALL_LOCKS() >= 0 AND @@session.{}",
    ("mysql", "primary"): "SELECT RELEASE_ALL_LOCKS() >= 0 AND NOT @@session.{}",
}


def install_replica(engine: Engine, name: str) -> None:
    """Make every connection of ``engine`` read-only and refuse what is not a read on it."""
    dialect = engine.dialect.name
    sql = _SESSION_READ_ONLY.get(dialect)

    if sql is not None:

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql)
            finally:
                cursor.close()
            if dialect != "sqlite":
                dbapi_connection.commit()

    def _refuse(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        if context is None:  # do_execute_no_params passes (cursor, statement, context)
            context = parameters
        info = _info(context.root_connection)
        if info is None:  # the dialect's own first-connect queries
            return
        _check(name, dialect, statement, context, info)

    _guard(engine, _refuse)
    _install_reset(engine, "replica")


def install_primary(engine: Engine, name: str) -> None:
    """Refuse what is not a read on ``engine``'s connections while a read session holds them."""
    dialect = engine.dialect.name

    def _refuse(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        if context is None:  # do_execute_no_params passes (cursor, statement, context)
            context = parameters
        # The flag sits in the pool's record of the DBAPI connection, out of reach of
        # execution options: a read session cannot talk its way out of it.
        info = _info(context.root_connection)
        # The execution option can switch the guard on (multidb.testing's shared connections),
        # never off.
        if info is not None and (info.get(_FLAG) or context.execution_options.get(_FLAG) is True):
            _check(name, dialect, statement, context, info)

    _guard(engine, _refuse)
    _install_reset(engine, "primary")


def _check(name: str, dialect: str, statement: str, context: Any, info: dict[str, Any]) -> None:
    """Refuse ``statement`` unless it only reads; note when it may leave state behind."""
    reason = read_refusal(statement, dialect)
    if reason is None and context.execution_options.get("isolation_level") == "AUTOCOMMIT":
        reason = "AUTOCOMMIT (it would end the read-only transaction after each statement)"
    if reason is not None:
        raise ReadOnlyError(_refusal(name, statement, reason))
    if resets_state(statement, dialect):
        info[_DIRTY] = True


def _guard(engine: Engine, refuse: Any) -> None:
    """Run ``refuse`` before each statement is sent.

    A dialect event, not ``before_cursor_execute``: any ConnectionEvents
    listener on an engine makes every Connection of it dispatch through a
    joined event dispatcher at each step of every statement (about 15-25 us
    per session on SQLite); ``do_execute`` costs one call per statement.
    """
    for name in ("do_execute", "do_executemany", "do_execute_no_params"):
        event.listen(engine, name, refuse)


def _install_reset(engine: Engine, role: str) -> None:
    """Reset what a read session left on a connection before the pool hands it out again."""
    dialect = engine.dialect.name
    backend = "mysql" if dialect == "mariadb" else dialect
    reset_sql = _RESET.get((backend, role))

    @event.listens_for(engine, "reset")
    def _reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: Any) -> None:
        info = record.info
        flagged = info.pop(_FLAG, False)
        dirty = info.pop(_DIRTY, False)
        if dbapi_connection is None or state.terminate_only or not state.asyncio_safe:
            return
        if flagged and dialect == "sqlite":
            # PRAGMA query_only belongs to the DBAPI connection: switch it off on the way back.
            dbapi_connection.execute("PRAGMA query_only = OFF")
        if dirty and reset_sql is not None:
            if not state.transaction_was_reset:
                dbapi_connection.rollback()
            # MariaDB names the variable tx_read_only; MySQL 8 only transaction_read_only.
            mariadb = getattr(engine.dialect, "is_mariadb", False)
            sql = reset_sql.format("tx_read_only" if mariadb else "transaction_read_only")
            if not scalar_outside_transaction(dbapi_connection, sql, rollback=True):
                # Raising here makes the pool discard the connection (logged by SQLAlchemy).
                raise ReadOnlyError(
                    "a read session changed its connection's read-only setting; "
                    "the connection was discarded"
                )


def scalar_outside_transaction(dbapi_connection: Any, sql: str, *, rollback: bool = False) -> Any:
    """Run one query outside any transaction (autocommit where the driver has it); its first value.

    Where the driver has no autocommit switch (PyMySQL), ``rollback=True``
    ends the transaction the query may have opened; otherwise it is left to
    the session or the pool to end.
    """
    autocommit = getattr(dbapi_connection, "autocommit", None)
    toggle = autocommit is False  # psycopg2, psycopg, and SQLAlchemy's asyncio adapters
    if toggle:
        dbapi_connection.autocommit = True
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql)
            row = cursor.fetchone()
        finally:
            cursor.close()
        if rollback and not toggle:
            dbapi_connection.rollback()
    finally:
        if toggle:
            dbapi_connection.autocommit = False
    return None if row is None else row[0]


def _info(connection: Any) -> dict[str, Any] | None:
    """The pool's info dict of a Connection's DBAPI connection; None on first connect."""
    try:
        info = connection.info
    except (AttributeError, NotImplementedError):  # an ad-hoc connection (first connect)
        return None
    return info if isinstance(info, dict) else None


def begin_read_only(connection: Connection) -> None:
    """Put the transaction ``connection`` has just begun on a primary in read-only mode."""
    # The option tells positions.py (and multidb.testing) this transaction writes nothing;
    # the guard itself reads the flag set below, which execution options cannot change.
    connection.execution_options(**{_FLAG: True})  # in place, for this Connection only
    if getattr(connection, "multidb_mirror", False):
        return  # testing.mirror()'s shared connection: the flag above is all it takes
    sql = _TRANSACTION_READ_ONLY.get(connection.dialect.name)
    if sql is not None:
        # Straight to the driver: the guard, already on through the option, would refuse it.
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql)
        finally:
            cursor.close()
    connection.info[_FLAG] = True  # from now on, only reads; cleared when it is checked in


def _refusal(name: str, statement: str, reason: str) -> str:
    first = " ".join(statement.split())[:60]
    return (
        f"{name}: refused to send {first!r} on a read-only connection: {reason}; "
        "nothing was sent. Write in a session with role='write'"
    )
