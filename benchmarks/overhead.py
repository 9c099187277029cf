"""What a multidb session costs per operation, next to a plain SQLAlchemy session.

    python benchmarks/overhead.py [--rounds R] [--n N] [--backend sqlite|postgresql|all]
                                  [--lag | --causal]

Workloads (each timed per operation):

- W1: open a session, ``execute(select(1)).scalar()``, close.
- W2: one long session, ORM ``get()`` by primary key with ``expire_all()`` between.
- W3: new session, add one row, commit, close.
- W4: new session, read a row, update it, commit, close.

Contenders: ``floor-write`` / ``floor-read`` (a plain ``sessionmaker(bind=engine)``
on a plain engine of the primary / replica URL: the floor), ``multidb-write``,
``multidb-read``, ``multidb-auto`` (``registry.session(name, role=...)``) and
``routing`` (SQLAlchemy's documented ``RoutingSession`` recipe: leader for
flushes and DML, a random follower otherwise). Every session is used as
``registry.session()`` is: commit when the block ends, then close.

Contenders run interleaved (a batch of N operations each, the order rotated
every round) and the figure is the median of the rounds' per-operation times,
so background noise lands on every contender alike. Each batch runs in a
fresh ``contextvars`` context: the causal scope that one batch's writes make
constrains that batch's later reads (W4 ``auto``), not the next batch's. ``--lag`` instead compares
multidb with ``routing.max_lag_seconds`` set (``check_interval_seconds: 1``)
against the same config without it, and ``--causal`` compares
``routing.read_your_writes`` on (the default: a position read after each write
transaction, a position check for reads that follow one) against off.
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import importlib
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import sqlalchemy
from sqlalchemy import Delete, Engine, Insert, String, Update, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import multidb

__all__ = ["WORKLOADS", "Item", "RoutingSession", "contenders", "main", "seed", "server_cluster"]

SEED_ROWS = 100
DATABASE = "main"


class Base(DeclarativeBase):
    """Declarative base of the benchmark's one table."""


class Item(Base):
    """The row W2-W4 read, insert and update."""

    __tablename__ = "bench_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    n: Mapped[int] = mapped_column(default=0)


class RoutingSession(Session):
    """SQLAlchemy's documented routing recipe: the leader for flushes and DML, else a follower."""

    def __init__(self, *, leader: Engine, followers: Sequence[Engine], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leader = leader
        self.followers = followers

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        **kwargs: Any,
    ) -> Engine:
        if self._flushing or isinstance(clause, (Update, Delete, Insert)):
            return self.leader
        return random.choice(self.followers)


class Scope:
    """What ``Registry.session()`` does around a plain session: commit at the end, close."""

    __slots__ = ("_maker", "_session")

    def __init__(self, maker: sessionmaker[Any]) -> None:
        self._maker = maker

    @staticmethod
    def opener(maker: sessionmaker[Any]) -> Opener:
        """A function that opens a scope of ``maker``: a floor contender."""

        def open_session() -> AbstractContextManager[Session]:
            return Scope(maker)

        return open_session

    def __enter__(self) -> Session:
        session: Session = self._maker()
        self._session = session
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._session.commit()
            else:
                self._session.rollback()
        finally:
            self._session.close()


Opener = Callable[[], AbstractContextManager[Session]]
Role = Literal["write", "read", "auto"]


# -- workloads: each runs n operations and returns the seconds they took ------------------


def w1(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """Open a session, ``execute(select(1)).scalar()``, close."""
    statement = select(1)
    start = time.perf_counter()
    for _ in range(n):
        with open_session() as session:
            session.execute(statement).scalar()
    return time.perf_counter() - start


def w2(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """One long session: ``get()`` by primary key, ``expire_all()`` between."""
    with open_session() as session:
        session.get(Item, ids[0])  # the session's first read: picks its engine
        start = time.perf_counter()
        for i in range(n):
            session.expire_all()
            session.get(Item, ids[i % len(ids)])
        return time.perf_counter() - start


def w3(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """New session, add one row, commit, close."""
    start = time.perf_counter()
    for i in range(n):
        with open_session() as session:
            session.add(Item(name="w3", n=i))
    return time.perf_counter() - start


def w4(open_session: Opener, n: int, ids: Sequence[int]) -> float:
    """New session, read a row, update it, commit, close."""
    start = time.perf_counter()
    for i in range(n):
        with open_session() as session:
            item = session.get(Item, ids[i % len(ids)])
            assert item is not None
            item.n += 1
    return time.perf_counter() - start


Workload = Callable[[Opener, int, Sequence[int]], float]
WORKLOADS: dict[str, Workload] = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}
READS = ("W1", "W2")
ALL = ("W1", "W2", "W3", "W4")


@dataclass(frozen=True)
class Contender:
    """One way of getting a session, the workloads it fits, and the floor it is held to."""

    name: str
    open_session: Opener
    workloads: tuple[str, ...]
    floor: str  # the contender whose time is 1.00x


@dataclass
class Results:
    """Per-operation times, in seconds, by (workload, contender), one per round."""

    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, workload: str, contender: str, seconds: float) -> None:
        self.times.setdefault((workload, contender), []).append(seconds)

    def median_us(self, workload: str, contender: str) -> float:
        return statistics.median(self.times[workload, contender]) * 1e6


# -- backends -------------------------------------------------------------------------------


@dataclass
class Backend:
    """URLs of one primary and its replica, with the table created and seeded."""

    name: str
    primary_url: str
    replica_url: str
    ids: list[int]
    connect_hook: Callable[[Engine], None] = lambda engine: None
    stop: Callable[[], None] = lambda: None


def seed(engine: Engine) -> list[int]:
    """Create ``bench_item`` afresh with SEED_ROWS rows; their ids."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add_all(Item(name=f"row{i}", n=0) for i in range(SEED_ROWS))
    with Session(engine) as session:
        return list(session.scalars(select(Item.id).order_by(Item.id)))


def _sqlite_tuning(engine: Engine) -> None:
    """``synchronous=NORMAL`` on each connection, as WAL-mode apps run (no fsync per commit)."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()


@contextmanager
def sqlite_backend() -> Iterator[Backend]:
    """A WAL-mode SQLite file; the replica opens the same file read-only (``mode=ro``)."""
    directory = Path(tempfile.mkdtemp(prefix="multidb-bench-"))
    path = directory / "main.db"
    try:
        engine = create_engine(f"sqlite:///{path}")
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode = WAL")
        ids = seed(engine)
        engine.dispose()
        yield Backend(
            "sqlite",
            f"sqlite:///{path}",
            f"sqlite:///file:{path}?mode=ro&uri=true",
            ids,
            connect_hook=_sqlite_tuning,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def postgresql_backend() -> Iterator[Backend]:
    """A PostgreSQL primary and one streaming standby from ``tests/servers.py``."""
    with server_cluster("postgresql") as (_, backend):
        yield backend


@contextmanager
def server_cluster(kind: str) -> Iterator[tuple[Any, Backend]]:
    """A ``kind`` (postgresql, mariadb) primary and one replica from ``tests/servers.py``,
    seeded; the cluster and its Backend. Stopped and removed at the end."""
    tests = Path(__file__).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tests))
    servers = importlib.import_module("servers")
    postgresql = kind == "postgresql"
    missing = servers.postgres_binaries_missing if postgresql else servers.mariadb_binaries_missing
    reason = missing()
    if reason is not None:
        raise RuntimeError(f"{kind} servers unavailable: {reason}")
    base = Path(tempfile.mkdtemp(prefix=f"multidb-bench-{kind}-"))
    base.chmod(0o755)  # the servers run as postgres / mysql when we are root
    try:
        if postgresql:
            cluster = servers.start_postgres_cluster(base, standbys=1)
        else:
            cluster = servers.start_mariadb_cluster(base, replicas=1)
        try:
            engine = create_engine(cluster.primary.url())
            ids = seed(engine)
            engine.dispose()
            cluster.wait_caught_up(timeout=30)
            yield cluster, Backend(kind, cluster.primary.url(), cluster.replicas[0].url(), ids)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def make_registry(
    backend: Backend, *, lag: bool, causal: bool = True, **routing: Any
) -> multidb.Registry:
    """A registry of one database, ``main``: the backend's primary and replica ``a``;
    ``routing`` adds to its ``routing:`` section."""
    routing["read_your_writes"] = causal
    if lag:
        # A limit no healthy replica reaches: the probes run, the routing stays the same.
        routing.update(max_lag_seconds=60, check_interval_seconds=1)
    registry = multidb.Registry.from_dict(
        {
            "databases": {
                DATABASE: {
                    "primary": backend.primary_url,
                    "replicas": {"a": backend.replica_url},
                    "routing": routing,
                }
            }
        }
    )
    for name in registry.engine_names:
        backend.connect_hook(registry.engine(name))
    return registry


def multidb_opener(registry: multidb.Registry, role: Role) -> Opener:
    """``registry.session("main", role=role)``, as an application writes it."""

    def open_session() -> AbstractContextManager[Session]:
        return registry.session(DATABASE, role=role)

    return open_session


# -- running ----------------------------------------------------------------------------------


def run(
    contenders: Sequence[Contender],
    workloads: Sequence[str],
    ids: Sequence[int],
    *,
    rounds: int,
    n: int,
) -> Results:
    """Run every fitting (workload, contender) pair ``rounds`` times, interleaved."""
    results = Results()
    warmup = max(1, min(n, 100))
    for round_ in range(-1, rounds):  # round -1 warms up and is not kept
        for workload in workloads:
            fitting = [c for c in contenders if workload in c.workloads]
            shift = round_ % len(fitting)
            for contender in fitting[shift:] + fitting[:shift]:
                count = warmup if round_ < 0 else n
                gc.collect()
                gc.disable()
                try:
                    # A fresh context per batch: the causal scope one batch's writes make
                    # (read-your-writes) constrains that batch's reads, not the next one's.
                    seconds = contextvars.Context().run(
                        WORKLOADS[workload], contender.open_session, count, ids
                    )
                finally:
                    gc.enable()
                if round_ >= 0:
                    results.add(workload, contender.name, seconds / count)
    return results


@contextmanager
def contenders(backend: Backend) -> Iterator[list[Contender]]:
    """The floors, multidb's sessions and the routing recipe on ``backend``; engines disposed
    at the end."""
    floor_write = create_engine(backend.primary_url)
    floor_read = create_engine(backend.replica_url)
    backend.connect_hook(floor_write)
    backend.connect_hook(floor_read)
    registry = make_registry(backend, lag=False)
    # Every session class is made once, as the registry makes its own.
    write_maker = sessionmaker(bind=floor_write)
    read_maker = sessionmaker(bind=floor_read)
    routing = sessionmaker(class_=RoutingSession, leader=floor_write, followers=[floor_read])
    try:
        yield [
            Contender("floor-write", Scope.opener(write_maker), ALL, "floor-write"),
            Contender("floor-read", Scope.opener(read_maker), READS, "floor-read"),
            Contender("multidb-write", multidb_opener(registry, "write"), ALL, "floor-write"),
            Contender("multidb-read", multidb_opener(registry, "read"), READS, "floor-read"),
            Contender("multidb-auto", multidb_opener(registry, "auto"), ALL, "floor-write"),
            Contender("routing", Scope.opener(routing), ALL, "floor-write"),
        ]
    finally:
        registry.dispose()
        floor_write.dispose()
        floor_read.dispose()


def overhead_table(backend: Backend, rounds: int, n: int) -> list[str]:
    """Run all contenders on ``backend``; the table's lines."""
    with contenders(backend) as chosen:
        results = run(chosen, ALL, backend.ids, rounds=rounds, n=n)
    lines = [
        f"backend {backend.name}: median of {rounds} rounds x {n} ops; "
        "floor-write = plain Session on a plain primary engine, "
        "floor-read = plain Session on a plain replica engine",
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


def lag_table(backend: Backend, rounds: int, n: int) -> list[str]:
    """multidb with lag checking on against off; the table's lines."""
    return on_off_table(backend, rounds, n, causal=False)


def causal_table(backend: Backend, rounds: int, n: int) -> list[str]:
    """multidb with read-your-writes on against off; the table's lines."""
    return on_off_table(backend, rounds, n, causal=True)


def on_off_table(backend: Backend, rounds: int, n: int, *, causal: bool) -> list[str]:
    """multidb with lag checking (or read-your-writes) on against off; the table's lines."""
    if causal:
        off = make_registry(backend, lag=False, causal=False)
        on = make_registry(backend, lag=False, causal=True)
    else:
        off = make_registry(backend, lag=False)
        on = make_registry(backend, lag=True)
    contenders: list[Contender] = []
    roles: tuple[tuple[Role, tuple[str, ...]], ...] = (
        ("write", ALL),
        ("read", READS),
        ("auto", ALL),
    )
    for role, workloads in roles:
        contenders.append(Contender(f"{role}-off", multidb_opener(off, role), workloads, ""))
        contenders.append(Contender(f"{role}-on", multidb_opener(on, role), workloads, ""))
    try:
        with on.session(DATABASE, role="read") as session:  # starts the lag monitor
            session.execute(select(1))
        results = run(contenders, ALL, backend.ids, rounds=rounds, n=n)
        stats = on.stats()
    finally:
        off.dispose()
        on.dispose()
    replica = stats[f"{DATABASE}.a"]
    primary = stats[f"{DATABASE}.primary"]
    if causal:
        lines = [
            f"backend {backend.name}, read-your-writes: on (default) vs read_your_writes: false;"
            f" median of {rounds} rounds x {n} ops",
            f"on registry: {replica.causal_waits} position checks on {DATABASE}.a, "
            f"{primary.causal_fallbacks} reads sent to the primary as the replica was behind",
        ]
    else:
        lines = [
            f"backend {backend.name}, lag checking: max_lag_seconds 60, check_interval_seconds 1 "
            f"(on) vs unset (off); median of {rounds} rounds x {n} ops",
            f"lag-on registry: {replica.lag_probes} lag probes of {DATABASE}.a, "
            f"{primary.fallbacks} reads fell back to the primary",
        ]
    lines += [
        f"{'workload':<9}{'role':<7}{'off us/op':>10}{'on us/op':>10}  {'on/off':>7}",
    ]
    for workload in ALL:
        for role in ("write", "read", "auto"):
            if (workload, f"{role}-off") not in results.times:
                continue
            us_off = results.median_us(workload, f"{role}-off")
            us_on = results.median_us(workload, f"{role}-on")
            lines.append(
                f"{workload:<9}{role:<7}{us_off:>10.1f}{us_on:>10.1f}  {us_on / us_off:>6.3f}x"
            )
    return lines


def environment() -> str:
    """One line: the machine and versions the figures come from."""
    return (
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )


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
    compare = parser.add_mutually_exclusive_group()
    compare.add_argument(
        "--lag", action="store_true", help="compare lag checking on against off instead"
    )
    compare.add_argument(
        "--causal", action="store_true", help="compare read-your-writes on against off instead"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.n < 1:
        parser.error("--rounds and --n must be at least 1")
    backends: list[Callable[[], AbstractContextManager[Backend]]] = []
    if args.backend in ("sqlite", "all"):
        backends.append(sqlite_backend)
    if args.backend in ("postgresql", "all"):
        backends.append(postgresql_backend)
    print(environment())
    print(
        "command: python benchmarks/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    table = lag_table if args.lag else causal_table if args.causal else overhead_table
    for make_backend in backends:
        with make_backend() as backend:
            print()
            for line in table(backend, args.rounds, args.n):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
