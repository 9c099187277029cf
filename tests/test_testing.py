"""Test helpers (SPEC 8): dbs.testing.record(), .lag() and .mirror(), on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import PostgresCluster
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select, text

from multidb import ReadOnlyError, Registry, UnknownNameError

metadata = MetaData()
notes = Table(
    "testing_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(64)),
)


def sqlite_config(tmp_path: Path, **routing: Any) -> dict[str, Any]:
    main = tmp_path / "main.db"
    return {
        "databases": {
            "main": {
                "primary": f"sqlite:///{main}",
                "replicas": {"a": f"sqlite:///file:{main}?mode=ro&uri=true"},
                "routing": routing,
            },
            "local": f"sqlite:///{tmp_path / 'local.db'}",
        }
    }


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[Registry]:
    with Registry.from_dict(sqlite_config(tmp_path, max_lag_seconds=5)) as registry:
        metadata.create_all(registry.engine("main"))
        metadata.create_all(registry.engine("local"))
        yield registry


def bodies(dbs: Registry, database: str = "main") -> list[str]:
    with dbs.session(database, role="read") as s:
        return list(s.scalars(select(notes.c.body).order_by(notes.c.id)))


# -- record ---------------------------------------------------------------------------------


def test_record_lists_engine_role_and_reason_of_every_statement(dbs: Registry) -> None:
    with dbs.testing.record() as statements:
        with dbs.session("main", role="write") as s:
            s.execute(insert(notes).values(body="a"))
        with dbs.session("main", role="read") as s:
            s.execute(select(notes)).all()
        with dbs.session("main", role="auto") as s:
            s.execute(select(notes)).all()
            s.execute(insert(notes).values(body="b"))

    seen = [(r.engine, r.role, r.reason, r.statement.split()[0]) for r in statements]
    assert seen == [
        ("main.primary", "write", "write: the primary", "INSERT"),
        ("main.a", "read", "SmoothWeightedRoundRobin among main.a", "SELECT"),
        ("main.a", "read", "SmoothWeightedRoundRobin among main.a", "SELECT"),
        ("main.primary", "write", "auto: first statement that is not a read", "INSERT"),
    ]
    assert statements.engines == ["main.primary", "main.a", "main.a", "main.primary"]


def test_record_installs_nothing_outside_its_block(dbs: Registry) -> None:
    with dbs.testing.record():
        pass
    with dbs.testing.record() as statements, dbs.testing.record() as inner:
        bodies(dbs)
    bodies(dbs)
    assert len(statements) == len(inner) == 1
    for name in dbs.engine_names:
        assert not dbs.engine(name).dispatch.before_cursor_execute


def test_record_leaves_connections_without_event_dispatch_unless_the_app_listens(
    dbs: Registry,
) -> None:
    """Pins Engine._has_events, which SQLAlchemy sets on listen and never clears on remove:
    multidb.observe clears it when no ConnectionEvents listener is left, not otherwise."""
    seen: list[str] = []

    def app_listener(conn: Any, *args: Any) -> None:
        seen.append("begin")

    primary, replica = dbs.engine("main.primary"), dbs.engine("main.a")
    event.listen(primary, "begin", app_listener)
    with dbs.testing.record():
        bodies(dbs)
    assert replica._has_events is False
    assert primary._has_events is True
    with dbs.session("main", role="write") as s:
        s.execute(insert(notes).values(body="x"))
    assert seen, "the application's own listener stopped firing"


# -- lag ------------------------------------------------------------------------------------


def test_lag_leaves_a_replica_out_while_it_lags_and_restores_it_after(dbs: Registry) -> None:
    with dbs.testing.record() as statements:
        bodies(dbs)
        with dbs.testing.lag("main.a", 30):
            bodies(dbs)
        with dbs.testing.lag("main.a", None):
            bodies(dbs)
        bodies(dbs)
    assert [(r.engine, r.reason) for r in statements if r.statement.startswith("SELECT")] == [
        ("main.a", "SmoothWeightedRoundRobin among main.a"),
        ("main.primary", "fallback: main.a lag up to 30.0s (max 5.0s)"),
        ("main.primary", "fallback: main.a lag unknown (max 5.0s)"),
        ("main.a", "SmoothWeightedRoundRobin among main.a"),
    ]


def test_lag_names_only_replicas(dbs: Registry) -> None:
    with (
        pytest.raises(UnknownNameError, match=r"unknown replica 'main.b'.*known: main.a"),
        dbs.testing.lag("main.b", 3),
    ):
        pass


# -- mirror ---------------------------------------------------------------------------------


def test_mirror_shows_a_tests_rows_to_read_sessions_and_rolls_them_back(
    dbs: Registry, tmp_path: Path
) -> None:
    with dbs.session("main", role="write") as s:
        s.execute(insert(notes).values(id=1, body="kept"))
    with dbs.testing.mirror():
        with dbs.session("main", role="write") as s:
            s.execute(insert(notes).values(id=2, body="test's"))
        assert bodies(dbs) == ["kept", "test's"]
        with dbs.session("main", role="auto") as s:
            assert len(s.execute(select(notes)).all()) == 2
            s.execute(insert(notes).values(id=3, body="auto"))
        with dbs.session("local", role="write") as s:
            s.execute(insert(notes).values(id=1, body="local"))
        assert bodies(dbs) == ["kept", "test's", "auto"]
        assert bodies(dbs, "local") == ["local"]
    assert bodies(dbs) == ["kept"]
    assert bodies(dbs, "local") == []
    with sqlite3.connect(tmp_path / "main.db") as connection:
        assert connection.execute("SELECT body FROM testing_notes").fetchall() == [("kept",)]


def test_mirror_keeps_read_sessions_read_only_and_later_writes_working(dbs: Registry) -> None:
    with dbs.testing.mirror():
        with dbs.session("main", role="read") as s:
            with pytest.raises(ReadOnlyError):
                s.execute(insert(notes).values(body="no"))
            with pytest.raises(ReadOnlyError):
                s.connection().exec_driver_sql("INSERT INTO testing_notes (body) VALUES ('no')")
        # Reads on a primary (no replicas) are guarded the same.
        with dbs.session("local", role="read") as s, pytest.raises(ReadOnlyError):
            s.execute(text("DELETE FROM testing_notes"))
        with dbs.session("main", role="write") as s:
            s.execute(insert(notes).values(body="yes"))
        with dbs.session("local", role="write") as s:
            s.execute(insert(notes).values(body="yes"))
        assert bodies(dbs) == ["yes"]
        assert bodies(dbs, "local") == ["yes"]


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def pg(pg_cluster: PostgresCluster) -> Iterator[Registry]:
    config = {
        "databases": {
            "db": {
                "primary": pg_cluster.primary.url(),
                "replicas": {s.name.replace("-", "_"): s.url() for s in pg_cluster.standbys},
            }
        }
    }
    with Registry.from_dict(config) as registry:
        metadata.create_all(registry.engine("db"))
        pg_cluster.wait_caught_up()
        yield registry


@pytest.mark.postgresql
def test_record_on_postgresql_names_the_standby_the_server_says_it_read_from(
    pg: Registry, pg_cluster: PostgresCluster
) -> None:
    ports = {s.port: f"db.{s.name.replace('-', '_')}" for s in pg_cluster.servers}
    with pg.testing.record() as statements, pg.session("db", role="read") as s:
        in_recovery, port = s.execute(text("SELECT pg_is_in_recovery(), inet_server_port()")).one()
    assert in_recovery is True
    (routed,) = statements
    assert (routed.engine, routed.role) == (ports[port], "read")


@pytest.mark.postgresql
def test_mirror_on_postgresql_serves_reads_from_the_tests_transaction_then_rolls_back(
    pg: Registry, pg_cluster: PostgresCluster
) -> None:
    marker = uuid.uuid4().hex[:16]
    with pg.testing.mirror():
        with pg.session("db", role="write") as s:
            s.execute(insert(notes).values(body=marker))
        with pg.session("db", role="read") as s:
            assert s.scalars(select(notes.c.body).where(notes.c.body == marker)).all() == [marker]
            with pytest.raises(ReadOnlyError):
                s.execute(text("UPDATE testing_notes SET body = 'x'"))
        with pg.session("db", role="write") as s:  # still writable after a read session
            s.execute(insert(notes).values(body=marker))
        # Not committed: no other connection sees it, on the primary or a standby.
        assert pg_cluster.primary.query(
            "SELECT count(*) FROM testing_notes WHERE body = %s", (marker,), admin=False
        ) == [(0,)]
    pg_cluster.wait_caught_up()
    for server in pg_cluster.servers:
        sql = "SELECT count(*) FROM testing_notes WHERE body = %s"
        assert server.query(sql, (marker,), admin=False) == [(0,)]


def test_mirror_serves_a_session_of_several_databases_and_rolls_back_both(
    dbs: Registry,
) -> None:
    other = Table("other_notes", MetaData(), Column("id", Integer, primary_key=True))
    other.metadata.create_all(dbs.engine("local"))
    dbs.route(notes, "main")
    dbs.route(other, "local")
    with dbs.testing.mirror():
        with dbs.session(None, role="write") as s:
            s.execute(insert(notes).values(id=1, body="main"))
            s.execute(insert(other).values(id=1))
        with dbs.testing.record() as statements, dbs.session(None, role="read") as s:
            assert s.scalars(select(notes.c.body)).all() == ["main"]
            assert s.scalars(select(other.c.id)).all() == [1]
        assert [(r.engine, r.role) for r in statements] == [
            ("main.a", "read"),
            ("local.primary", "read"),
        ]
    with dbs.session(None, role="read") as s:
        assert s.scalars(select(notes.c.body)).all() == []
        assert s.scalars(select(other.c.id)).all() == []
