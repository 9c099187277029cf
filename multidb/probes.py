"""Asking a server what it is: its role (primary or replica) and its replication lag.

Each backend is asked the way its documentation says:

- PostgreSQL: ``pg_is_in_recovery()``; on a standby, lag is 0 when everything
  received has been replayed, else the age of the last replayed transaction;
  replay paused (``pg_is_wal_replay_paused()``) or no WAL receiver means
  unknown (None).
- MySQL/MariaDB: ``@@read_only``; ``SHOW REPLICA STATUS`` (``SHOW SLAVE
  STATUS`` on older servers): ``Seconds_Behind_Master``/``_Source``, None when
  either replication thread is stopped.
- SQLite: a "replica" is the primary's file opened read-only: lag 0.
- Others: no roles, lag unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

__all__ = ["ServerState", "probe"]

EngineRole = Literal["primary", "replica"]


@dataclass(frozen=True, slots=True)
class ServerState:
    """What one probe learned."""

    lag_seconds: float | None  # replicas only; None when unknown or stopped
    role_error: str | None  # set when the server answers in the wrong role


def probe(connection: Connection, role: EngineRole) -> ServerState:
    """Check ``connection``'s server against ``role`` and, for a replica, measure its lag."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return _postgresql(connection, role)
    if dialect in ("mysql", "mariadb"):
        return _mysql(connection, role)
    if dialect == "sqlite" and role == "replica":
        return ServerState(0.0, None)  # a read-only open of the primary's own file
    return ServerState(None, None)


def _postgresql(connection: Connection, role: EngineRole) -> ServerState:
    in_recovery = bool(connection.scalar(text("SELECT pg_is_in_recovery()")))
    if role == "primary":
        error = "configured as primary but the server is in recovery" if in_recovery else None
        return ServerState(None, error)
    if not in_recovery:
        return ServerState(None, "configured as replica but the server is not in recovery")
    row = connection.execute(
        text(
            "SELECT pg_is_wal_replay_paused(),"
            " pg_last_wal_receive_lsn() IS NULL,"
            " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
            " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)"
            " END"
        )
    ).one()
    paused, never_received, lag = row
    if paused or never_received:
        return ServerState(None, None)
    return ServerState(max(float(lag), 0.0), None)


def _mysql(connection: Connection, role: EngineRole) -> ServerState:
    read_only = bool(connection.scalar(text("SELECT @@global.read_only")))
    if role == "primary":
        error = "configured as primary but the server is read_only" if read_only else None
        return ServerState(None, error)
    error = (
        None if read_only else "configured as replica but the server is writable (read_only is off)"
    )
    try:
        status = connection.execute(text("SHOW REPLICA STATUS")).mappings().first()
    except DBAPIError:
        status = connection.execute(text("SHOW SLAVE STATUS")).mappings().first()
    if status is None:
        return ServerState(None, error or "configured as replica but replication is not set up")
    io = status.get("Slave_IO_Running", status.get("Replica_IO_Running"))
    sql = status.get("Slave_SQL_Running", status.get("Replica_SQL_Running"))
    behind = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
    if io != "Yes" or sql != "Yes" or behind is None:
        return ServerState(None, error)
    return ServerState(float(behind), error)
