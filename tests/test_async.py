"""asyncio routing (SPEC section 5) on every async driver, against real servers.

The same tests run on PostgreSQL through asyncpg and through psycopg 3, on
MariaDB through aiomysql, and on SQLite through aiosqlite. Which server ran a
statement is asked of the server (``inet_server_port()``,
``pg_is_in_recovery()``, ``@@server_id``); on SQLite, where primary and
replica are one file, it is the engine SQLAlchemy ran the statement on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servers import MariaDBCluster, PostgresCluster, PostgresServer, wait_until
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from multidb import (
    ConfigError,
    ReadOnlyError,
    Registry,
    RoutingError,
    UnknownNameError,
    aio,
    causal,
)
from multidb.cli import main as cli_main

metadata = MetaData()
marks = Table(
    "async_marks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("marker", String(64), nullable=False),
)
counters = Table(
    "async_counters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("n", Integer, nullable=False),
)

Cluster = PostgresCluster | MariaDBCluster

# Each driver's connect timeout argument: a stopped server fails fast.
_TIMEOUT_ARG = {"asyncpg": "timeout", "psycopg": "connect_timeout", "aiomysql": "connect_timeout"}


@dataclass
class Backend:
    """One async driver on one replicated backend, and how to ask a server who it is."""

    driver: str  # "postgresql+asyncpg", "postgresql+psycopg", "mysql+aiomysql", "sqlite+aiosqlite"
    cluster: Cluster | None  # None: SQLite, the replica is the primary's file opened read-only
    directory: Path | None = None
    seen: list[str] = field(default_factory=list)  # SQLite: engines that ran statements

    def open(self, weights: dict[str, float] | None = None, **routing: Any) -> Registry:
        """A registry of this backend; on SQLite, its engines note what they run."""
        dbs = Registry.from_dict(self.config(weights, **routing))
        if self.cluster is None:
            for name in dbs.engine_names:
                engine = dbs.async_engine(name).sync_engine
                short = name.partition(".")[2]
                for hook in ("do_execute", "do_executemany", "do_execute_no_params"):
                    event.listen(engine, hook, lambda *args, short=short: self.seen.append(short))
        return dbs

    @property
    def kind(self) -> str:
        return self.driver.partition("+")[0]

    @property
    def primary(self) -> str:
        return self.cluster.primary.name if self.cluster else "primary"

    @property
    def replicas(self) -> list[str]:
        return [r.name for r in self.cluster.replicas] if self.cluster else ["replica1"]

    def config(self, weights: dict[str, float] | None = None, **routing: Any) -> dict[str, Any]:
        if self.cluster is None:
            assert self.directory is not None
            path = self.directory / "async.db"
            return {
                "databases": {
                    "db": {
                        "primary": f"sqlite+aiosqlite:///{path}",
                        "replicas": {
                            "replica1": {
                                "url": f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true",
                                "weight": (weights or {}).get("replica1", 1),
                            }
                        },
                        "routing": routing,
                    }
                }
            }
        scheme = self.driver
        replicas = {
            r.name.replace("-", "_"): {
                "url": _with_scheme(r.url(), scheme),
                "weight": (weights or {}).get(r.name, 1),
            }
            for r in self.cluster.replicas
        }
        timeout = {_TIMEOUT_ARG[scheme.partition("+")[2]]: 2}
        return {
            "databases": {
                "db": {
                    "primary": _with_scheme(self.cluster.primary.url(), scheme),
                    "replicas": replicas,
                    "options": {"connect_args": timeout},
                    "routing": {"cooldown_seconds": 2, **routing},
                }
            }
        }

    async def where(self, session: AsyncSession) -> str:
        """The server that runs ``session``'s next statement, as the server says."""
        if self.cluster is None:
            self.seen.clear()
            await session.execute(text("SELECT 1"))
            return self.seen[-1]
        if self.kind == "postgresql":
            port = (await session.execute(text("SELECT inet_server_port()"))).scalar_one()
            return {s.port: s.name for s in self.cluster.servers}[port]
        assert isinstance(self.cluster, MariaDBCluster)
        server_id = (await session.execute(text("SELECT @@server_id"))).scalar_one()
        return {s.server_id: s.name for s in self.cluster.servers}[server_id]

    def delay(self) -> AbstractContextManager[None]:
        """Real apply lag on the second replica: 0.3 s on PostgreSQL, 1 s on MariaDB."""
        if self.cluster is None:
            return nullcontext()  # SQLite's replica is the primary's own file
        server = self.cluster.replicas[1]
        if isinstance(server, PostgresServer):
            return server.apply_delay(0.3)
        return server.apply_delay(1)


def _with_scheme(url: str, scheme: str) -> str:
    return scheme + url[url.index("://") :]


_BACKENDS = [
    pytest.param("postgresql+asyncpg", marks=pytest.mark.postgresql, id="asyncpg"),
    pytest.param("postgresql+psycopg", marks=pytest.mark.postgresql, id="psycopg"),
    pytest.param("mysql+aiomysql", marks=pytest.mark.mariadb, id="aiomysql"),
    pytest.param("sqlite+aiosqlite", id="aiosqlite"),
]
_SERVERS = _BACKENDS[:3]


def _make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    driver: str = request.param
    if driver.startswith("sqlite"):
        backend = Backend(driver, None, tmp_path)
    else:
        fixture = "pg_cluster" if driver.startswith("postgresql") else "mariadb_cluster"
        backend = Backend(driver, request.getfixturevalue(fixture))

    async def create() -> None:
        async with backend.open() as setup, setup.async_engine("db").begin() as connection:
            await connection.run_sync(metadata.create_all)

    asyncio.run(create())
    if backend.cluster is not None:
        backend.cluster.wait_caught_up()
    yield backend
    if backend.cluster is not None:
        for replica in backend.cluster.replicas:
            if not replica.is_running():
                replica.start()
            if replica.replay_paused:
                replica.resume_replay()
        backend.cluster.wait_caught_up(timeout=30)


@pytest.fixture(params=_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend(request, tmp_path)


@pytest.fixture(params=_SERVERS)
def server_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend(request, tmp_path)


async def write_marker(dbs: Registry) -> str:
    marker = uuid.uuid4().hex
    async with dbs.async_session("db", role="write") as s:
        await s.execute(insert(marks).values(marker=marker))
    return marker


async def sees(session: AsyncSession, marker: str) -> bool:
    found = await session.scalar(select(marks.c.id).where(marks.c.marker == marker))
    return found is not None


async def count(dbs: Registry, marker: str) -> int:
    async with dbs.async_session("db", role="write") as s:
        query = select(marks.c.id).where(marks.c.marker == marker)
        return len((await s.scalars(query)).all())


# -- where statements run -----------------------------------------------------------


def test_async_read_sessions_run_on_a_replica_and_writes_on_the_primary(
    backend: Backend,
) -> None:
    async def main() -> None:
        async with backend.open() as dbs:
            for _ in range(4):
                async with dbs.async_session("db", role="read") as s:
                    assert await backend.where(s) in backend.replicas
                    if backend.kind == "postgresql":
                        assert (await s.scalar(text("SELECT pg_is_in_recovery()"))) is True
            async with dbs.async_session("db", role="write") as s:
                assert await backend.where(s) == backend.primary
                if backend.kind == "postgresql":
                    assert (await s.scalar(text("SELECT pg_is_in_recovery()"))) is False

    asyncio.run(main())


def test_async_read_session_refuses_a_write_and_sends_nothing(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as dbs:
            sent: list[str] = []
            for name in dbs.engine_names:
                engine = dbs.async_engine(name).sync_engine
                for hook in ("do_execute", "do_executemany", "do_execute_no_params"):
                    event.listen(engine, hook, lambda cursor, sql, *a: sent.append(sql))
            marker = uuid.uuid4().hex
            with pytest.raises(ReadOnlyError, match="nothing was sent"):
                async with dbs.async_session("db", role="read") as s:
                    await s.execute(insert(marks).values(marker=marker))
            with pytest.raises(ReadOnlyError, match="nothing was sent"):
                async with dbs.async_session("db", role="read") as s:
                    await s.execute(text(f"INSERT INTO async_marks (marker) VALUES ('{marker}')"))
            assert not [sql for sql in sent if "async_marks" in sql]
            assert await count(dbs, marker) == 0

    asyncio.run(main())


def test_async_read_session_that_fell_back_to_the_primary_cannot_write_there(
    backend: Backend,
) -> None:
    """Even a write sent straight to the DBAPI cursor is refused by the server's read-only mode."""

    def raw_insert(connection: Any) -> None:
        cursor = connection.connection.dbapi_connection.cursor()
        cursor.execute("INSERT INTO async_marks (marker) VALUES ('refused')")

    async def main() -> None:
        weights = dict.fromkeys(backend.replicas, 0.0)  # no usable replica: reads fall back
        async with backend.open(weights) as dbs:
            async with dbs.async_session("db", role="read") as s:
                assert await backend.where(s) == backend.primary
                connection = await s.connection()
                with pytest.raises(Exception, match=r"(?i)read.?only"):
                    await connection.run_sync(raw_insert)
            assert await count(dbs, "refused") == 0

    asyncio.run(main())


def test_async_auto_session_reads_on_a_replica_until_its_first_write_then_stays_on_the_primary(
    backend: Backend,
) -> None:
    async def main() -> None:
        async with backend.open() as dbs, dbs.async_session("db", role="auto") as s:
            assert await backend.where(s) in backend.replicas
            marker = uuid.uuid4().hex
            await s.execute(insert(marks).values(marker=marker))
            assert await backend.where(s) == backend.primary
            assert await sees(s, marker)
            await s.commit()
            assert await sees(s, marker)
            assert await backend.where(s) == backend.primary

    asyncio.run(main())


def test_async_auto_session_commits_only_when_it_wrote(backend: Backend) -> None:
    async def main() -> None:
        async with backend.open() as dbs:
            committed: list[str] = []
            for name in dbs.engine_names:
                event.listen(
                    dbs.async_engine(name).sync_engine,
                    "commit",
                    lambda _, name=name: committed.append(name.partition(".")[2]),
                )
            async with dbs.async_session("db", role="auto") as s:
                assert await backend.where(s) in backend.replicas
            assert committed == []  # a replica's read-only transaction: just closed
            async with dbs.async_session("db", role="auto") as s:
                await s.execute(insert(marks).values(marker=uuid.uuid4().hex))
            assert committed == ["primary"]

    asyncio.run(main())


# -- failures and lag ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_async_replica_stopped_under_8_tasks_costs_no_failed_read(
    server_backend: Backend,
) -> None:
    backend = server_backend
    assert backend.cluster is not None
    victim = backend.cluster.replicas[0]
    served: Counter[str] = Counter()
    failures: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        async with backend.open(cooldown_seconds=2) as dbs:

            async def reader() -> None:
                while not stop.is_set():
                    try:
                        async with dbs.async_session("db", role="read") as s:
                            served[await backend.where(s)] += 1
                    except Exception as exc:
                        failures.append(exc)

            async def until(predicate: Any, timeout: float, message: str) -> None:
                deadline = time.monotonic() + timeout
                while not predicate():
                    assert time.monotonic() < deadline, message
                    await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(reader()) for _ in range(8)]
            try:
                await until(lambda: served[victim.name] >= 20, 30, "victim serves")
                await asyncio.to_thread(victim.stop, True)
                before = sum(served.values())
                await until(lambda: sum(served.values()) >= before + 200, 30, "reads go on")
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            ejections = dbs.stats()[f"db.{victim.name.replace('-', '_')}"].error_ejections
        print(
            f"{backend.driver}: {sum(served.values())} reads by 8 tasks, {len(failures)} failed,"
            f" served {dict(served)}"
        )
        assert failures == []
        assert ejections >= 1

    asyncio.run(main())


def test_async_replay_paused_replica_is_left_out_once_over_max_lag(
    server_backend: Backend,
) -> None:
    backend = server_backend
    assert backend.cluster is not None
    paused, other = backend.cluster.replicas
    engine_name = f"db.{paused.name.replace('-', '_')}"

    async def main() -> None:
        async with backend.open(max_lag_seconds=1, check_interval_seconds=0.2) as dbs:
            async with dbs.async_session("db", role="read") as s:  # starts the lag monitor
                await s.execute(text("SELECT 1"))
            await asyncio.to_thread(
                wait_until, lambda: dbs.stats()[engine_name].in_rotation, timeout=10
            )
            await asyncio.to_thread(paused.pause_replay)
            marker = await write_marker(dbs)
            await asyncio.to_thread(
                wait_until,
                lambda: not dbs.stats()[engine_name].in_rotation,
                timeout=1 + 0.2 + 2,
                message="paused replica left out",
            )
            await asyncio.to_thread(backend.cluster.wait_caught_up)  # type: ignore[union-attr]
            for _ in range(10):
                async with dbs.async_session("db", role="read") as s:
                    assert await backend.where(s) == other.name
                    assert await sees(s, marker)
            assert dbs.stats()[engine_name].lag_ejections >= 1

    asyncio.run(main())


# -- read-your-writes -----------------------------------------------------------------


def test_async_100_writes_each_read_by_a_new_read_session_with_a_delayed_replica_0_stale(
    backend: Backend,
) -> None:
    served: Counter[str] = Counter()

    async def main() -> tuple[int, int]:
        stale = 0
        with backend.delay():
            async with backend.open() as dbs:
                for _ in range(100):
                    marker = await write_marker(dbs)
                    async with dbs.async_session("db", role="read") as s:
                        served[await backend.where(s)] += 1
                        stale += not await sees(s, marker)
                delayed = f"db.{backend.replicas[-1].replace('-', '_')}"
                return stale, dbs.stats()[delayed].causal_waits

    stale, waits = asyncio.run(main())
    print(
        f"{backend.driver}: 100 write-then-read cycles, {stale} stale, served by {dict(served)},"
        f" delayed replica asked {waits} times"
    )
    assert stale == 0
    if backend.cluster is not None:  # positions were recorded: the delayed replica was asked
        assert waits > 0


def test_async_autocommit_writes_closed_without_a_commit_are_read_back_0_stale(
    server_backend: Backend,
) -> None:
    """An AUTOCOMMIT AsyncConnection's writes stand as they run: closing it (a rollback to
    SQLAlchemy) keeps their position."""
    backend = server_backend

    async def main() -> int:
        stale = 0
        with backend.delay():
            async with backend.open() as dbs:
                autocommit = dbs.async_engine("db").execution_options(isolation_level="AUTOCOMMIT")
                for _ in range(20):
                    marker = uuid.uuid4().hex
                    async with autocommit.connect() as connection:
                        await connection.execute(insert(marks).values(marker=marker))
                    async with dbs.async_session("db", role="read") as s:
                        stale += not await sees(s, marker)
        return stale

    stale = asyncio.run(main())
    print(f"{backend.driver}: 20 autocommit writes read back, {stale} stale")
    assert stale == 0


def test_async_writes_in_child_tasks_are_read_by_the_parents_scope_0_stale(
    server_backend: Backend,
) -> None:
    """A causal scope follows asyncio tasks: a child task's write constrains the parent's reads."""
    backend = server_backend

    async def main() -> int:
        stale = 0
        with backend.delay():
            async with backend.open() as dbs:
                for _ in range(30):
                    with dbs.causal():
                        marker = await asyncio.create_task(write_marker(dbs))
                        token = dbs.causal_token()
                        assert token is not None
                    with dbs.causal(token):
                        async with dbs.async_session("db", role="read") as s:
                            stale += not await sees(s, marker)
        return stale

    assert asyncio.run(main()) == 0


def test_async_100_auto_read_modify_write_increments_end_at_exactly_100(
    backend: Backend,
) -> None:
    row_id = uuid.uuid4().int % 2**31

    async def main() -> int | None:
        with backend.delay():
            async with backend.open() as dbs:
                async with dbs.async_session("db", role="write") as s:
                    await s.execute(insert(counters).values(id=row_id, n=0))
                for _ in range(100):
                    async with dbs.async_session("db", role="auto") as s:
                        n = await s.scalar(select(counters.c.n).where(counters.c.id == row_id))
                        assert n is not None
                        await s.execute(
                            update(counters).where(counters.c.id == row_id).values(n=n + 1)
                        )
                async with dbs.async_session("db", role="write") as s:
                    return await s.scalar(select(counters.c.n).where(counters.c.id == row_id))

    assert asyncio.run(main()) == 100


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("driver", _BACKENDS[:2])
def test_20_concurrent_pg_sleep_reads_are_not_serialised(
    driver: str, pg_cluster: PostgresCluster
) -> None:
    """20 reads of 0.2 s each would take 4 s one after another; together they overlap."""
    backend = Backend(driver, pg_cluster)

    async def main() -> float:
        async with backend.open() as dbs:
            factory = dbs.async_sessionmaker("db", role="read")
            assert isinstance(factory, async_sessionmaker)

            async def read() -> None:
                async with factory() as s:
                    await s.execute(text("SELECT pg_sleep(0.2)"))

            await read()  # connections and the first round of probes are not what is measured
            started = time.monotonic()
            await asyncio.gather(*(read() for _ in range(20)))
            return time.monotonic() - started

    elapsed = asyncio.run(main())
    print(f"{driver}: 20 concurrent pg_sleep(0.2) reads in {elapsed:.2f}s (serial: 4 s)")
    assert elapsed < 2.0


# -- one config for async code and sync tools (SQLite, no server) ----------------------


def _sqlite_async_config(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "main.db"
    return {
        "databases": {
            "main": {
                "primary": f"sqlite+aiosqlite:///{path}",
                "replicas": {"a": f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"},
            },
            "legacy": f"sqlite:///{tmp_path / 'legacy.db'}",
        }
    }


def test_sync_methods_on_an_async_only_engine_raise_routing_error_saying_what_to_write(
    tmp_path: Path,
) -> None:
    dbs = Registry.from_dict(_sqlite_async_config(tmp_path))
    with pytest.raises(RoutingError) as engine_error:
        dbs.engine("main")
    assert str(engine_error.value) == (
        "main.primary uses sqlite+aiosqlite, an async-only driver: use"
        " dbs.async_engine('main.primary') in async code, or write sqlite:// to serve sync"
        " code too"
    )
    with pytest.raises(RoutingError, match=r"use dbs\.async_session\('main'\)"):
        dbs.session("main", role="read")
    with pytest.raises(RoutingError, match=r"use dbs\.async_session\('main\.a'\)"):
        dbs.sessionmaker("main.a")


def test_async_methods_on_a_sync_only_engine_raise_routing_error_saying_what_to_write(
    tmp_path: Path,
) -> None:
    dbs = Registry.from_dict(_sqlite_async_config(tmp_path))
    with pytest.raises(RoutingError) as engine_error:
        dbs.async_engine("legacy")
    assert str(engine_error.value) == (
        "legacy.primary uses sqlite, a sync-only driver: use dbs.engine('legacy.primary') in"
        " sync code, or write sqlite+aiosqlite:// to serve async code"
    )
    with pytest.raises(RoutingError, match=r"use dbs\.session\('legacy'\)"):
        dbs.async_session("legacy")
    with pytest.raises(RoutingError, match=r"use dbs\.session\('legacy'\)"):
        dbs.async_sessionmaker("legacy", role="read")


def test_role_errors_and_unknown_names_raise_before_the_async_block_runs(tmp_path: Path) -> None:
    dbs = Registry.from_dict(_sqlite_async_config(tmp_path))
    with pytest.raises(RoutingError, match="cannot take role='write'"):
        dbs.async_session("main.a", role="write")
    with pytest.raises(RoutingError, match="unknown role"):
        dbs.async_sessionmaker("main", role="reader")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError):
        dbs.async_session("mian")


def test_psycopg_serves_sync_and_async_sessions_from_one_url(tmp_path: Path) -> None:
    config = {"databases": {"pg": "postgresql+psycopg://app@127.0.0.1:1/app"}}
    dbs = Registry.from_dict(config)  # creating engines opens no connection
    assert dbs.engine("pg").dialect.is_async is False
    assert dbs.async_engine("pg").sync_engine.dialect.is_async is True
    assert isinstance(dbs.async_sessionmaker("pg"), async_sessionmaker)
    dbs.dispose()


def test_a_database_whose_engines_share_no_mode_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text(
        "databases:\n"
        "  main:\n"
        "    primary: postgresql+asyncpg://app@db1/app\n"
        "    replicas:\n"
        "      a: postgresql+psycopg2://app@db2/app\n"
    )
    with pytest.raises(ConfigError) as error:
        Registry.from_yaml(path)
    assert str(error.value) == (
        f"{path}:5:10: databases.main.replicas.a: postgresql+psycopg2 serves only sync code and"
        " the engines before it (main.primary ...) only async code: no session can use them all;"
        " write postgresql+asyncpg:// or postgresql+psycopg:// (psycopg 3 serves both) here"
    )


def test_a_missing_async_driver_is_a_config_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "aiosqlite", None)  # import aiosqlite fails
    with pytest.raises(
        ConfigError,
        match=r"driver 'aiosqlite' is not installed: pip install 'multidb\[aiosqlite\]'",
    ):
        Registry.from_dict(_sqlite_async_config(tmp_path))


def test_an_async_driver_without_greenlet_is_a_config_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "greenlet" else find_spec(name, *a),
    )
    with pytest.raises(
        ConfigError,
        match=r"needs greenlet, which is not installed: pip install 'multidb\[aiosqlite\]'",
    ):
        Registry.from_dict(_sqlite_async_config(tmp_path))


def test_multidb_check_works_on_the_bundled_async_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "async.yaml"
    config.write_text((Path(__file__).parents[1] / "config" / "async.yaml").read_text())
    assert cli_main(["check", str(config)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[:4] for row in rows] == [
        ["main.primary", "primary", f"sqlite+aiosqlite:///{tmp_path}/var/main.db", "OK"],
        [
            "main.a",
            "replica",
            f"sqlite+aiosqlite:///file:{tmp_path}/var/main.db?mode=ro&uri=true",
            "OK",
        ],
        ["local.primary", "primary", f"sqlite+aiosqlite:///{tmp_path}/var/local.db", "OK"],
    ]


def test_sync_health_works_from_inside_a_running_event_loop(tmp_path: Path) -> None:
    dbs = Registry.from_dict(_sqlite_async_config(tmp_path))

    async def main() -> list[bool]:
        return [status.ok for status in dbs.health()]

    assert asyncio.run(main()) == [True, True, True]


def test_async_health_reports_every_engine_sync_and_async(tmp_path: Path) -> None:
    async def main() -> list[tuple[str, bool, float | None]]:
        async with Registry.from_dict(_sqlite_async_config(tmp_path)) as dbs:
            return [(s.name, s.ok, s.lag_seconds) for s in await dbs.async_health()]

    assert asyncio.run(main()) == [
        ("main.primary", True, None),
        ("main.a", True, 0.0),
        ("legacy.primary", True, None),
    ]


@pytest.mark.timeout(30)
def test_async_health_does_not_block_the_loop_on_servers_that_never_answer() -> None:
    """A listener that accepts and never answers: FAIL rows after the timeout, the loop ticking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        hung = f"app:secret@127.0.0.1:{port}/app"
        routing = {"connect_timeout_seconds": 1}
        config = {
            "databases": {
                "pg": {"url": f"postgresql+asyncpg://{hung}", "routing": routing},
                "old": {
                    "url": f"postgresql+psycopg2://{hung}",
                    "options": {"connect_args": {"connect_timeout": 3}},
                    "routing": routing,
                },
            }
        }

        async def main() -> tuple[list[tuple[str, bool, str | None]], int]:
            ticks = 0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    await asyncio.sleep(0.02)
                    ticks += 1

            task = asyncio.create_task(ticker())
            dbs = Registry.from_dict(config)
            statuses = await dbs.async_health()
            done.set()
            await task
            await dbs.async_dispose()
            return [(s.name, s.ok, s.error) for s in statuses], ticks

        statuses, ticks = asyncio.run(main())
    assert [(name, ok) for name, ok, _ in statuses] == [
        ("pg.primary", False),
        ("old.primary", False),
    ]
    # "no answer within ...", or the driver's own timeout when it fires first: one line each
    assert all(error and "\n" not in error for _, _, error in statuses), statuses
    print(f"async_health on 2 hung servers: {ticks} ticks of 20 ms while it waited")
    assert ticks >= 5  # a blocked loop ticks at most once; ~50 in the second the probes waited


def test_async_with_closes_the_async_pools_and_sync_dispose_warns_it_cannot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []

    async def use(dbs: Registry) -> None:
        event.listen(dbs.async_engine("main").sync_engine, "close", lambda *a: closed.append("x"))
        async with dbs.async_session("main") as s:
            await s.execute(text("SELECT 1"))

    async def main() -> None:
        async with Registry.from_dict(_sqlite_async_config(tmp_path)) as dbs:
            await use(dbs)
        assert closed == ["x"]

    asyncio.run(main())
    dbs = Registry.from_dict(_sqlite_async_config(tmp_path))
    asyncio.run(use(dbs))
    dbs.dispose()
    assert "AsyncEngine main.primary dropped without closing" in caplog.text


def test_async_sessions_take_the_request_role(tmp_path: Path) -> None:
    async def main() -> list[str | None]:
        async with Registry.from_dict(_sqlite_async_config(tmp_path)) as dbs:
            async with dbs.async_session("main") as s:  # the file the replica opens
                await s.execute(text("CREATE TABLE t (x INTEGER)"))
            readers = []
            for role in ("read", "write"):
                with causal.use_role(role):
                    async with dbs.async_session("main") as s:
                        await s.execute(text("SELECT 1"))
                        readers.append(getattr(s.sync_session, "reader", None))
            return readers

    assert asyncio.run(main()) == ["main.a", None]


def test_greenlet_spawn_is_where_sqlalchemy_keeps_it() -> None:
    """multidb.aio.run_blocking relies on sqlalchemy.util.greenlet_spawn (not documented API)."""
    from sqlalchemy.util import greenlet_spawn

    assert aio.run_blocking(lambda: 42) == 42
    assert asyncio.iscoroutinefunction(greenlet_spawn)


def test_the_readme_fastapi_example_is_examples_fastapi_async_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(__file__).parents[1]
    example = (root / "examples" / "fastapi_async.py").read_text()
    readme = (root / "README.md").read_text()
    assert "```python\n" + example + "```" in readme
    config = tmp_path / "async.yaml"
    config.write_text((root / "config" / "async.yaml").read_text())
    monkeypatch.setenv("MULTIDB_CONFIG", str(config))
    spec = importlib.util.spec_from_file_location(
        "fastapi_async", root / "examples" / "fastapi_async.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from fastapi.testclient import TestClient

    with TestClient(module.app) as client:
        assert client.post("/notes", params={"text": "hello"}).json() == {"id": 1}
        assert client.post("/notes", params={"text": "world"}).json() == {"id": 2}
        assert client.get("/notes").json() == ["hello", "world"]


def test_async_session_of_several_databases_routes_each_statement_to_its_database(
    tmp_path: Path,
) -> None:
    config = _sqlite_async_config(tmp_path)
    config["databases"]["other"] = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    notes = Table("notes", MetaData(), Column("id", Integer, primary_key=True))

    async def main() -> tuple[int | None, int | None]:
        async with Registry.from_dict(config) as dbs:
            dbs.route(marks, "main")
            dbs.route(notes, "other")
            for name, table in (("main", marks), ("other", notes)):
                async with dbs.async_engine(name).begin() as connection:
                    await connection.run_sync(table.metadata.create_all)
            async with dbs.async_session(None) as s:  # role write: each table's primary
                await s.execute(insert(marks).values(marker="m"))
                await s.execute(insert(notes).values(id=7))
            async with dbs.async_session(None, role="read") as s:
                with pytest.raises(ReadOnlyError):
                    await s.execute(insert(notes).values(id=8))
            async with dbs.async_session(None, role="read") as s:
                return (
                    await s.scalar(select(func.count()).select_from(marks)),
                    await s.scalar(select(notes.c.id)),
                )

    assert asyncio.run(main()) == (1, 7)


def test_async_session_class_is_the_class_of_every_async_session_with_routing_added(
    tmp_path: Path,
) -> None:
    """SQLModel's AsyncSession (its ``exec()`` runs a ``sqlmodel.Session`` inside) keeps working."""
    from sqlmodel import Field, SQLModel
    from sqlmodel import select as sqlmodel_select
    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

    class AsyncHero(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str

    async def main() -> tuple[list[str], str]:
        config = _sqlite_async_config(tmp_path)
        async with Registry.from_dict(config, async_session_class=SQLModelAsyncSession) as dbs:
            async with dbs.async_engine("main").begin() as connection:
                await connection.run_sync(SQLModel.metadata.create_all)
            async with dbs.async_session("main") as s:
                assert isinstance(s, SQLModelAsyncSession)
                s.add(AsyncHero(name="ada"))
            async with dbs.async_session("main", role="read") as s:
                assert isinstance(s, SQLModelAsyncSession)
                names = list((await s.exec(sqlmodel_select(AsyncHero.name))).all())
                with pytest.raises(ReadOnlyError):
                    s.add(AsyncHero(name="refused"))
                    await s.flush()
                s.expunge_all()
                assert s.bind is not None
                return names, s.bind.dialect.name

    assert asyncio.run(main()) == (["ada"], "sqlite")


def test_async_write_and_pinned_sessions_are_counted_like_sync_ones(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        async with Registry.from_dict(_sqlite_async_config(tmp_path)) as dbs:
            for name in ("main", "main.a"):
                async with dbs.async_session(name) as s:
                    await s.execute(text("SELECT 1"))
            stats = dbs.stats()
            return stats["main.primary"].sessions, stats["main.a"].sessions

    assert asyncio.run(main()) == (1, 1)


def test_8_concurrent_first_async_reads_with_max_lag_all_use_the_replica(tmp_path: Path) -> None:
    """Each first session waits, off the loop, for the monitor's first round of probes."""
    config = _sqlite_async_config(tmp_path)
    config["databases"]["main"]["routing"] = {"max_lag_seconds": 5, "fallback_to_primary": False}

    async def main() -> list[str | None]:
        async with Registry.from_dict(config) as dbs:
            async with dbs.async_session("main.primary") as s:  # the file the replica opens
                await s.execute(text("CREATE TABLE t (x INTEGER)"))

            async def first_read() -> str | None:
                async with dbs.async_session("main", role="read") as s:
                    await s.execute(text("SELECT count(*) FROM t"))
                    return getattr(s.sync_session, "reader", None)

            return list(await asyncio.gather(*(first_read() for _ in range(8))))

    assert asyncio.run(main()) == ["main.a"] * 8
