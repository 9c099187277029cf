"""What a multidb AsyncSession costs per operation, next to a plain SQLAlchemy AsyncSession.

    python benchmarks/async_overhead.py [--rounds R] [--n N] [--backend sqlite|postgresql|all]

The async twin of ``overhead.py``: the same workloads W1-W4, awaited, on the
same seeded table, with the same interleaved rounds and medians.

Contenders: ``floor-write`` / ``floor-read`` (a plain
``async_sessionmaker(bind=create_async_engine(url))`` of the primary / replica
URL: the floor), ``multidb-write``, ``multidb-read`` and ``multidb-auto``
(``registry.async_session(name, role=...)``). Every session is used as
``async_session()`` is: commit when the block ends, then close.

Backends: SQLite through aiosqlite (the replica is the primary's WAL-mode file
opened read-only) and PostgreSQL (a primary and one streaming standby) through
asyncpg and through psycopg 3, all in the same run with ``--backend all``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine

import multidb

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead
from overhead import ALL, DATABASE, READS, Item, Results

__all__ = ["WORKLOADS", "main"]

Opener = Callable[[], AbstractAsyncContextManager[AsyncSession]]
Role = Literal["write", "read", "auto"]


class Scope:
    """What ``Registry.async_session()`` does around a plain AsyncSession: commit, close."""

    __slots__ = ("_maker", "_session")

    def __init__(self, maker: async_sessionmaker[AsyncSession]) -> None:
        self._maker = maker

    @staticmethod
    def opener(maker: async_sessionmaker[AsyncSession]) -> Opener:
        """A function that opens a scope of ``maker``: a floor contender."""

        def open_session() -> AbstractAsyncContextManager[AsyncSession]:
            return Scope(maker)

        return open_session

    async def __aenter__(self) -> AsyncSession:
        self._session = self._maker()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                await self._session.commit()
            else:
                await self._session.rollback()
        finally:
            await self._session.close()


# -- workloads: each runs n operations and returns the seconds they took ------------------


async def w1(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """Open a session, ``(await execute(select(1))).scalar()``, close."""
    statement = select(1)
    start = asyncio.get_running_loop().time()
    for _ in range(n):
        async with open_session() as session:
            (await session.execute(statement)).scalar()
    return asyncio.get_running_loop().time() - start


async def w2(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """One long session: ``await get()`` by primary key, ``expire_all()`` between."""
    async with open_session() as session:
        await session.get(Item, ids[0])  # the session's first read: picks its engine
        start = asyncio.get_running_loop().time()
        for i in range(n):
            session.expire_all()
            await session.get(Item, ids[i % len(ids)])
        return asyncio.get_running_loop().time() - start


async def w3(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """New session, add one row, commit, close."""
    start = asyncio.get_running_loop().time()
    for i in range(n):
        async with open_session() as session:
            session.add(Item(name="w3", n=i))
    return asyncio.get_running_loop().time() - start


async def w4(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """New session, read a row, update it, commit, close."""
    start = asyncio.get_running_loop().time()
    for i in range(n):
        async with open_session() as session:
            item = await session.get(Item, ids[i % len(ids)])
            assert item is not None
            item.n += 1
    return asyncio.get_running_loop().time() - start


Workload = Callable[[Opener, int, Sequence[int]], Awaitable[float]]
WORKLOADS: dict[str, Workload] = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}


@dataclass(frozen=True)
class Contender:
    """One way of getting an AsyncSession, the workloads it fits, and its floor."""

    name: str
    open_session: Opener
    workloads: tuple[str, ...]
    floor: str


@dataclass(frozen=True)
class AsyncBackend:
    """A seeded backend (``overhead.Backend``) reached through one async driver."""

    name: str
    primary_url: str
    replica_url: str
    ids: list[int]
    sqlite: bool


def _async_url(url: str, driver: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}+{driver}://{rest}"


def _tune(engine: AsyncEngine, sqlite: bool) -> AsyncEngine:
    """``PRAGMA synchronous = NORMAL`` on SQLite connections, as overhead.py does."""
    if sqlite:

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

    return engine


def make_registry(backend: AsyncBackend) -> multidb.Registry:
    registry = multidb.Registry.from_dict(
        {
            "databases": {
                DATABASE: {
                    "primary": backend.primary_url,
                    "replicas": {"a": backend.replica_url},
                    "session": {"expire_on_commit": False},
                }
            }
        }
    )
    for name in registry.engine_names:
        _tune(registry.async_engine(name), backend.sqlite)
    return registry


async def run(
    contenders: Sequence[Contender], ids: Sequence[int], *, rounds: int, n: int
) -> Results:
    """Run every fitting (workload, contender) pair ``rounds`` times, interleaved."""
    results = Results()
    warmup = max(1, min(n, 100))
    for round_ in range(-1, rounds):  # round -1 warms up and is not kept
        for workload in ALL:
            fitting = [c for c in contenders if workload in c.workloads]
            shift = round_ % len(fitting)
            for contender in fitting[shift:] + fitting[:shift]:
                count = warmup if round_ < 0 else n
                gc.collect()
                gc.disable()
                try:
                    # A fresh context per batch, as in overhead.py: a task copies the
                    # context it is made in.
                    batch = WORKLOADS[workload](contender.open_session, count, ids)
                    seconds = await contextvars.Context().run(asyncio.ensure_future, batch)
                finally:
                    gc.enable()
                if round_ >= 0:
                    results.add(workload, contender.name, seconds / count)
    return results


@asynccontextmanager
async def contenders(backend: AsyncBackend) -> AsyncIterator[list[Contender]]:
    """The floors and multidb's sessions on ``backend``; their engines disposed at the end."""
    floor_write = _tune(_create_async_engine(backend.primary_url), backend.sqlite)
    floor_read = _tune(_create_async_engine(backend.replica_url), backend.sqlite)
    registry = make_registry(backend)
    write_maker = async_sessionmaker(bind=floor_write, expire_on_commit=False)
    read_maker = async_sessionmaker(bind=floor_read, expire_on_commit=False)

    def multidb_opener(role: Role) -> Opener:
        def open_session() -> AbstractAsyncContextManager[AsyncSession]:
            return registry.async_session(DATABASE, role=role)

        return open_session

    try:
        yield [
            Contender("floor-write", Scope.opener(write_maker), ALL, "floor-write"),
            Contender("floor-read", Scope.opener(read_maker), READS, "floor-read"),
            Contender("multidb-write", multidb_opener("write"), ALL, "floor-write"),
            Contender("multidb-read", multidb_opener("read"), READS, "floor-read"),
            Contender("multidb-auto", multidb_opener("auto"), ALL, "floor-write"),
        ]
    finally:
        await registry.async_dispose()
        await floor_write.dispose()
        await floor_read.dispose()


async def overhead_table(backend: AsyncBackend, rounds: int, n: int) -> list[str]:
    """Run all contenders on ``backend``; the table's lines."""
    async with contenders(backend) as chosen:
        results = await run(chosen, backend.ids, rounds=rounds, n=n)
    lines = [
        f"backend {backend.name}: median of {rounds} rounds x {n} ops; "
        "floor = plain async_sessionmaker(bind=engine) on a plain AsyncEngine of the URL",
        f"{'workload':<9}{'contender':<15}{'us/op':>9}  {'ratio':>7}  vs",
    ]
    for workload in ALL:
        for contender in chosen:
            if workload not in contender.workloads:
                continue
            us = results.median_us(workload, contender.name)
            ratio = us / results.median_us(workload, contender.floor)
            lines.append(
                f"{workload:<9}{contender.name:<15}{us:>9.1f}  {ratio:>6.3f}x  {contender.floor}"
            )
    return lines


@contextmanager
def backends(choice: str) -> Iterator[list[AsyncBackend]]:
    """The seeded backends ``choice`` names, each through its async drivers."""
    found: list[AsyncBackend] = []
    with ExitStack() as stack:
        if choice in ("sqlite", "all"):
            b = stack.enter_context(overhead.sqlite_backend())
            found.append(
                AsyncBackend(
                    "sqlite+aiosqlite",
                    _async_url(b.primary_url, "aiosqlite"),
                    _async_url(b.replica_url, "aiosqlite"),
                    b.ids,
                    sqlite=True,
                )
            )
        if choice in ("postgresql", "all"):
            b = stack.enter_context(overhead.postgresql_backend())
            for driver in ("asyncpg", "psycopg"):
                found.append(
                    AsyncBackend(
                        f"postgresql+{driver}",
                        _async_url(b.primary_url, driver),
                        _async_url(b.replica_url, driver),
                        b.ids,
                        sqlite=False,
                    )
                )
        yield found


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the benchmark, print the tables; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="rounds (median taken); default 7")
    parser.add_argument("--n", type=int, default=1000, help="operations per batch; default 1000")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql", "all"),
        default="sqlite",
        help="default sqlite",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.n < 1:
        parser.error("--rounds and --n must be at least 1")
    print(overhead.environment())
    print(
        "command: python benchmarks/async_overhead.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    with backends(args.backend) as found:
        for backend in found:
            print()
            for line in asyncio.run(overhead_table(backend, args.rounds, args.n)):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
