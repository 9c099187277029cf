"""Drop-in use: the application's own session class (SQLModel's), ``session.bind``, counters.

The FastAPI/SQLModel pattern: a ``sqlmodel.Session`` subclass given as
``session_class``, a dependency that yields sessions from a multidb factory,
``session.exec(select(...))`` and ``session.bind.dialect.name``; on SQLite and
on PostgreSQL with its standbys (``pg_is_in_recovery()`` says where reads ran).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlmodel
from servers import PostgresCluster
from sqlalchemy import text
from sqlmodel import Field, SQLModel, select

import multidb
from multidb import Registry


class Hero(SQLModel, table=True):
    __tablename__ = "dropin_hero"

    id: int | None = Field(default=None, primary_key=True)
    name: str


class AppSession(sqlmodel.Session):
    """What an application's own session class looks like."""

    def heroes(self) -> list[Hero]:
        return list(self.exec(select(Hero).order_by(Hero.name)).all())


def sqlite_config(tmp_path: Path) -> dict[str, Any]:
    db = tmp_path / "app.db"
    return {
        "databases": {
            "main": {
                "primary": f"sqlite:///{db}",
                "replicas": {"a": f"sqlite:///file:{db}?mode=ro&uri=true"},
            }
        }
    }


def pg_config(cluster: PostgresCluster) -> dict[str, Any]:
    return {
        "databases": {
            "main": {
                "primary": cluster.primary.url(),
                "replicas": {s.name.replace("-", "_"): s.url() for s in cluster.standbys},
            }
        }
    }


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        config = sqlite_config(tmp_path)
    else:
        cluster = request.getfixturevalue("pg_cluster")
        config = pg_config(cluster)
    with Registry.from_dict(config, session_class=AppSession) as registry:
        engine = registry.engine("main")
        table = SQLModel.metadata.tables["dropin_hero"]
        SQLModel.metadata.drop_all(engine, tables=[table])
        SQLModel.metadata.create_all(engine, tables=[table])
        if request.param == "postgresql":
            cluster.wait_caught_up()
        yield registry


def test_every_session_is_an_instance_of_the_session_class(dbs: Registry) -> None:
    names = [("main", "write"), ("main", "read"), ("main", "auto"), ("main.primary", None)]
    names += [("main.primary", "read"), (dbs.engine_names[1], None)]
    for name, role in names:
        with dbs.session(name, role=role) as s:  # type: ignore[arg-type]
            assert isinstance(s, AppSession), (name, role, type(s).__mro__)
            assert s.heroes() == []
    with dbs.session("main", role="read") as s:
        assert isinstance(s, multidb.ReadSession)
    with dbs.session("main", role="auto") as s:
        assert isinstance(s, multidb.AutoSession)


def test_fastapi_sqlmodel_dependency_pattern_writes_and_reads(dbs: Registry) -> None:
    maker = dbs.sessionmaker("main", role="auto")

    def get_session() -> Generator[AppSession, None, None]:  # the template's SessionDep dependency
        with maker() as session:
            assert isinstance(session, AppSession)
            yield session

    for dependency in (get_session(),):
        session = next(dependency)
        dialect = session.bind.dialect.name  # type: ignore[union-attr]
        assert dialect in ("sqlite", "postgresql")
        session.add(Hero(name="ada"))
        session.commit()
        hero = session.exec(select(Hero).where(Hero.name == "ada")).one()
        assert hero.id is not None
        dependency.close()
    with dbs.session("main", role="read") as s:
        assert s.bind is not None and s.bind.dialect.name == dialect
        if dialect == "postgresql":
            assert s.execute(text("SELECT pg_is_in_recovery()")).scalar() is True
    with dbs.session("main", role="write") as s:
        assert [h.name for h in s.exec(select(Hero)).all()] == ["ada"]  # type: ignore[attr-defined]


def test_routed_sessions_bind_is_the_primary_engine_before_any_statement(
    dbs: Registry,
) -> None:
    for role in ("read", "auto", "write"):
        with dbs.session("main", role=role) as s:
            assert s.bind is dbs.engine("main.primary")


def test_session_class_must_be_a_session_subclass() -> None:
    with pytest.raises(TypeError, match="session_class must be a subclass"):
        Registry.from_dict({"databases": {"a": "sqlite://"}}, session_class=dict)  # type: ignore[arg-type]


def test_stats_count_write_and_pinned_sessions(tmp_path: Path) -> None:
    with Registry.from_dict(sqlite_config(tmp_path)) as dbs:
        for _ in range(3):
            with dbs.session("main", role="write") as s:
                s.execute(text("SELECT 1"))
        with dbs.session("main.primary", role="read") as s:
            s.execute(text("SELECT 1"))
        with dbs.session("main.a") as s:
            s.execute(text("SELECT 1"))
        with dbs.session("main", role="read") as s:
            s.execute(text("SELECT 1"))
        stats = dbs.stats()
    assert stats["main.primary"].sessions == 4
    assert stats["main.a"].sessions == 2
