"""Faults under load on real clusters: a hung replica, a primary outage, growing lag, cold start.

Each test runs 8 to 32 threads sharing one registry and counts failed reads,
reads staler than ``max_lag_seconds`` and throughput. Which server answered is
asked of the server itself (``inet_server_port()``, ``@@server_id``). Every
test is bounded in time; small intervals keep the suite fast.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servers import MariaDBCluster, PostgresCluster, wait_until
from sqlalchemy import Column, Float, Integer, MetaData, Table, event, func, insert, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from multidb import NoReplicaAvailableError, Registry
from multidb.cli import main

metadata = MetaData()
ticks = Table(
    "ticks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
)

Cluster = PostgresCluster | MariaDBCluster
INTERVAL = 0.2  # check_interval_seconds in these tests
TIMEOUT = 1.0  # connect_timeout_seconds in these tests


@dataclass
class Backend:
    """One replication cluster, and how to ask a server who it is."""

    kind: str
    cluster: Cluster
    identity_sql: str
    names: dict[Any, str]  # identity answer -> server name

    @property
    def replicas(self) -> list[str]:
        return [r.name for r in self.cluster.replicas]

    def config(self, **routing: Any) -> dict[str, Any]:
        """No connect_args: the connect timeout is multidb's default."""
        replicas = {r.name.replace("-", "_"): r.url() for r in self.cluster.replicas}
        return {
            "databases": {
                "db": {
                    "primary": self.cluster.primary.url(),
                    "replicas": replicas,
                    "routing": {
                        "check_interval_seconds": INTERVAL,
                        "connect_timeout_seconds": TIMEOUT,
                        "cooldown_seconds": 2,
                        **routing,
                    },
                }
            }
        }

    def where(self, session: Session) -> str:
        return self.names[session.execute(text(self.identity_sql)).scalar()]


def engine_of(server: str) -> str:
    return f"db.{server.replace('-', '_')}"


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    fixture = "pg_cluster" if request.param == "postgresql" else "mariadb_cluster"
    cluster: Cluster = request.getfixturevalue(fixture)
    if request.param == "postgresql":
        backend = Backend(
            "postgresql",
            cluster,
            "SELECT inet_server_port()",
            {s.port: s.name for s in cluster.servers},
        )
    else:
        backend = Backend(
            "mariadb",
            cluster,
            "SELECT @@server_id",
            {s.server_id: s.name for s in cluster.servers},  # type: ignore[union-attr]
        )
    with Registry.from_dict(backend.config()) as setup:
        metadata.create_all(setup.engine("db"))
    cluster.wait_caught_up()
    yield backend
    for server in cluster.servers:
        if not server.is_running():
            server.start()
    cluster.wait_caught_up(timeout=30)


@dataclass
class Load:
    """Reader threads running ``read`` in a loop; what each read did, in wall-clock time."""

    read: Callable[[], str]
    threads: int
    done: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, server
    failures: list[tuple[float, BaseException]] = field(default_factory=list)
    starts: dict[int, float] = field(default_factory=dict)  # thread -> its current read's start
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.is_set():
            started = self.starts[me] = time.time()
            try:
                server = self.read()
            except BaseException as exc:
                self.failures.append((started, exc))
            else:
                self.done.append((started, time.time(), server))

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        assert not any(w.is_alive() for w in self._workers), "a reader is still stuck"

    def served(self, server: str | None = None) -> int:
        return sum(1 for _, _, s in self.done if server is None or s == server)

    def rate(self, start: float, end: float) -> float:
        """Reads completed per second between ``start`` and ``end``."""
        return sum(1 for _, e, _ in self.done if start <= e < end) / (end - start)


class Records(logging.Handler):
    """Log records of ``multidb.routing``, kept for their text and time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def first(self, *words: str) -> float | None:
        for record in list(self.records):
            if all(w in record.getMessage() for w in words):
                return record.created
        return None


@pytest.fixture
def routing_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("multidb.routing")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


# -- a hung replica ---------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigstopped_replica_is_left_out_within_interval_plus_timeout_and_costs_no_read(
    backend: Backend, routing_log: Records
) -> None:
    victim = backend.cluster.replicas[0]
    victim_engine = engine_of(victim.name)
    bound = INTERVAL + TIMEOUT
    with Registry.from_dict(backend.config()) as dbs:

        def read() -> str:
            with dbs.session("db", role="read") as s:
                return backend.where(s)

        touched: list[float] = []  # start times of reads that sent a statement to the victim

        with Load(read, threads=10) as load:

            @event.listens_for(dbs.engine(victim_engine), "before_cursor_execute")
            def on_victim(*args: Any) -> None:
                touched.append(load.starts[threading.get_ident()])

            # Warm up (every thread has its pooled connections) before the baseline.
            wait_until(lambda: load.served(victim.name) >= 500, timeout=20, message="warm-up")
            baseline_start = time.time()
            time.sleep(1.0)  # a window to measure the baseline throughput in
            baseline = load.rate(baseline_start, time.time())
            with victim.frozen():
                frozen_at = time.time()
                time.sleep(1.5)
                # A registry started while the victim hangs reads from the other
                # replica, and disposing of it does not wait for the hung server.
                with Registry.from_dict(backend.config()) as fresh:
                    with fresh.session("db", role="read") as s:
                        fresh_read = backend.where(s)
                    disposing = time.monotonic()
                disposed_in = time.monotonic() - disposing
                time.sleep(max(0.0, frozen_at + 3.0 - time.time()))  # hung for 3 s in all
                thawed_at = time.time()
            wait_until(lambda: load.served(victim.name) > 0, timeout=10)
            wait_until(lambda: time.time() > thawed_at + 0.5, timeout=5)
        ejected_at = routing_log.first(victim_engine, "left out until it answers again")
        assert ejected_at is not None, [r.getMessage() for r in routing_log.records]
        # Throughput per 0.25 s window from the freeze on: when is it back above half?
        step = 0.25
        windows = [frozen_at + i * step for i in range(int(3.0 / step))]
        rates = [load.rate(t, t + step) for t in windows]
        dip = next((i for i, r in enumerate(rates) if r < baseline / 2), None)
        recovered_at = frozen_at  # no window below half: nothing to recover from
        if dip is not None:
            back = next((i for i in range(dip, len(rates)) if rates[i] >= baseline / 2), None)
            recovered_at = windows[back] + step if back is not None else float("inf")
        late = [t for t in touched if ejected_at <= t < thawed_at]
        print(
            f"{backend.kind}: {load.served()} reads by 10 threads, {len(load.failures)} failed; "
            f"baseline {baseline:.0f}/s; {victim.name} ejected {ejected_at - frozen_at:.2f}s "
            f"after SIGSTOP (bound {bound}s); throughput back above half "
            f"{recovered_at - frozen_at:.2f}s after SIGSTOP; per 0.25 s: "
            f"{[round(r) for r in rates]}; "
            f"{len(late)} reads started after the ejection touched it; a registry started "
            f"during the hang read from {fresh_read}, disposed in {disposed_in:.2f}s"
        )
    assert load.failures == []
    assert fresh_read == backend.cluster.replicas[1].name
    assert disposed_in < 0.5, disposed_in  # no hang
    assert ejected_at - frozen_at <= bound + 0.5
    assert recovered_at - frozen_at <= bound + 0.5 + step
    assert late == []
    assert dbs.stats()[victim_engine].error_ejections >= 1


# -- a primary outage -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_primary_down_5s_with_max_lag_costs_no_failed_read(backend: Backend) -> None:
    primary = backend.cluster.primary
    with Registry.from_dict(backend.config(max_lag_seconds=10)) as dbs:

        def read() -> str:
            with dbs.session("db", role="read") as s:
                return backend.where(s)

        with Load(read, threads=8) as load:
            wait_until(lambda: load.served() >= 100, timeout=20)
            primary.stop(crash=True)
            down_at = time.time()
            time.sleep(5.0)  # the outage
            up_at = time.time()
            primary.start()
            wait_until(lambda: load.rate(time.time() - 0.5, time.time()) > 0, timeout=10)
        during = Counter(s for start, _, s in load.done if down_at + 0.1 < start < up_at)
        print(
            f"{backend.kind}: primary down 5s under max_lag_seconds=10: {load.served()} reads, "
            f"{len(load.failures)} failed; during the outage {dict(during)}"
        )
    assert load.failures == []
    assert sum(during.values()) > 100
    assert set(during) <= set(backend.replicas)


# -- growing lag ------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_growing_lag_serves_no_read_staler_than_max_lag(backend: Backend) -> None:
    delayed, other = backend.cluster.replicas
    max_lag = 1.0
    commits: dict[int, float] = {}  # tick id -> time.time() its commit returned
    stop = threading.Event()
    with Registry.from_dict(backend.config(max_lag_seconds=max_lag)) as dbs:

        def write() -> None:
            while not stop.is_set():
                with dbs.session("db", role="write") as s:
                    result = s.connection().execute(insert(ticks).values(at=time.time()))
                    (tick_id,) = result.inserted_primary_key or (0,)
                commits[tick_id] = time.time()
                stop.wait(0.02)

        def read() -> str:
            with dbs.session("db", role="read") as s:
                seen = s.scalar(select(func.max(ticks.c.id))) or 0
                where = backend.where(s)
            reads.append((started_of[threading.get_ident()], seen, where))
            return where

        reads: list[tuple[float, int, str]] = []
        started_of: dict[int, float] = {}  # the Load's, known to read() before its threads start
        writer = threading.Thread(target=write)
        writer.start()
        try:
            with Load(read, threads=8, starts=started_of) as load:
                wait_until(lambda: len(reads) >= 100, timeout=20)
                with delayed.apply_delay(2):
                    # Lag grows to 2 s, past the limit: the replica goes out.
                    wait_until(
                        lambda: not dbs.stats()[engine_of(delayed.name)].in_rotation,
                        timeout=10,
                        message="delayed replica left out",
                    )
                    time.sleep(1.0)  # reads go on while it is out
        finally:
            stop.set()
            writer.join()
        stats = dbs.stats()

    def staleness(started: float, seen: int) -> float:
        """How long before the read began the first tick it missed was committed."""
        missed = commits.get(seen + 1)
        return 0.0 if missed is None or missed >= started else started - missed

    stale = [(s, seen, w) for s, seen, w in reads if staleness(s, seen) > max_lag]
    worst = max(staleness(s, seen) for s, seen, _ in reads)
    share = Counter(w for _, _, w in reads)
    print(
        f"{backend.kind}: {len(reads)} reads under growing lag (apply delay 2s, max 1s): "
        f"{len(stale)} staler than the limit, worst {worst:.2f}s, {len(load.failures)} failed; "
        f"{dict(share)}; {delayed.name} lag ejections "
        f"{stats[engine_of(delayed.name)].lag_ejections}"
    )
    assert stale == []
    assert load.failures == []
    assert stats[engine_of(delayed.name)].lag_ejections >= 1
    assert share[other.name] > share[backend.cluster.primary.name]


# -- cold start -------------------------------------------------------------------------


def test_32_concurrent_first_reads_all_use_replicas(backend: Backend) -> None:
    # The default connect timeout: the first round has room on a loaded machine.
    config = backend.config(max_lag_seconds=5, fallback_to_primary=False, connect_timeout_seconds=5)
    served: list[str] = []
    errors: list[BaseException] = []
    with Registry.from_dict(config) as dbs:
        barrier = threading.Barrier(32)

        def first_read() -> None:
            barrier.wait()
            try:
                with dbs.session("db", role="read") as s:
                    served.append(backend.where(s))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=first_read) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    print(f"{backend.kind}: 32 concurrent first reads: {dict(Counter(served))}, {errors}")
    assert not any(isinstance(e, NoReplicaAvailableError) for e in errors), errors
    assert errors == []
    assert len(served) == 32
    assert set(served) <= set(backend.replicas)


# -- PostgreSQL lag while WAL is written without commits --------------------------------


@pytest.mark.postgresql
@pytest.mark.timeout(60)
def test_pg_lag_stays_near_zero_while_the_primary_writes_wal_without_committing(
    pg_cluster: PostgresCluster,
) -> None:
    backend = Backend("postgresql", pg_cluster, "SELECT inet_server_port()", {})
    standby = pg_cluster.standbys[0]
    pg_cluster.primary.query("CREATE TABLE IF NOT EXISTS wal_filler (pad text)", admin=False)
    pg_cluster.wait_caught_up()
    with Registry.from_dict(backend.config(max_lag_seconds=1)) as dbs:
        dbs.health()
        # The standby's last replayed commit gets old: what the old probe measured.
        wait_until(
            lambda: (
                standby.query(
                    "SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
                )[0][0]
                > 1.5
            ),
            timeout=20,
        )
        start_lsn = pg_cluster.primary.query("SELECT pg_current_wal_lsn()::text")[0][0]
        writing = threading.Event()
        stop = threading.Event()

        def write_without_commit() -> None:
            conn = pg_cluster.primary.connect(admin=False)
            conn.autocommit = False
            try:
                with conn.cursor() as cur:
                    # A steady stream (about 2 MB/s) that two standbys on a busy
                    # two-core machine replay as it comes: at 6 MB/s, with the rest of
                    # the suite running, replay itself once fell 1.5 s behind, which
                    # is real lag.
                    while not stop.is_set():
                        cur.execute(
                            "INSERT INTO wal_filler SELECT repeat('x', 200)"
                            " FROM generate_series(1, 150)"
                        )
                        writing.set()
                        stop.wait(0.02)
                conn.rollback()
            finally:
                conn.close()

        writer = threading.Thread(target=write_without_commit)
        writer.start()
        lags: list[float | None] = []
        out_of_rotation = 0
        try:
            writing.wait(5)
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                lags += [s.lag_seconds for s in dbs.health() if s.role == "replica"]
                stats = dbs.stats()
                out_of_rotation += sum(
                    not stats[engine_of(s.name)].in_rotation for s in pg_cluster.standbys
                )
        finally:
            stop.set()
            writer.join()
        written = float(
            pg_cluster.primary.query(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (start_lsn,)
            )[0][0]
        )
    known = [lag for lag in lags if lag is not None]
    print(
        f"postgresql: {written / 1e6:.0f} MB of WAL written without a commit; "
        f"{len(lags)} lag readings, max {max(known):.3f}s, {len(lags) - len(known)} unknown; "
        f"{out_of_rotation} out-of-rotation observations"
    )
    assert written > 1e6
    assert len(known) == len(lags) and max(known) < 1.0
    assert out_of_rotation == 0


# -- check and connect timeouts against a server that never answers ---------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local TCP port whose kernel accepts connections that nothing ever answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_check_reports_servers_that_never_answer_as_fail_within_the_timeout(
    tmp_path: Path, silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "silent.yaml"
    path.write_text(
        "databases:\n"
        "  pg:\n"
        f"    primary: postgresql+psycopg2://app:pw@127.0.0.1:{silent_port}/app\n"
        f"    replicas: [postgresql+psycopg2://app:pw@127.0.0.1:{silent_port}/app]\n"
        f"  my: mysql+pymysql://app:pw@127.0.0.1:{silent_port}/app\n"
        f"  local: sqlite:///{tmp_path}/local.db\n"
    )
    started = time.monotonic()
    code = main(["check", str(path), "--timeout", "1"])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    print(out, f"in {elapsed:.2f}s")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 1
    for name in ("pg.primary", "pg.replica1", "my.primary"):
        assert " FAIL " in rows[name] and "no answer within" in rows[name], rows[name]
    assert " OK " in rows["local.primary"]
    assert elapsed < 3.0  # every engine at once, each bounded by --timeout 1


@pytest.mark.parametrize(
    ("url", "key", "expected"),
    [
        ("postgresql+psycopg2://app@127.0.0.1:{port}/app", "connect_timeout", 2),
        ("mysql+pymysql://app@127.0.0.1:{port}/app", "connect_timeout", 1.5),
    ],
)
def test_every_engine_gets_the_connect_timeout_unless_its_options_set_one(
    silent_port: int, url: str, key: str, expected: float
) -> None:
    url = url.format(port=silent_port)
    routing = {"connect_timeout_seconds": 1.5}
    config = {
        "databases": {
            "a": {"url": url, "routing": routing},
            "b": {"url": url, "routing": routing, "options": {"connect_args": {key: 7}}},
        }
    }
    given: dict[str, Any] = {}

    class RecordedError(Exception):
        pass

    with Registry.from_dict(config) as dbs:

        @event.listens_for(dbs.engine("a"), "do_connect")
        def record_a(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
            given["a"] = cparams.get(key)

        @event.listens_for(dbs.engine("b"), "do_connect")
        def record_b(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
            given["b"] = cparams.get(key)
            raise RecordedError  # no need to wait 7 s

        started = time.monotonic()
        with pytest.raises(OperationalError), dbs.session("a") as s:
            s.execute(text("SELECT 1"))
        elapsed = time.monotonic() - started
        with pytest.raises(RecordedError), dbs.session("b") as s:
            s.execute(text("SELECT 1"))
    assert given == {"a": expected, "b": 7}
    assert elapsed < expected + 2  # it gave up on the silent server: no hang


@pytest.mark.mariadb
def test_pymysql_reads_after_the_handshake_keep_the_configured_read_timeout(
    mariadb_cluster: MariaDBCluster,
) -> None:
    """Pins PyMySQL's ``Connection._read_timeout``, which the handshake timeout relies on."""
    url = mariadb_cluster.primary.url()
    config = {
        "databases": {
            "plain": url,
            "bounded": {"url": url, "options": {"connect_args": {"read_timeout": 30}}},
        }
    }
    with Registry.from_dict(config) as dbs:
        for name, expected in (("plain", None), ("bounded", 30)):
            with dbs.session(name) as s:
                s.execute(text("SELECT 1"))
                raw = s.connection().connection.dbapi_connection
                assert raw is not None
                assert raw._read_timeout == expected
                assert raw._sock.gettimeout() == expected
