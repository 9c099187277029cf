"""Reading positions from the servers: a primary's after a write, a replica's applied one.

- After a write transaction commits on a primary (or ends, rolled back or
  not, on an ``AUTOCOMMIT`` connection), :func:`install_capture`
  reads the primary's position on the same connection, in one round trip,
  and records it in the current :class:`~multidb.causal.CausalScope`:
  PostgreSQL ``pg_current_wal_insert_lsn()``, MariaDB ``@@last_gtid``.
  Transactions that sent only reads (SELECT without a lock) record nothing
  and cost nothing. The WAL *insert* position, not the write position
  (``pg_current_wal_lsn()``): with ``synchronous_commit = off`` COMMIT
  returns before its WAL is written, and a standby that has replayed up to
  the write position may not have the commit yet.
- :func:`applied` asks a replica what it has applied (PostgreSQL
  ``pg_last_wal_replay_lsn()``, MariaDB ``@@gtid_slave_pos``), waiting up to
  a bound for a position (polled with a server-side ``pg_sleep``;
  ``MASTER_GTID_WAIT``), so that no wait blocks an event loop.

Both run their SQL on the DBAPI connection outside any transaction
(autocommit where the driver has it), so they leave no snapshot behind.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from sqlalchemy.engine import Connection, Engine

from . import causal
from .causal import Position
from .errors import one_line
from .hooks import after_transaction, before_execute, pool_info
from .readonly import scalar_outside_transaction
from .statements import Kind, classify_text, resets_state

__all__ = ["applied", "backend", "install_capture"]

log = logging.getLogger("multidb.causal")

_WROTE = "multidb_wrote"  # in a pooled connection's info: this transaction sent a write


def backend(engine: Engine | Connection) -> str | None:
    """``"postgresql"`` or ``"mariadb"`` where positions can be read, else None.

    MariaDB behind a ``mysql://`` URL is told apart only once the engine has connected.
    """
    dialect = engine.dialect
    if dialect.name == "postgresql":
        return "postgresql"
    if dialect.name in ("mysql", "mariadb") and getattr(dialect, "is_mariadb", False):
        return "mariadb"
    return None


def install_capture(engine: Engine, database: str) -> None:
    """Record ``database``'s position in the current scope after each write commits on ``engine``.

    A statement counts as a write unless it is a SELECT without a locking
    clause (SPEC section 2's rule) that calls no function multidb does not
    know to be harmless: ``SELECT my_function()`` may write, so the
    transaction's position is recorded. On SQLite, and MySQL without MariaDB
    GTIDs, only the fact that the scope wrote is kept.
    """
    dialect = engine.dialect.name

    def _note_write(statement: str, context: Any) -> None:
        # A read session on this primary (its Connection flagged read-only) never writes.
        if _writes(statement, dialect) and not context.execution_options.get("multidb_read_only"):
            info = pool_info(context.root_connection)
            if info is not None:  # None: the dialect's own first-connect queries
                info[_WROTE] = True
                # The scope the position goes to, made here if need be: the commit may run
                # in a copy of this context (AsyncConnection's close, shielded in a task).
                causal.ensure()

    def _record(dbapi_connection: Any, info: dict[str, Any], committed: bool) -> None:
        if not info.pop(_WROTE, False):
            return
        raw = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        if not committed and not _autocommit(engine, raw):
            return  # rolled back: nothing was written
        position: Position | None = None
        kind = backend(engine)  # known once connected: is_mariadb is read from the server
        if kind is not None:
            try:
                position = _primary_position(kind, raw)
            except Exception as exc:  # committed, but where is unknown: read the primary
                log.warning(
                    "causal: %s: reading the primary's position after a commit failed,"
                    " reads go to the primary for causal_ttl_seconds: %s",
                    database,
                    one_line(exc),
                )
                position = Position("primary", None, time.time())
        causal.ensure().record(database, position)
        if position is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("causal: %s: wrote at %s", database, position.text())

    before_execute(engine, _note_write)
    after_transaction(engine, _record)


def _autocommit(engine: Engine, dbapi_connection: Any) -> bool:
    """Whether the connection commits each statement as it runs (``isolation_level``
    ``AUTOCOMMIT``): then a write is kept even when its transaction ends in a rollback."""
    detect = getattr(engine.dialect, "detect_autocommit_setting", None)  # not in older 2.0
    try:
        if detect is not None:
            return bool(detect(dbapi_connection))
    except NotImplementedError:
        pass
    flag = getattr(dbapi_connection, "autocommit", None)  # psycopg, asyncpg's adapter
    if isinstance(flag, bool):
        return flag
    get = getattr(dbapi_connection, "get_autocommit", None)  # PyMySQL, mysqlclient
    return bool(get()) if callable(get) else False


@functools.lru_cache(maxsize=4096)
def _writes(statement: str, dialect: str) -> bool:
    """Whether SQL text counts as a write: anything but a SELECT without a lock that
    calls only functions known to be harmless."""
    return classify_text(statement) is not Kind.READ or resets_state(statement, dialect)


def _primary_position(kind: str, dbapi_connection: Any) -> Position | None:
    if kind == "postgresql":
        text = scalar_outside_transaction(
            dbapi_connection, "SELECT pg_current_wal_insert_lsn()::text"
        )
        lsn = causal.parse_lsn(str(text))
        return None if lsn is None else Position("lsn", lsn, time.time())
    text = scalar_outside_transaction(dbapi_connection, "SELECT @@last_gtid")
    gtids = causal.parse_gtids(str(text or ""))
    if not gtids:  # the transaction wrote nothing to the binary log
        return None
    return Position("gtid", gtids, time.time())


def applied(connection: Connection, required: Position, wait: float) -> tuple[bool, str | None]:
    """Whether the replica behind ``connection`` has applied ``required``, waiting up to ``wait``.

    Returns the answer and the replica's applied position as the server wrote
    it (None when it did not say). Raises the driver's error if the server fails.
    """
    dbapi_connection = connection.connection.dbapi_connection
    kind = backend(connection)
    deadline = time.monotonic() + wait
    if kind == "postgresql":
        sql = "SELECT pg_last_wal_replay_lsn()::text"
        while True:
            text = scalar_outside_transaction(dbapi_connection, sql)
            lsn = causal.parse_lsn(str(text)) if text is not None else None
            have = None if lsn is None else Position("lsn", lsn, 0.0)
            if causal.covers(have, required) or time.monotonic() >= deadline:
                return causal.covers(have, required), text
            # The sleep happens on the server: no thread or event loop is blocked here.
            sql = "SELECT pg_last_wal_replay_lsn()::text FROM pg_sleep(0.005)"
    if kind == "mariadb":
        if wait > 0:
            # Formatted from integers we parsed: nothing from outside is interpolated.
            scalar_outside_transaction(
                dbapi_connection, f"SELECT MASTER_GTID_WAIT('{required.text()}', {wait:.3f})"
            )
        text = scalar_outside_transaction(dbapi_connection, "SELECT @@gtid_slave_pos")
        gtids = causal.parse_gtids(str(text or ""))
        have = None if gtids is None else Position("gtid", gtids, 0.0)
        return causal.covers(have, required), None if text is None else str(text)
    return True, None  # no positions here: nothing to wait for
