"""Roles and routing on SQLite: which engine runs each statement, observed with engine events.

The replicas are the primary's file opened read-only (``mode=ro``), so a write
that reached one would also fail in SQLite itself.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import wait_until
from sqlalchemy import ForeignKey, String, delete, event, func, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, scoped_session
from sqlalchemy.sql.schema import Table

import multidb
from multidb import NoReplicaAvailableError, ReadOnlyError, Registry, RoutingError


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    posts: Mapped[list[Post]] = relationship(back_populates="user")


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    user: Mapped[User] = relationship(back_populates="posts")


class Seen:
    """Records (engine name, SQL) for every statement an engine of a registry hands its driver.

    Wraps the dialect's ``do_execute`` methods around multidb's own write
    guard (which wraps them too, see multidb.hooks): a statement the guard
    refuses (ReadOnlyError) is not recorded, one that reached the driver is,
    whether the server took it or not.
    """

    def __init__(self, registry: Registry) -> None:
        self.statements: list[tuple[str, str]] = []
        for name in registry.engine_names:
            dialect = registry.engine(name).dialect
            for method in ("do_execute", "do_executemany", "do_execute_no_params"):
                setattr(dialect, method, self._wrap(name, getattr(dialect, method)))

    def _wrap(self, name: str, inner: Any) -> Any:
        def call(cursor: Any, statement: str, *args: Any) -> None:
            try:
                inner(cursor, statement, *args)
            except ReadOnlyError:
                raise
            except Exception:
                self.statements.append((name, " ".join(statement.split())))
                raise
            self.statements.append((name, " ".join(statement.split())))

        return call

    def engines(self) -> list[str]:
        return [name for name, _ in self.statements]

    def clear(self) -> None:
        self.statements.clear()


def sqlite_config(tmp_path: Path, **routing: Any) -> dict[str, Any]:
    db = tmp_path / "main.db"
    replica = f"sqlite:///file:{db}?mode=ro&uri=true"
    return {
        "databases": {
            "main": {
                "primary": f"sqlite:///{db}",
                "replicas": {"a": replica, "b": {"url": replica, "weight": 3}},
                "routing": routing,
            },
            "solo": f"sqlite:///{tmp_path / 'solo.db'}",
        }
    }


def build(config: dict[str, Any]) -> Registry:
    registry = Registry.from_dict(config)
    for database in ("main", "solo"):
        if database in registry:
            Base.metadata.create_all(registry.engine(database))
            with registry.session(database, role="write") as s:
                s.add(User(id=1, name="ada"))
    return registry


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[Registry]:
    with build(sqlite_config(tmp_path)) as registry:
        yield registry


@pytest.fixture
def seen(dbs: Registry) -> Seen:
    return Seen(dbs)


# -- roles --------------------------------------------------------------------


def test_write_session_runs_on_the_primary(dbs: Registry, seen: Seen) -> None:
    with dbs.session("main", role="write") as s:
        s.add(User(name="bob"))
        assert s.scalar(select(func.count(User.id))) == 2
    assert set(seen.engines()) == {"main.primary"}


def test_default_role_is_write(dbs: Registry, seen: Seen) -> None:
    with dbs.session("main") as s:
        s.scalar(select(User.name))
    assert seen.engines() == ["main.primary"]


def test_default_role_comes_from_routing(tmp_path: Path) -> None:
    with build(sqlite_config(tmp_path, default_role="read")) as registry:
        seen = Seen(registry)
        with registry.session("main") as s:
            s.scalar(select(User.name))
            assert isinstance(s, multidb.ReadSession)
        assert seen.engines()[-1] in ("main.a", "main.b")


def test_read_session_stays_on_one_replica(dbs: Registry, seen: Seen) -> None:
    with dbs.session("main", role="read") as s:
        for _ in range(5):
            assert s.scalar(select(User.name)) == "ada"
    assert len(set(seen.engines())) == 1
    assert seen.engines()[0] in ("main.a", "main.b")


def test_read_sessions_follow_smooth_weighted_round_robin(dbs: Registry, seen: Seen) -> None:
    for _ in range(8):
        with dbs.session("main", role="read") as s:
            s.scalar(select(User.name))
    # weights a=1, b=3: nginx's smooth order is b a b b, twice.
    assert seen.engines() == ["main.b", "main.a", "main.b", "main.b"] * 2


def test_random_policy_honours_weight(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path, policy="random")
    with build(config) as registry:
        for _ in range(400):
            with registry.session("main", role="read") as s:
                s.scalar(select(User.name))
        stats = registry.stats()
    share_b = stats["main.b"].sessions / 400
    assert 0.65 < share_b < 0.85


def test_weight_zero_takes_a_replica_out_of_rotation(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    config["databases"]["main"]["replicas"]["a"] = {
        "url": config["databases"]["main"]["replicas"]["a"],
        "weight": 0,
    }
    with build(config) as registry:
        seen = Seen(registry)
        for _ in range(10):
            with registry.session("main", role="read") as s:
                s.scalar(select(User.name))
        assert set(seen.engines()) == {"main.b"}


# -- read-only ------------------------------------------------------------------


def test_read_session_refuses_a_flush_before_any_sql(dbs: Registry, seen: Seen) -> None:
    with (
        pytest.raises(ReadOnlyError, match="a read session cannot flush changes"),
        dbs.session("main", role="read") as s,
    ):
        s.add(User(name="bob"))
    assert seen.statements == []
    with dbs.session("main") as s:
        assert s.scalar(select(func.count(User.id))) == 1


def test_read_session_refuses_a_changed_object(dbs: Registry, seen: Seen) -> None:
    with pytest.raises(ReadOnlyError), dbs.session("main", role="read") as s:
        user = s.get(User, 1)
        assert user is not None
        user.name = "eve"
        s.flush()
    assert all(sql.startswith(("SELECT", "PRAGMA")) for _, sql in seen.statements)


@pytest.mark.parametrize(
    "statement",
    [
        insert(User).values(name="x"),
        update(User).values(name="x"),
        delete(User),
        select(User).with_for_update(),
        text("INSERT INTO users (name) VALUES ('x')"),
        text("  -- a comment\n /* another */ update users set name = 'x'"),
        text("DROP TABLE users"),
        Table("t", Base.metadata.__class__(), extend_existing=True).insert(),
    ],
    ids=["insert", "update", "delete", "for-update", "text-insert", "text-comment", "ddl", "table"],
)
def test_read_session_refuses_write_statements_before_any_sql(
    dbs: Registry, seen: Seen, statement: Any
) -> None:
    with (
        pytest.raises(ReadOnlyError, match="nothing was sent"),
        dbs.session("main", role="read") as s,
    ):
        s.execute(statement)
    assert seen.statements == []


def test_write_option_is_refused_in_a_read_session(dbs: Registry, seen: Seen) -> None:
    with pytest.raises(ReadOnlyError), dbs.session("main", role="read") as s:
        s.execute(select(User.name).execution_options(multidb_role="write"))
    assert seen.statements == []


def test_read_session_refuses_writes_on_its_raw_connection(dbs: Registry, seen: Seen) -> None:
    with pytest.raises(ReadOnlyError), dbs.session("main.primary", role="read") as s:
        s.connection().exec_driver_sql("INSERT INTO users (name) VALUES ('x')")
    assert not any("INSERT" in sql for _, sql in seen.statements)


def test_read_session_on_the_primary_is_in_sqlite_query_only_mode(dbs: Registry) -> None:
    with dbs.session("main.primary", role="read") as s:
        assert s.execute(text("PRAGMA query_only")).scalar() == 1
        raw = s.connection().connection.dbapi_connection
        assert raw is not None
        with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
            raw.execute("INSERT INTO users (name) VALUES ('x')")


def test_read_only_mode_does_not_leak_back_into_the_pool(dbs: Registry) -> None:
    with dbs.session("main.primary", role="read") as s:
        s.scalar(select(User.name))
        raw = s.connection().connection.dbapi_connection
    with dbs.session("main.primary") as s:
        assert s.connection().connection.dbapi_connection is raw  # the same pooled connection
        assert s.execute(text("PRAGMA query_only")).scalar() == 0
        s.add(User(name="bob"))


def test_replica_connections_are_read_only(dbs: Registry) -> None:
    with dbs.session("main.a") as s:
        assert s.execute(text("PRAGMA query_only")).scalar() == 1


def test_reads_that_fall_back_to_the_primary_are_read_only(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    config["databases"]["main"]["replicas"] = {
        "a": f"sqlite:///file:{tmp_path}/none.db?mode=ro&uri=true"
    }
    with build(config) as registry:
        with registry.session("main", role="read") as s:
            assert isinstance(s, multidb.ReadSession)
            assert s.execute(text("PRAGMA query_only")).scalar() == 1
            assert s.reader == "main.primary"
        with registry.session("main") as s:
            assert s.execute(text("PRAGMA query_only")).scalar() == 0


def test_a_database_without_replicas_reads_read_only_from_its_primary(dbs: Registry) -> None:
    with dbs.session("solo", role="read") as s:
        assert isinstance(s, multidb.ReadSession)
        assert s.scalar(select(User.name)) == "ada"
        assert s.reader == "solo.primary"
        assert s.execute(text("PRAGMA query_only")).scalar() == 1


# -- auto: the rules of AutoSession.get_bind, in their order ---------------------


def test_auto_rule1_after_a_write_everything_stays_on_the_primary(
    dbs: Registry, seen: Seen
) -> None:
    with dbs.session("main", role="auto") as s:
        s.execute(update(User).values(name="eve"))
        seen.clear()
        assert s.scalar(select(User.name)) == "eve"  # reads its own write
        s.commit()
        assert s.scalar(select(User.name)) == "eve"
    assert set(seen.engines()) == {"main.primary"}


def test_auto_rule1_attribute_refresh_after_commit_goes_to_the_primary(
    dbs: Registry, seen: Seen
) -> None:
    with dbs.session("main", role="auto") as s:
        user = s.get(User, 1)
        assert user is not None
        user.name = "eve"
        s.commit()
        seen.clear()
        assert user.name == "eve"  # expired on commit: refreshed
        assert seen.engines() == ["main.primary"]


def test_auto_rule1_sticky_ends_when_the_session_closes(dbs: Registry, seen: Seen) -> None:
    maker = dbs.sessionmaker("main", role="auto")
    s = maker()
    s.execute(update(User).values(name="eve"))
    s.commit()
    s.close()
    seen.clear()
    s.scalar(select(User.name))
    s.close()
    assert seen.engines()[0] in ("main.a", "main.b")


def test_auto_rule2_execution_option_overrides(dbs: Registry, seen: Seen) -> None:
    with dbs.session("main", role="auto") as s:
        s.execute(text("PRAGMA user_version").execution_options(multidb_role="read"))
        assert seen.engines()[-1] in ("main.a", "main.b")
        s.execute(select(User.name), execution_options={"multidb_role": "write"})
        assert seen.engines()[-1] == "main.primary"


def test_auto_rule3_a_flush_goes_to_the_primary(dbs: Registry, seen: Seen) -> None:
    with dbs.session("main", role="auto") as s:
        s.add(User(name="bob"))
        s.flush()
        assert seen.engines() == ["main.primary"]


def test_auto_rule4_selects_go_to_one_replica(dbs: Registry, seen: Seen) -> None:
    with dbs.session("main", role="auto") as s:
        s.scalar(select(User.name))
        s.execute(text("/* c */ select 1"))
        user = s.get(User, 1)
        assert user is not None
        assert user.posts == []  # a lazy load
    assert len(set(seen.engines())) == 1
    assert seen.engines()[0] in ("main.a", "main.b")


def test_auto_rule4_without_replicas_reads_go_to_the_primary(dbs: Registry, seen: Seen) -> None:
    with dbs.session("solo", role="auto") as s:
        s.scalar(select(User.name))
        s.add(User(name="bob"))
    assert set(seen.engines()) == {"solo.primary"}


@pytest.mark.parametrize(
    "statement",
    [select(User.name).with_for_update(), text("PRAGMA user_version")],
    ids=["for-update", "not-a-select"],
)
def test_auto_rule5_everything_else_goes_to_the_primary(
    dbs: Registry, seen: Seen, statement: Any
) -> None:
    with dbs.session("main", role="auto") as s:
        s.execute(statement)
    assert seen.engines()[0] == "main.primary"


@pytest.fixture
def nextval(dbs: Registry) -> list[str]:
    """A ``nextval(name)`` SQL function on every connection of database main (SQLite has none):
    the guard refuses it on a read-only connection, as it would PostgreSQL's. Returns its calls."""
    calls: list[str] = []

    def _next(seq: str) -> int:
        calls.append(seq)
        return 7

    def _define(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.create_function("nextval", 1, _next)

    for name in ("main.primary", "main.a", "main.b"):
        engine = dbs.engine(name)
        engine.dispose()  # connections made from now on get the function
        event.listen(engine, "connect", _define)
    return calls


def test_auto_rule5_a_select_the_replica_refuses_goes_to_the_primary(
    dbs: Registry, seen: Seen, nextval: list[str]
) -> None:
    with dbs.session("main", role="auto") as s:
        assert s.scalar(select(User.name)) == "ada"
        assert s.scalar(select(func.nextval("ids"))) == 7
        assert isinstance(s, multidb.AutoSession) and s.on_primary
        s.scalar(select(User.name))
    replica = seen.engines()[0]
    assert replica in ("main.a", "main.b")
    assert seen.engines() == [replica, "main.primary", "main.primary"]
    assert nextval == ["ids"]  # run once, on the primary


def test_a_select_the_replica_refuses_is_not_moved_when_it_was_sent_there(
    dbs: Registry, seen: Seen, nextval: list[str]
) -> None:
    refuse = select(func.nextval("ids"))
    with dbs.session("main", role="auto") as s:
        with pytest.raises(ReadOnlyError, match="nextval"):
            s.execute(refuse.execution_options(multidb_role="read"))
        assert isinstance(s, multidb.AutoSession) and not s.on_primary
    with pytest.raises(ReadOnlyError, match="nextval"), dbs.session("main", role="read") as s:
        s.execute(refuse)
    assert nextval == []
    assert "main.primary" not in seen.engines()


# -- engine names ---------------------------------------------------------------


def test_an_engine_name_pins_the_session(dbs: Registry, seen: Seen) -> None:
    with dbs.session("main.a") as s:
        s.scalar(select(User.name))
        assert isinstance(s, multidb.ReadSession)
    with dbs.session("main.primary") as s:
        s.scalar(select(User.name))
    assert seen.engines() == ["main.a", "main.primary"]


def test_write_role_on_a_replica_is_a_routing_error(dbs: Registry) -> None:
    with pytest.raises(RoutingError, match=r"main\.a is a replica"):
        dbs.session("main.a", role="write")


def test_unknown_role_raises_before_the_block(dbs: Registry) -> None:
    with pytest.raises(RoutingError, match="unknown role 'reed'"):
        dbs.session("main", role="reed")  # type: ignore[arg-type]


def test_unknown_name_suggests_the_closest(dbs: Registry) -> None:
    with pytest.raises(multidb.UnknownNameError) as info:
        dbs.session("mian")
    assert str(info.value) == (
        "unknown database or engine 'mian'; did you mean 'main'? "
        "(known: main, solo, main.primary, main.a, main.b, solo.primary)"
    )
    assert isinstance(info.value, LookupError)


# -- failover ---------------------------------------------------------------------


def dead_replica_config(tmp_path: Path, **routing: Any) -> dict[str, Any]:
    config = sqlite_config(tmp_path, **routing)
    config["databases"]["main"]["replicas"]["a"] = {
        "url": f"sqlite:///file:{tmp_path}/missing.db?mode=ro&uri=true",
        "weight": 10,
    }
    return config


def test_dead_replica_costs_no_failed_read(tmp_path: Path) -> None:
    with build(dead_replica_config(tmp_path, cooldown_seconds=60)) as registry:
        seen = Seen(registry)
        for _ in range(5):
            with registry.session("main", role="read") as s:
                assert s.scalar(select(User.name)) == "ada"
        stats = registry.stats()
    assert set(seen.engines()) == {"main.b"}
    assert stats["main.a"].error_ejections == 1  # left out after its first failure


def test_dead_replica_comes_back_once_its_probe_gets_an_answer(tmp_path: Path) -> None:
    config = dead_replica_config(tmp_path, cooldown_seconds=0, check_interval_seconds=0.05)
    with build(config) as registry:
        seen = Seen(registry)
        with registry.session("main", role="read") as s:
            s.scalar(select(User.name))
        assert seen.engines() == ["main.b"]
        assert not registry.stats()["main.a"].in_rotation
        sqlite3.connect(tmp_path / "missing.db").close()  # the replica's file appears
        wait_until(lambda: registry.stats()["main.a"].in_rotation, timeout=5)
        with registry.session("main", role="read") as s:
            s.scalar(text("SELECT 1"))
        assert seen.engines()[-1] == "main.a"


def test_all_replicas_dead_falls_back_to_the_primary(tmp_path: Path) -> None:
    config = dead_replica_config(tmp_path)
    config["databases"]["main"]["replicas"]["b"] = config["databases"]["main"]["replicas"]["a"]
    with build(config) as registry:
        seen = Seen(registry)
        with registry.session("main", role="read") as s:
            assert s.scalar(select(User.name)) == "ada"
            assert s.execute(text("PRAGMA query_only")).scalar() == 1  # set on the driver
        assert seen.engines() == ["main.primary", "main.primary"]  # the read, the PRAGMA
        assert registry.stats()["main.primary"].fallbacks == 1


def test_no_fallback_raises_no_replica_available(tmp_path: Path) -> None:
    config = dead_replica_config(tmp_path, fallback_to_primary=False)
    config["databases"]["main"]["replicas"]["b"] = config["databases"]["main"]["replicas"]["a"]
    with build(config) as registry:
        seen = Seen(registry)
        with (
            pytest.raises(NoReplicaAvailableError, match="fallback_to_primary is false"),
            registry.session("main", role="read") as s,
        ):
            s.scalar(select(User.name))
        assert seen.statements == []


def test_auto_session_survives_a_dead_replica(tmp_path: Path) -> None:
    with (
        build(dead_replica_config(tmp_path)) as registry,
        registry.session("main", role="auto") as s,
    ):
        assert isinstance(s, multidb.AutoSession)
        assert s.scalar(select(User.name)) == "ada"
        assert s.reader == "main.b"


def test_a_failure_after_the_first_read_is_not_retried(dbs: Registry) -> None:
    with dbs.session("main", role="read") as s:
        s.scalar(select(User.name))
        with pytest.raises(Exception, match="no such table"):
            s.execute(text("SELECT * FROM nowhere"))
    assert dbs.stats()["main.a"].error_ejections + dbs.stats()["main.b"].error_ejections == 0


# -- the session scope and factories ------------------------------------------------


def test_session_rolls_back_and_reraises_on_error(dbs: Registry) -> None:
    with pytest.raises(KeyError), dbs.session("main") as s:
        s.add(User(name="bob"))
        s.flush()
        raise KeyError("boom")
    with dbs.session("main") as s:
        assert s.scalar(select(func.count(User.id))) == 1


def test_session_commits_at_the_end_of_the_block(dbs: Registry) -> None:
    with dbs.session("main") as s:
        s.add(User(name="bob"))
    with dbs.session("main", role="read") as s:
        assert s.scalar(select(func.count(User.id))) == 2


def _commits(registry: Registry) -> list[str]:
    """The engines that commit a transaction from now on, in order."""
    committed: list[str] = []
    for name in registry.engine_names:
        event.listen(registry.engine(name), "commit", lambda _, name=name: committed.append(name))
    return committed


def test_auto_session_that_only_read_replicas_is_closed_not_committed(dbs: Registry) -> None:
    committed = _commits(dbs)
    with dbs.session("main", role="auto") as s:
        user = s.get(User, 1)
        assert isinstance(s, multidb.AutoSession)
        assert s.reader in ("main.a", "main.b")
    assert committed == []
    assert user is not None and user.name == "ada"  # not expired: readable once detached


def test_auto_session_that_wrote_at_the_end_of_its_block_commits_on_the_primary(
    dbs: Registry, seen: Seen
) -> None:
    committed = _commits(dbs)
    with dbs.session("main", role="auto") as s:
        user = s.get(User, 1)
        assert user is not None
        user.name = "eve"  # flushed when the block ends
        assert isinstance(s, multidb.AutoSession)
        reader = s.reader
    assert sorted(committed) == sorted([str(reader), "main.primary"])  # its two transactions
    assert seen.statements[-1] == ("main.primary", "UPDATE users SET name=? WHERE users.id = ?")
    with dbs.session("main", role="read") as s:
        assert s.scalar(select(User.name)) == "eve"


def test_auto_session_that_read_a_primary_commits_in_case_what_it_called_wrote(
    dbs: Registry,
) -> None:
    committed = _commits(dbs)
    with dbs.session("solo", role="auto") as s:  # no replicas: reads go to the primary
        s.execute(text("CREATE TEMP TABLE t (x)"))  # not a read: sticks to the primary
    with dbs.session("solo", role="auto") as s:
        assert s.scalar(select(User.name)) == "ada"
    assert committed == ["solo.primary", "solo.primary"]


def test_engine_sessionmaker_is_made_early_and_bound_late(tmp_path: Path) -> None:
    registry = Registry.from_dict(sqlite_config(tmp_path))
    assert not (tmp_path / "main.db").exists()  # nothing created, nothing opened
    maker = registry.sessionmaker("main.primary")
    assert maker.kw["bind"] is registry.engine("main.primary")
    assert registry.sessionmaker("main.primary") is maker
    registry.dispose()


def test_routed_factory_works_with_scoped_session(dbs: Registry, seen: Seen) -> None:
    scoped = scoped_session(dbs.sessionmaker("main", role="read"))
    assert scoped.scalar(select(User.name)) == "ada"
    scoped.remove()
    assert seen.engines()[0] in ("main.a", "main.b")


def test_registry_is_safe_to_share_between_threads(dbs: Registry) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                with dbs.session("main", role="read") as s:
                    assert s.scalar(select(User.name)) == "ada"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = dbs.stats()
    assert stats["main.a"].sessions + stats["main.b"].sessions == 200


def test_every_routing_decision_is_logged(dbs: Registry, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="multidb.routing"),
        dbs.session("main", role="auto") as s,
    ):
        s.scalar(select(User.name))
        s.add(User(name="bob"))
    messages = [r.getMessage() for r in caplog.records if r.name == "multidb.routing"]
    assert any(m.startswith("main: read -> main.") for m in messages)
    assert "main: a flush -> main.primary (auto: first statement that is not a read)" in messages


def test_lag_checked_sqlite_replicas_serve_reads_from_the_first_session(tmp_path: Path) -> None:
    """The first read session waits for the first lag probe round instead of falling back."""
    config = sqlite_config(tmp_path, max_lag_seconds=1, check_interval_seconds=0.1)
    with build(config) as registry:
        seen = Seen(registry)
        with registry.session("main", role="read") as s:
            s.scalar(select(User.name))
        assert seen.engines()[0] in ("main.a", "main.b")
        assert registry.stats()["main.primary"].fallbacks == 0


# -- SQLAlchemy internals the routing relies on (STYLE 10) ---------------------


def test_sqlalchemy_sends_every_orm_execution_through_session_execute_internal(
    dbs: Registry,
) -> None:
    """Read/auto sessions check and classify statements in ``Session._execute_internal``."""
    from sqlalchemy.orm import Session

    calls: list[Any] = []

    class Spy(Session):
        def _execute_internal(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(statement)
            return super()._execute_internal(statement, *args, **kwargs)

    with Spy(bind=dbs.engine("main")) as s:
        s.execute(select(User))
        s.scalars(select(User))
        s.scalar(select(User.id))
        s.query(User).all()
        s.expire_all()
        s.get(User, 1)
    assert len(calls) == 5


def test_a_read_session_gives_its_connection_back_at_each_transaction_end(dbs: Registry) -> None:
    """The replica Connection handed to SQLAlchemy as a bind is not closed by it: we close it."""
    with dbs.session("main", role="read") as s:
        s.execute(select(1))
        assert isinstance(s, multidb.ReadSession) and s.reader is not None
        pool = dbs.engine(s.reader).pool
        s.commit()
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        s.execute(select(1))
        assert pool.checkedout() == 1  # type: ignore[attr-defined]
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


def test_explicit_binds_are_refused_in_a_read_session_before_any_sql(
    dbs: Registry, seen: Seen
) -> None:
    primary = dbs.engine("main.primary")
    with dbs.session("main", role="read") as s:
        with pytest.raises(ReadOnlyError, match="explicit bind"):
            s.connection(bind_arguments={"bind": primary})
        with pytest.raises(ReadOnlyError, match="explicit bind"):
            s.execute(text("SELECT 1"), bind_arguments={"bind": primary})
    assert seen.statements == []


def test_an_unknown_multidb_role_option_raises(dbs: Registry) -> None:
    with dbs.session("main", role="auto") as s, pytest.raises(RoutingError, match="multidb_role"):
        s.execute(select(1).execution_options(multidb_role="reed"))
