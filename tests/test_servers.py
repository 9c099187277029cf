"""The test harness itself: checks servers' replication state from the server side."""

from __future__ import annotations

import itertools
import time

import psycopg2
import pymysql
import pytest
from servers import MariaDBCluster, MariaDBServer, PostgresCluster, PostgresServer, wait_until

_counter = itertools.count(1)


def _table(prefix: str) -> str:
    """A table name no other test in this session uses."""
    return f"{prefix}_{next(_counter)}"


# --------------------------------------------------------------------------- wait_until


def test_wait_until_returns_as_soon_as_predicate_turns_true() -> None:
    calls = iter([False, False, True])
    started = time.monotonic()
    wait_until(lambda: next(calls), timeout=5, interval=0.01)
    assert time.monotonic() - started < 1


def test_wait_until_raises_assertion_error_with_message_on_timeout() -> None:
    with pytest.raises(AssertionError, match="never true"):
        wait_until(lambda: False, timeout=0.1, interval=0.01, message="never true")


# --------------------------------------------------------------------------- PostgreSQL


def _pg_ids(server: PostgresServer, table: str) -> list[int]:
    return [row[0] for row in server.query(f"SELECT id FROM {table} ORDER BY id", admin=False)]


@pytest.mark.postgresql
def test_pg_standbys_are_in_recovery_and_primary_is_not(pg_cluster: PostgresCluster) -> None:
    assert [s.name for s in pg_cluster.standbys] == ["pg-standby1", "pg-standby2"]
    assert pg_cluster.primary.query("SELECT pg_is_in_recovery()") == [(False,)]
    for standby in pg_cluster.standbys:
        assert standby.query("SELECT pg_is_in_recovery()") == [(True,)]
        assert standby.is_streaming()


@pytest.mark.postgresql
def test_pg_urls_are_app_user_urls_on_each_servers_own_port(pg_cluster: PostgresCluster) -> None:
    ports = {s.port for s in pg_cluster.servers}
    assert len(ports) == 3
    for server in pg_cluster.servers:
        assert server.url() == f"postgresql+psycopg2://app:app-secret@127.0.0.1:{server.port}/app"
        assert server.query("SELECT current_user, current_database()", admin=False) == [
            ("app", "app")
        ]


@pytest.mark.postgresql
def test_pg_row_inserted_on_primary_shows_on_both_standbys_after_wait_caught_up(
    pg_cluster: PostgresCluster,
) -> None:
    table = _table("pg_repl")
    pg_cluster.primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    pg_cluster.primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
    pg_cluster.wait_caught_up()
    for standby in pg_cluster.standbys:
        assert _pg_ids(standby, table) == [1]


@pytest.mark.postgresql
def test_pg_paused_standby_misses_new_row_until_resumed_while_other_standby_gets_it(
    pg_cluster: PostgresCluster,
) -> None:
    standby1, standby2 = pg_cluster.standbys
    table = _table("pg_pause")
    pg_cluster.primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    pg_cluster.wait_caught_up()
    standby1.pause_replay()
    try:
        pg_cluster.primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
        pg_cluster.wait_caught_up()  # skips the paused standby instead of timing out
        assert _pg_ids(standby2, table) == [1]
        assert _pg_ids(standby1, table) == []
        assert standby1.query("SELECT pg_is_wal_replay_paused()") == [(True,)]
    finally:
        standby1.resume_replay()
    pg_cluster.wait_caught_up()
    assert _pg_ids(standby1, table) == [1]


@pytest.mark.postgresql
def test_pg_apply_delay_holds_a_commit_back_on_that_standby_only_then_it_arrives(
    pg_cluster: PostgresCluster,
) -> None:
    standby1, standby2 = pg_cluster.standbys
    table = _table("pg_delay")
    pg_cluster.primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    pg_cluster.wait_caught_up()
    with standby2.apply_delay(0.5):
        committed = time.monotonic()
        pg_cluster.primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
        assert _pg_ids(standby2, table) == []
        wait_until(lambda: _pg_ids(standby1, table) == [1], timeout=5)
        wait_until(lambda: _pg_ids(standby2, table) == [1], timeout=5, interval=0.02)
        assert time.monotonic() - committed >= 0.45
    assert standby2.query("SHOW recovery_min_apply_delay") == [("0",)]


@pytest.mark.postgresql
def test_pg_stopped_standby_refuses_connections_and_serves_again_after_start(
    pg_cluster: PostgresCluster,
) -> None:
    standby = pg_cluster.standbys[1]
    table = _table("pg_restart")
    pg_cluster.primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    standby.stop()
    try:
        assert not standby.is_running()
        with pytest.raises(psycopg2.OperationalError):
            standby.query("SELECT 1", admin=False)
        pg_cluster.primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
        pg_cluster.wait_caught_up()  # skips the stopped standby
    finally:
        standby.start()
    assert standby.is_running()
    assert standby.query("SELECT pg_is_in_recovery()", admin=False) == [(True,)]
    pg_cluster.wait_caught_up()  # replication resumed by itself
    assert _pg_ids(standby, table) == [1]
    wait_until(standby.is_streaming, timeout=10, message="standby2 not streaming again")


# --------------------------------------------------------------------------- MariaDB


def _maria_ids(server: MariaDBServer, table: str) -> list[int]:
    return [row[0] for row in server.query(f"SELECT id FROM {table} ORDER BY id", admin=False)]


@pytest.mark.mariadb
def test_maria_primary_and_each_replica_have_different_server_ids(
    mariadb_cluster: MariaDBCluster,
) -> None:
    assert [r.name for r in mariadb_cluster.replicas] == ["maria-replica1", "maria-replica2"]
    assert mariadb_cluster.primary.query("SELECT @@server_id") == [(1,)]
    replica_ids = [r.query("SELECT @@server_id")[0][0] for r in mariadb_cluster.replicas]
    assert replica_ids == [2, 3]


@pytest.mark.mariadb
def test_maria_replicas_are_read_only_and_primary_is_not(mariadb_cluster: MariaDBCluster) -> None:
    assert mariadb_cluster.primary.query("SELECT @@read_only", admin=False) == [(0,)]
    for replica in mariadb_cluster.replicas:
        assert replica.query("SELECT @@read_only", admin=False) == [(1,)]


@pytest.mark.mariadb
def test_maria_row_inserted_on_primary_replicates_to_replica(
    mariadb_cluster: MariaDBCluster,
) -> None:
    table = _table("maria_repl")
    primary = mariadb_cluster.primary
    primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
    mariadb_cluster.wait_caught_up()
    for replica in mariadb_cluster.replicas:
        assert _maria_ids(replica, table) == [1]


@pytest.mark.mariadb
def test_maria_app_user_cannot_insert_on_read_only_replica_but_can_see_slave_status(
    mariadb_cluster: MariaDBCluster,
) -> None:
    table = _table("maria_ro")
    primary, replica = mariadb_cluster.primary, mariadb_cluster.replicas[0]
    primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    mariadb_cluster.wait_caught_up()
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        replica.query(f"INSERT INTO {table} VALUES (1)", admin=False)
    assert excinfo.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT (--read-only)
    status = replica.query("SHOW SLAVE STATUS", admin=False)
    assert len(status) == 1


@pytest.mark.mariadb
def test_maria_paused_sql_thread_holds_back_new_row_until_resumed_while_other_replica_gets_it(
    mariadb_cluster: MariaDBCluster,
) -> None:
    table = _table("maria_pause")
    primary, (replica, other) = mariadb_cluster.primary, mariadb_cluster.replicas
    primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    mariadb_cluster.wait_caught_up()
    replica.pause_replay()
    try:
        primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
        mariadb_cluster.wait_caught_up()  # skips the paused replica instead of timing out
        # the IO thread still receives the event; only applying it is held back
        wait_until(
            lambda: (
                replica.slave_status()["Gtid_IO_Pos"]
                == primary.query("SELECT @@gtid_binlog_pos")[0][0]
            ),
            timeout=10,
            message="replica IO thread did not receive the insert",
        )
        assert _maria_ids(other, table) == [1]
        assert _maria_ids(replica, table) == []
        assert replica.slave_status()["Slave_SQL_Running"] == "No"
    finally:
        replica.resume_replay()
    mariadb_cluster.wait_caught_up()
    assert _maria_ids(replica, table) == [1]


@pytest.mark.mariadb
def test_maria_master_delay_holds_an_insert_back_on_that_replica_only_then_it_arrives(
    mariadb_cluster: MariaDBCluster,
) -> None:
    replica1, replica2 = mariadb_cluster.replicas
    table = _table("maria_delay")
    primary = mariadb_cluster.primary
    primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    mariadb_cluster.wait_caught_up()
    with replica2.apply_delay(1):
        committed = time.monotonic()
        primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
        assert _maria_ids(replica2, table) == []
        wait_until(lambda: _maria_ids(replica1, table) == [1], timeout=5)
        wait_until(lambda: _maria_ids(replica2, table) == [1], timeout=5, interval=0.05)
        assert time.monotonic() - committed >= 0.9
    assert replica2.slave_status()["SQL_Delay"] == 0


@pytest.mark.mariadb
def test_maria_killed_replica_refuses_connections_and_resumes_replication_after_start(
    mariadb_cluster: MariaDBCluster,
) -> None:
    table = _table("maria_restart")
    primary, replica = mariadb_cluster.primary, mariadb_cluster.replicas[0]
    primary.query(f"CREATE TABLE {table} (id int PRIMARY KEY)", admin=False)
    replica.stop()
    try:
        assert not replica.is_running()
        with pytest.raises(pymysql.err.OperationalError):
            replica.query("SELECT 1", admin=False)
        primary.query(f"INSERT INTO {table} VALUES (1)", admin=False)
    finally:
        replica.start()
    replica.wait_threads_running()
    mariadb_cluster.wait_caught_up()
    assert _maria_ids(replica, table) == [1]
