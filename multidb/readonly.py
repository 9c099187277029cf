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
function, a setting) is reset when its transaction ends, at the latest as
the connection goes back to the pool, before any other session gets it;
only connections whose statements called a function not known to be
harmless pay for that reset (one round trip).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry

from .errors import ReadOnlyError
from .hooks import Hook, after_transaction, before_execute, pool_info
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

    if engine.dialect.driver == "psycopg":  # before the hooks below wrap do_rollback
        _end_with_commit(engine)
    before_execute(engine, _guard(name, dialect, always=True))
    if dialect != "sqlite":  # a SQLite replica keeps nothing to reset: no locks, no settings
        _install_reset(engine, "replica")


def _end_with_commit(engine: Engine) -> None:
    """End ``engine``'s transactions with COMMIT where SQLAlchemy rolls back (psycopg 3).

    psycopg forgets the statements it prepared at each ROLLBACK, and sends
    ``DEALLOCATE ALL`` when it had any; a read session ends with a rollback,
    so on a replica it would lose what a plain session's commit keeps. A
    replica's transactions only read: COMMIT ends them alike (on one that
    failed, the server rolls back), and on an idle connection it sends nothing.
    """
    engine.dialect.do_rollback = lambda dbapi_connection: dbapi_connection.commit()  # type: ignore[method-assign]


def install_primary(engine: Engine, name: str) -> None:
    """Refuse what is not a read on ``engine``'s connections while a read session holds them."""
    before_execute(engine, _guard(name, engine.dialect.name, always=False))
    _install_reset(engine, "primary")


def _guard(name: str, dialect: str, *, always: bool) -> Hook:
    """The hook that refuses what is not a read before it is sent: on every connection of
    a replica (``always``), on a primary's only while a read session holds it."""

    def refuse(statement: str, context: Any) -> None:
        reason, resets = _verdict(statement, dialect)
        options = context.execution_options
        if reason is None and options.get("isolation_level") == "AUTOCOMMIT":
            reason = _AUTOCOMMIT  # per execution, not cacheable by text
        if reason is None and not resets:
            return  # a plain read: allowed whoever holds the connection
        info = pool_info(context.root_connection)
        if info is None:  # the dialect's own first-connect queries
            return
        # On a primary the flag sits in the pool's record of the DBAPI connection, out of
        # reach of execution options: a read session cannot talk its way out of it. The
        # option can switch the guard on (multidb.testing's shared connections), never off.
        if always or info.get(_FLAG) or options.get(_FLAG) is True:
            _enforce(name, statement, reason, resets, info)

    return refuse


def _enforce(
    name: str, statement: str, reason: str | None, resets: bool, info: dict[str, Any]
) -> None:
    """Raise for a refused statement; mark its connection for the reset when it may leave state."""
    if reason is not None:
        raise ReadOnlyError(_refusal(name, statement, reason))
    if resets:
        info[_DIRTY] = True


@functools.lru_cache(maxsize=4096)
def _verdict(statement: str, dialect: str) -> tuple[str | None, bool]:
    """Why ``statement`` may not run on a read-only connection (None: it may), and whether
    it calls a function that may leave state behind (a lock) for the reset to clear."""
    return read_refusal(statement, dialect), resets_state(statement, dialect)


_AUTOCOMMIT = "AUTOCOMMIT (it would end the read-only transaction after each statement)"


def _install_reset(engine: Engine, role: str) -> None:
    """Reset what a read session left on a connection when its transaction ends.

    A hook after each commit and rollback (:func:`~multidb.hooks.after_transaction`):
    every transaction ends in one of them, the pool's rollback of a connection
    given back mid-transaction included, so nothing a read session left
    reaches the next user of the connection. A connection that ends no
    flagged transaction pays at most two dict lookups; no pool event is
    dispatched at each check-in.
    """
    dialect = engine.dialect
    name = dialect.name
    backend = "mysql" if name == "mariadb" else name
    reset_sql = _RESET.get((backend, role))

    def reset(connection: Any, info: dict[str, Any], committed: bool) -> None:
        if _FLAG not in info and _DIRTY not in info:
            return
        flagged = info.pop(_FLAG, False)
        dirty = info.pop(_DIRTY, False)
        raw = getattr(connection, "dbapi_connection", connection)
        if raw is None:
            return
        if flagged and name == "sqlite":
            # PRAGMA query_only belongs to the DBAPI connection: switch it off again.
            raw.execute("PRAGMA query_only = OFF")
        if dirty and reset_sql is not None:
            # MariaDB names the variable tx_read_only; MySQL 8 only transaction_read_only.
            mariadb = getattr(dialect, "is_mariadb", False)
            sql = reset_sql.format("tx_read_only" if mariadb else "transaction_read_only")
            if not scalar_outside_transaction(raw, sql, rollback=True):
                log.warning(
                    "%s: a read session changed its connection's read-only setting; "
                    "the connection is replaced before its next use",
                    engine.url.render_as_string(hide_password=True),
                )
                connection.invalidate(soft=True)

    after_transaction(engine, reset)


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
