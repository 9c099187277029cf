"""Several databases in one session (SPEC section 7): routes, roles per database, the hook."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from servers import PostgresCluster, wait_until
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column

from multidb import ReadOnlyError, Registry, RoutingError


class MainBase(DeclarativeBase):
    pass


class OtherBase(DeclarativeBase):
    pass


class Account(MainBase):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Event(OtherBase):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    what: Mapped[str] = mapped_column(String(50))


audit_metadata = MetaData()
audit = Table("audit", audit_metadata, Column("id", Integer, primary_key=True))


def sqlite_config(tmp_path: Path) -> dict[str, Any]:
    main = tmp_path / "main.db"
    return {
        "databases": {
            "main": {
                "primary": f"sqlite:///{main}",
                "replicas": {"a": f"sqlite:///file:{main}?mode=ro&uri=true"},
            },
            "other": f"sqlite:///{tmp_path / 'other.db'}",
        }
    }


class Seen:
    """(engine name, SQL) of every statement sent, from the dialect's do_execute events."""

    def __init__(self, dbs: Registry) -> None:
        self.statements: list[tuple[str, str]] = []
        for name in dbs.engine_names:
            event.listen(dbs.engine(name), "do_execute", self._hook(name))

    def _hook(self, name: str) -> Any:
        def record(cursor: Any, statement: str, *args: Any) -> None:
            self.statements.append((name, statement))

        return record

    def engines(self) -> set[str]:
        return {name for name, _ in self.statements}


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[Registry]:
    with Registry.from_dict(sqlite_config(tmp_path)) as registry:
        MainBase.metadata.create_all(registry.engine("main"))
        OtherBase.metadata.create_all(registry.engine("other"))
        audit_metadata.create_all(registry.engine("other"))
        registry.route(MainBase, "main")
        registry.route(Event, "other")
        registry.route(audit, "other")
        yield registry


def rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return list(connection.execute(f"SELECT * FROM {table} ORDER BY id"))


def test_a_write_session_of_none_puts_each_row_in_its_own_database(
    dbs: Registry, tmp_path: Path
) -> None:
    with dbs.session(None, role="write") as s:
        s.add(Account(id=1, name="ada"))
        s.add(Event(id=1, what="signup"))
        s.execute(insert(audit).values(id=7))
    assert rows(tmp_path / "main.db", "accounts") == [(1, "ada")]
    assert rows(tmp_path / "other.db", "events") == [(1, "signup")]
    assert rows(tmp_path / "other.db", "audit") == [(7,)]


def test_a_read_session_of_none_reads_each_database_from_its_replica_read_only(
    dbs: Registry,
) -> None:
    with dbs.session(None, role="write") as s:
        s.add_all([Account(id=1, name="ada"), Event(id=1, what="signup")])
    seen = Seen(dbs)
    with dbs.session(None, role="read") as s:
        assert s.get(Account, 1) is not None
        assert s.scalars(select(Event)).one().what == "signup"
        assert s.execute(select(audit)).all() == []
        with pytest.raises(ReadOnlyError):
            s.execute(insert(audit).values(id=8))
    assert seen.engines() == {"main.a", "other.primary"}
    assert all(not sql.startswith("INSERT") for _, sql in seen.statements)


def test_an_auto_session_of_none_sticks_to_a_primary_per_database(dbs: Registry) -> None:
    with dbs.session(None, role="write") as s:
        s.add_all([Account(id=1, name="ada"), Event(id=1, what="signup")])
    seen = Seen(dbs)
    with dbs.session(None, role="auto") as s:
        s.get(Account, 1)
        s.add(Event(id=2, what="login"))
        s.flush()  # "other" is now on its primary...
        s.scalars(select(Event)).all()
        s.scalars(select(Account).where(Account.id == 1)).all()  # ...and "main" still reads a
    assert [name for name, _ in seen.statements] == [
        "main.a",
        "other.primary",
        "other.primary",
        "main.a",
    ]


def test_an_unrouted_statement_raises_naming_the_routes_unless_it_names_a_database(
    dbs: Registry,
) -> None:
    with dbs.session(None, role="read") as s:
        with pytest.raises(RoutingError, match=r"no route.*Event -> other.*table audit -> other"):
            s.execute(text("SELECT 1"))
        assert s.execute(text("SELECT 1"), bind_arguments={"database": "main"}).scalar() == 1
        with pytest.raises(RoutingError, match="nowhere"):
            s.execute(text("SELECT 1"), bind_arguments={"database": "nowhere"})


def test_routes_by_metadata_and_an_unknown_database_is_refused(tmp_path: Path) -> None:
    with Registry.from_dict(sqlite_config(tmp_path)) as registry:
        registry.route(audit_metadata, "other")
        audit_metadata.create_all(registry.engine("other"))
        with registry.session(None, role="write") as s:
            s.execute(insert(audit).values(id=1))
        assert rows(tmp_path / "other.db", "audit") == [(1,)]
        with pytest.raises(LookupError, match="nowhere"):
            registry.route(Account, "nowhere")


def test_a_router_hook_replaces_the_table_of_routes(dbs: Registry, tmp_path: Path) -> None:
    asked: list[tuple[Any, Any]] = []

    class EverythingToOther:
        def database_for(self, mapper: Mapper[Any] | None, clause: Any) -> str | None:
            asked.append((mapper, clause))
            return "other"

    dbs.use_router(EverythingToOther())
    with dbs.session(None, role="write") as s:
        assert s.execute(text("SELECT count(*) FROM events")).scalar() == 0
        s.add(Event(id=5, what="hooked"))
    assert rows(tmp_path / "other.db", "events") == [(5, "hooked")]
    assert asked


# -- real PostgreSQL: two databases on one cluster, each with the standbys as replicas ----


@pytest.mark.postgresql
def test_two_postgresql_databases_in_one_session_rows_land_apart_reads_on_standbys(
    pg_cluster: PostgresCluster,
) -> None:
    second = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.primary.query(f"CREATE DATABASE {second} OWNER app")
    pg_cluster.wait_caught_up()

    def url(server: Any, database: str) -> str:
        return str(server.url()).rsplit("/", 1)[0] + "/" + database

    config = {
        "databases": {
            name: {
                "primary": url(pg_cluster.primary, name),
                "replicas": {s.name.replace("-", "_"): url(s, name) for s in pg_cluster.standbys},
            }
            for name in ("app", second)
        }
    }
    try:
        with Registry.from_dict(config) as dbs:
            MainBase.metadata.create_all(dbs.engine("app"))
            OtherBase.metadata.create_all(dbs.engine(second))
            dbs.route(MainBase, "app")
            dbs.route(OtherBase, second)
            marker = uuid.uuid4().int % 2**31
            with dbs.session(None, role="write") as s:
                s.add(Account(id=marker, name="ada"))
                s.add(Event(id=marker, what="signup"))
            # Each row is in its own database, as the primary itself says.
            for database, table in (("app", "accounts"), (second, "events")):
                found = pg_cluster.primary.query(
                    f"SELECT count(*) FROM {table} WHERE id = %s", (marker,), dbname=database
                )
                assert found == [(1,)]
            pg_cluster.wait_caught_up()
            with dbs.session(None, role="read") as s:
                assert s.get(Account, marker) is not None
                assert s.get(Event, marker) is not None
                for database in ("app", second):
                    recovering = s.execute(
                        text("SELECT pg_is_in_recovery()"), bind_arguments={"database": database}
                    ).scalar()
                    assert recovering is True, database
            MainBase.metadata.drop_all(dbs.engine("app"))
    finally:

        def dropped() -> bool:
            try:
                pg_cluster.primary.query(f"DROP DATABASE IF EXISTS {second} WITH (FORCE)")
            except psycopg2.Error:
                return False
            return True

        wait_until(dropped, timeout=10)
