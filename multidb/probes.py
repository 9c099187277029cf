"""Asking a server what it is: its role (primary or replica) and how far it has applied.

Each backend is asked the way its documentation says:

- PostgreSQL: ``pg_is_in_recovery()``; a primary's position is
  ``pg_current_wal_flush_lsn()`` (a standby can receive up to it, and every
  transaction committed before it was read is before it, but for commits
  made with ``synchronous_commit = off`` in the last 3 x ``wal_writer_delay``),
  a standby's applied position ``pg_last_wal_replay_lsn()``;
  ``now() - pg_last_xact_replay_timestamp()`` bounds a standby's lag from
  above (it is the age of the last replayed commit: everything committed
  before it is applied); replay paused (``pg_is_wal_replay_paused()``) means
  stopped.
- MySQL/MariaDB: ``@@read_only``; a primary's position is
  ``@@gtid_binlog_pos``, a replica's applied position ``@@gtid_slave_pos``;
  ``Seconds_Behind_Master`` of ``SHOW REPLICA STATUS`` (``SHOW SLAVE STATUS``
  on older servers) estimates lag (not a bound: it is 0 whenever the SQL
  thread has applied what the IO thread fetched, however far behind that is);
  a stopped SQL thread means stopped.
- SQLite: a "replica" is the primary's file opened read-only: never behind.
- Others: no roles, lag unknown.

Lag itself is worked out by :mod:`multidb.monitor` from these facts and the
primary's positions over time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["ServerState", "applied_position", "covers", "probe"]

EngineRole = Literal["primary", "replica"]


@dataclass(frozen=True, slots=True)
class ServerState:
    """What one probe learned."""

    role_error: str | None  # set when the server answers in the wrong role
    position: str | None = None  # a primary's position, for its replicas' lag
    applied: str | None = None  # a replica's applied position, as the server writes it
    behind: float | None = None  # a replica's lag as the server sees it, seconds
    behind_is_bound: bool = False  # whether ``behind`` is an upper bound (else an estimate)
    stopped: bool = False  # a replica whose replay is paused or whose apply thread stopped
    never_behind: bool = False  # a replica that cannot lag (SQLite's read-only open)


def probe(connection: Connection, role: EngineRole) -> ServerState:
    """Check ``connection``'s server against ``role``; read its position or applied position."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return _postgresql(connection, role)
    if dialect in ("mysql", "mariadb"):
        return _mysql(connection, role)
    if dialect == "sqlite" and role == "replica":
        return ServerState(None, never_behind=True)
    return ServerState(None)


def applied_position(connection: Connection) -> str | None:
    """A replica's applied position now (cheap: for re-reading it within a probe)."""
    query = _PG_APPLIED if connection.dialect.name == "postgresql" else _MARIADB_APPLIED
    value = connection.scalar(query)
    return None if value is None else str(value)


def covers(dialect: str, applied: str, position: str) -> bool | None:
    """Whether a replica at ``applied`` has everything a primary had at ``position``.

    None when the two cannot be compared (unknown dialect, unparsable text).
    """
    try:
        if dialect == "postgresql":
            return _lsn(applied) >= _lsn(position)
        if dialect in ("mysql", "mariadb"):
            have = _gtids(applied)
            return all(have.get(domain, -1) >= seq for domain, seq in _gtids(position).items())
    except ValueError:
        return None
    return None


def _lsn(value: str) -> int:
    high, low = value.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _gtids(value: str) -> dict[str, int]:
    """MariaDB's ``domain-server-seq,...`` as domain -> sequence number."""
    result: dict[str, int] = {}
    for gtid in filter(None, (part.strip() for part in value.split(","))):
        domain, _server, seq = gtid.split("-")
        result[domain] = max(result.get(domain, -1), int(seq))
    return result


_PG_ROLE = text(
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END"
)
_PG_REPLICA = text(
    "SELECT pg_is_wal_replay_paused(), pg_last_wal_replay_lsn()::text,"
    " EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
)
_PG_APPLIED = text("SELECT pg_last_wal_replay_lsn()::text")
_MARIADB_APPLIED = text("SELECT @@global.gtid_slave_pos")


def _postgresql(connection: Connection, role: EngineRole) -> ServerState:
    in_recovery, position = connection.execute(_PG_ROLE).one()
    if role == "primary":
        error = "configured as primary but the server is in recovery" if in_recovery else None
        return ServerState(error, position=position)
    if not in_recovery:
        return ServerState("configured as replica but the server is not in recovery")
    paused, applied, age = connection.execute(_PG_REPLICA).one()
    behind = None if age is None else max(float(age), 0.0)
    return ServerState(None, applied=applied, behind=behind, behind_is_bound=True, stopped=paused)


def _mysql(connection: Connection, role: EngineRole) -> ServerState:
    read_only = bool(connection.scalar(text("SELECT @@global.read_only")))
    if role == "primary":
        error = "configured as primary but the server is read_only" if read_only else None
        return ServerState(error, position=_variable(connection, "@@global.gtid_binlog_pos"))
    error = (
        None if read_only else "configured as replica but the server is writable (read_only is off)"
    )
    try:
        status = connection.execute(text("SHOW REPLICA STATUS")).mappings().first()
    except DBAPIError:
        status = connection.execute(text("SHOW SLAVE STATUS")).mappings().first()
    if status is None:
        return ServerState(error or "configured as replica but replication is not set up")
    io = status.get("Slave_IO_Running", status.get("Replica_IO_Running"))
    sql = status.get("Slave_SQL_Running", status.get("Replica_SQL_Running"))
    behind = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
    # Seconds_Behind_Master is NULL while the IO thread reconnects (primary gone):
    # then only the applied position can say how fresh the replica is.
    return ServerState(
        error,
        applied=_variable(connection, "@@global.gtid_slave_pos"),
        behind=None if behind is None or io != "Yes" else float(behind),
        stopped=sql != "Yes",
    )


def _variable(connection: Connection, name: str) -> str | None:
    """A server variable, None where the server has no such variable (MySQL's GTIDs differ)."""
    try:
        value = connection.scalar(text(f"SELECT {name}"))
    except DBAPIError:
        return None
    return None if value is None else str(value)
