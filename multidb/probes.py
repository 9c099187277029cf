"""Asking a server what it is: its role (primary or replica) and its replication lag.

Each backend is asked the way its documentation says:

- PostgreSQL: ``pg_is_in_recovery()``; on a standby, lag is 0 when it has
  replayed everything the primary had written when the probe began
  (``pg_current_wal_lsn()`` there; without the primary, everything received),
  else the age of the last replayed transaction; replay paused
  (``pg_is_wal_replay_paused()``) or no WAL ever received means unknown (None).
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
    position: str | None = None  # a PostgreSQL primary's WAL position, for its replicas' lag


def probe(connection: Connection, role: EngineRole, primary: str | None = None) -> ServerState:
    """Check ``connection``'s server against ``role`` and, for a replica, measure its lag.

    ``primary`` is the ``position`` a probe of the replica's primary just
    returned, or None when the primary was not asked or did not answer.
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return _postgresql(connection, role, primary)
    if dialect in ("mysql", "mariadb"):
        return _mysql(connection, role)
    if dialect == "sqlite" and role == "replica":
        return ServerState(0.0, None)  # a read-only open of the primary's own file
    return ServerState(None, None)


_PG_PRIMARY = text(
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END"
)
# The standby's own "received == replayed" is a poor test of being caught up:
# after a restart the receive pointer can stay ahead of the last record for
# good. The primary's position, read just before, is the reference when known.
# :primary is cast through text: asyncpg would infer the parameter as pg_lsn and want an int.
_PG_REPLICA = text(
    "SELECT pg_is_wal_replay_paused(), pg_last_wal_receive_lsn() IS NULL,"
    " CASE WHEN CAST(CAST(:primary AS text) AS pg_lsn) IS NOT NULL"
    "   THEN pg_last_wal_replay_lsn() >= CAST(CAST(:primary AS text) AS pg_lsn)"
    "   ELSE pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() END,"
    " EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())"
)


def _postgresql(connection: Connection, role: EngineRole, primary: str | None) -> ServerState:
    in_recovery, position = connection.execute(_PG_PRIMARY).one()
    if role == "primary":
        error = "configured as primary but the server is in recovery" if in_recovery else None
        return ServerState(None, error, position)
    if not in_recovery:
        return ServerState(None, "configured as replica but the server is not in recovery")
    paused, never_received, caught_up, age = connection.execute(
        _PG_REPLICA, {"primary": primary}
    ).one()
    if paused or (never_received and not caught_up):
        return ServerState(None, None)
    if caught_up:
        return ServerState(0.0, None)
    return ServerState(max(float(age or 0.0), 0.0), None)


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
