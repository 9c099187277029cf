"""What each session sends to the servers per operation, read from the servers' own logs.

    python benchmarks/roundtrips.py [--backend postgresql|mariadb|all] [--n N]

Wall-clock on a real server moves by 10% from run to run; the statements a
session sends do not, and on a network each one is a round trip. Every
contender of ``overhead.py`` (the plain floors, multidb's sessions, the
routing recipe) runs each workload W1-W4 N times between two markers, and
the servers say what reached them: PostgreSQL with ``log_statement = all``,
MariaDB with its general log (both switched on for the run, then off again).
A row counts one operation's statements on the primary and on the replica;
``extra`` names what a contender sends more often than its floor.

Each backend through its sync driver (psycopg2, PyMySQL: ``overhead.py``'s
contenders) and its async ones (asyncpg and psycopg 3, aiomysql:
``async_overhead.py``'s); each a cluster of its own from ``tests/servers.py``:
a primary and one replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
import async_overhead
import overhead

__all__ = ["ASYNC_DRIVERS", "main", "table"]

_MARK = "multidb-mark"
# What only the health monitor asks (on connections of its own): left out of the counts.
_PROBES = ("pg_is_in_recovery()", "@@global.")
_PG_LINE = re.compile(r"\S+ \S+ \S+ \[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)")


class Log(Protocol):
    """One server's statement log, switched on for a run."""

    def mark(self, label: str) -> None: ...
    def statements(self) -> list[tuple[str, str]]:
        """(connection, statement) in the order the server ran them."""
        ...


class PostgresLog:
    """``log_statement = all`` on a ``tests/servers.py`` PostgreSQL server, read from its log."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.start = server.log_file.stat().st_size

    @contextmanager
    def on(self) -> Iterator[PostgresLog]:
        self._set("ALTER SYSTEM SET log_statement = 'all'")
        try:
            deadline = time.monotonic() + 10
            while not any(_MARK in s for _, s in self.statements()):  # until the reload took
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.server.name}: log_statement did not take effect")
                self.mark("on")
                time.sleep(0.05)
            yield self
        finally:
            self._set("ALTER SYSTEM RESET log_statement")

    def _set(self, sql: str) -> None:
        self.server.query(sql)
        self.server.query("SELECT pg_reload_conf()")

    def mark(self, label: str) -> None:
        self.server.query(f"SELECT '{_MARK} {label}'")

    def statements(self) -> list[tuple[str, str]]:
        with self.server.log_file.open(errors="replace") as log:
            log.seek(self.start)
            return [(m[1], m[2]) for m in map(_PG_LINE.match, log) if m is not None]


class MariaDBLog:
    """The general log of a ``tests/servers.py`` MariaDB server, kept in ``mysql.general_log``."""

    def __init__(self, server: Any) -> None:
        self.server = server

    @contextmanager
    def on(self) -> Iterator[MariaDBLog]:
        self.server.query("SET GLOBAL general_log = OFF")
        self.server.query("TRUNCATE TABLE mysql.general_log")
        self.server.query("SET GLOBAL log_output = 'TABLE'")
        self.server.query("SET GLOBAL general_log = ON")
        try:
            yield self
        finally:
            self.server.query("SET GLOBAL general_log = OFF")

    def mark(self, label: str) -> None:
        self.server.query(f"SELECT '{_MARK} {label}'")

    def statements(self) -> list[tuple[str, str]]:
        rows = self.server.query(
            "SELECT thread_id, argument FROM mysql.general_log"
            " WHERE command_type IN ('Query', 'Execute')"
            " AND user_host NOT LIKE '%<replication_slave>%'"  # not what a replica replays
        )
        return [(str(t), a.decode() if isinstance(a, bytes) else str(a)) for t, a in rows]


def _shape(statement: str) -> str:
    """A statement without its values, for telling what was sent more often."""
    shape = re.sub(r"'[^']*'", "'?'", " ".join(statement.split()))
    return re.sub(r"\b\d+\b", "?", shape)[:64]


def _windows(log: Log) -> dict[str, Counter[str]]:
    """The statements between each label's begin and end markers, by shape; the markers'
    and the health monitor's own connections left out."""
    entries = log.statements()
    others = {
        c for c, statement in entries if _MARK in statement or any(p in statement for p in _PROBES)
    }
    found: dict[str, Counter[str]] = {}
    current: Counter[str] | None = None
    for conn, statement in entries:
        if _MARK in statement:
            label = statement.split(_MARK, 1)[1].split("'")[0].strip()
            begins = label.endswith(" begin")
            current = found.setdefault(label.removesuffix(" begin"), Counter()) if begins else None
        elif current is not None and conn not in others:
            current[_shape(statement)] += 1
    return found


ASYNC_DRIVERS = {"postgresql": ("asyncpg", "psycopg"), "mariadb": ("aiomysql",)}


def table(
    name: str,
    primary: Log,
    replica: Log,
    backend: overhead.Backend,
    n: int,
    driver: str | None = None,
) -> list[str]:
    """Run every contender's workloads ``n`` times on ``backend``; the table's lines.

    ``driver`` (one of :data:`ASYNC_DRIVERS`) runs ``async_overhead.py``'s
    contenders through it instead of ``overhead.py``'s.
    """
    tag = driver or "sync"
    if driver is None:
        with overhead.contenders(backend) as chosen:
            for workload, contender in _pairs(chosen):
                run = overhead.WORKLOADS[workload]
                contextvars.Context().run(run, contender.open_session, 2, backend.ids)  # warm
                with _marked(f"{tag} {workload} {contender.name}", primary, replica):
                    contextvars.Context().run(run, contender.open_session, n, backend.ids)
    else:
        chosen = asyncio.run(_run_async(primary, replica, backend, n, driver))
    on_primary, on_replica = _windows(primary), _windows(replica)
    lines = [
        f"backend {name}{'' if driver is None else '+' + driver}: statements per operation"
        f" as the servers logged them, {n} operations",
        f"{'workload':<9}{'contender':<15}{'primary':>8}{'replica':>8}{'total':>7}  extra",
    ]
    for workload, contender in _pairs(chosen):
        label, floor = (f"{tag} {workload} {c}" for c in (contender.name, contender.floor))
        sent = on_primary.get(label, Counter()) + on_replica.get(label, Counter())
        base = on_primary.get(floor, Counter()) + on_replica.get(floor, Counter())
        p, r = (sum(w.get(label, Counter()).values()) / n for w in (on_primary, on_replica))
        extra = ""
        if label != floor:
            more = [f"+{k / n:.2f} {shape}" for shape, k in (sent - base).most_common(2)]
            fewer = [f"-{k / n:.2f} {shape}" for shape, k in (base - sent).most_common(1)]
            extra = f"{(sum(sent.values()) - sum(base.values())) / n:+.2f}"
            if more or fewer:
                extra += f" ({', '.join(more + fewer)})"
        lines.append(f"{workload:<9}{contender.name:<15}{p:>8.2f}{r:>8.2f}{p + r:>7.2f}  {extra}")
    return lines


async def _run_async(
    primary: Log, replica: Log, backend: overhead.Backend, n: int, driver: str
) -> list[Any]:
    """``table()``'s runs for an async driver; the contenders it ran."""
    primary_url, replica_url = (
        async_overhead._async_url(url, driver) for url in (backend.primary_url, backend.replica_url)
    )
    target = async_overhead.AsyncBackend(driver, primary_url, replica_url, backend.ids, False)
    async with async_overhead.contenders(target) as chosen:
        for workload, contender in _pairs(chosen):
            run = async_overhead.WORKLOADS[workload]
            await _fresh(run(contender.open_session, 2, backend.ids))  # warm
            with _marked(f"{driver} {workload} {contender.name}", primary, replica):
                await _fresh(run(contender.open_session, n, backend.ids))
    return list(chosen)


def _pairs(chosen: Sequence[Any]) -> Iterator[tuple[str, Any]]:
    """Each workload with each contender it fits, in table order."""
    for workload in overhead.ALL:
        for contender in chosen:
            if workload in contender.workloads:
                yield workload, contender


def _fresh(batch: Awaitable[float]) -> Awaitable[float]:
    """``batch`` as a task of a fresh context: one batch's causal scope is its own."""
    return contextvars.Context().run(asyncio.ensure_future, batch)


@contextmanager
def _marked(label: str, *logs: Log) -> Iterator[None]:
    """Markers around a batch, in every log."""
    for log in logs:
        log.mark(f"{label} begin")
    yield
    for log in logs:
        log.mark(f"{label} end")


@contextmanager
def _cluster(kind: str) -> Iterator[tuple[Log, Log, overhead.Backend]]:
    """A primary and one replica of ``kind``, seeded, with their statement logs on."""
    with overhead.server_cluster(kind) as (cluster, backend):
        logs = PostgresLog if kind == "postgresql" else MariaDBLog
        with logs(cluster.primary).on() as primary, logs(cluster.replicas[0]).on() as replica:
            yield primary, replica, backend


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run, print the tables; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20, help="operations per workload; default 20")
    parser.add_argument(
        "--backend", choices=("postgresql", "mariadb", "all"), default="all", help="default all"
    )
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    print(overhead.environment())
    print(
        "command: python benchmarks/roundtrips.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    kinds = ["postgresql", "mariadb"] if args.backend == "all" else [args.backend]
    for kind in kinds:
        with _cluster(kind) as (primary, replica, backend):
            for driver in (None, *ASYNC_DRIVERS[kind]):
                print()
                for line in table(kind, primary, replica, backend, args.n, driver):
                    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
