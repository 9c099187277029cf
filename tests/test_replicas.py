"""Routing on real replication: PostgreSQL hot standbys and MariaDB replicas.

Which server ran a statement is asked of the server itself
(``inet_server_port()``, ``@@server_id``, ``pg_is_in_recovery()``), never taken
from the router. Every test runs on both backends.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from servers import MariaDBCluster, PostgresCluster, wait_until
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.orm import Session

from multidb import NoReplicaAvailableError, Registry

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("marker", String(64), nullable=False),
)

Cluster = PostgresCluster | MariaDBCluster


@dataclass
class Backend:
    """One replication cluster, and how to ask a server who it is."""

    kind: str
    cluster: Cluster
    identity_sql: str
    names: dict[Any, str]  # identity answer -> server name

    @property
    def primary(self) -> str:
        return self.cluster.primary.name

    @property
    def replicas(self) -> list[str]:
        return [r.name for r in self.cluster.replicas]

    def config(self, weights: dict[str, float] | None = None, **routing: Any) -> dict[str, Any]:
        timeout = {"connect_timeout": 2}
        replicas = {
            r.name.replace("-", "_"): {"url": r.url(), "weight": (weights or {}).get(r.name, 1)}
            for r in self.cluster.replicas
        }
        return {
            "databases": {
                "db": {
                    "primary": self.cluster.primary.url(),
                    "replicas": replicas,
                    "options": {"connect_args": timeout},
                    "routing": {"cooldown_seconds": 2, **routing},
                }
            }
        }

    def where(self, session: Session) -> str:
        """The server that runs ``session``'s next statement, as the server says."""
        return self.names[session.execute(text(self.identity_sql)).scalar()]


def _backend(kind: str, cluster: Cluster) -> Backend:
    if kind == "postgresql":
        names = {s.port: s.name for s in cluster.servers}
        return Backend(kind, cluster, "SELECT inet_server_port()", names)
    assert isinstance(cluster, MariaDBCluster)
    return Backend(
        kind, cluster, "SELECT @@server_id", {s.server_id: s.name for s in cluster.servers}
    )


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    fixture = "pg_cluster" if request.param == "postgresql" else "mariadb_cluster"
    cluster = request.getfixturevalue(fixture)
    backend = _backend(request.param, cluster)
    with Registry.from_dict(backend.config()) as setup:
        metadata.create_all(setup.engine("db"))
    cluster.wait_caught_up()
    yield backend
    # Leave the cluster as the next test expects it: every server up, replay running.
    for replica in cluster.replicas:
        if not replica.is_running():
            replica.start()
        if replica.replay_paused:
            replica.resume_replay()
    cluster.wait_caught_up(timeout=30)


def engine_of(server: str) -> str:
    """The multidb engine name of a server: ``pg-standby1`` -> ``db.pg_standby1``."""
    return f"db.{server.replace('-', '_')}"


def write_marker(registry: Registry) -> str:
    marker = uuid.uuid4().hex
    with registry.session("db", role="write") as s:
        s.execute(insert(items).values(marker=marker))
    return marker


def sees(session: Session, marker: str) -> bool:
    return session.scalar(select(items.c.id).where(items.c.marker == marker)) is not None


# -- where statements run -----------------------------------------------------------


def test_read_sessions_run_on_a_replica_and_writes_on_the_primary(backend: Backend) -> None:
    with Registry.from_dict(backend.config()) as dbs:
        for _ in range(4):
            with dbs.session("db", role="read") as s:
                assert backend.where(s) in backend.replicas
                if backend.kind == "postgresql":
                    assert s.execute(text("SELECT pg_is_in_recovery()")).scalar() is True
        with dbs.session("db", role="write") as s:
            assert backend.where(s) == backend.primary
            if backend.kind == "postgresql":
                assert s.execute(text("SELECT pg_is_in_recovery()")).scalar() is False


def test_auto_session_reads_its_own_write_before_and_after_commit(backend: Backend) -> None:
    with Registry.from_dict(backend.config()) as dbs, dbs.session("db", role="auto") as s:
        assert backend.where(s) in backend.replicas
        marker = uuid.uuid4().hex
        s.execute(insert(items).values(marker=marker))
        assert backend.where(s) == backend.primary
        assert sees(s, marker)
        s.commit()
        assert sees(s, marker)
        assert backend.where(s) == backend.primary


def test_auto_session_runs_a_select_that_writes_once_on_the_primary(backend: Backend) -> None:
    """A SELECT that writes from inside (PostgreSQL: a data-modifying CTE; MariaDB:
    NEXTVAL) is refused by the replica's guard before it is sent, then run on the primary."""
    marker = uuid.uuid4().hex
    with Registry.from_dict(backend.config()) as dbs:
        if backend.kind == "postgresql":
            writes = select(insert(items).values(marker=marker).returning(items.c.id).cte("w").c.id)
        else:
            with dbs.session("db", role="write") as w:
                w.execute(text("CREATE SEQUENCE IF NOT EXISTS items_seq"))
            writes = select(func.nextval(literal_column("items_seq")))
        with dbs.session("db", role="auto") as s:
            assert backend.where(s) in backend.replicas
            value = s.scalar(writes)
            assert backend.where(s) == backend.primary
            if backend.kind == "mariadb":  # the sequence moved on this connection, the primary's
                assert s.scalar(text("SELECT LASTVAL(items_seq)")) == value
        with dbs.session("db", role="write") as s:
            if backend.kind == "postgresql":
                rows = s.scalars(select(items.c.id).where(items.c.marker == marker)).all()
                assert rows == [value]


def test_read_session_that_fell_back_to_the_primary_cannot_write_there(backend: Backend) -> None:
    config = backend.config()
    for replica in config["databases"]["db"]["replicas"].values():
        replica["weight"] = 0  # no usable replica: reads fall back
    with Registry.from_dict(config) as dbs, dbs.session("db", role="read") as s:
        assert backend.where(s) == backend.primary
        raw = s.connection().connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        with pytest.raises(Exception, match=r"(?i)read.only"):  # the server refuses it
            cursor.execute("INSERT INTO items (marker) VALUES ('refused')")
    with Registry.from_dict(backend.config()) as dbs, dbs.session("db", role="write") as s:
        assert not sees(s, "refused")


def test_read_only_mode_does_not_leak_into_the_primary_pool(backend: Backend) -> None:
    config = backend.config()
    config["databases"]["db"]["options"].update(pool_size=1, max_overflow=0)
    with Registry.from_dict(config) as dbs:
        with dbs.session("db.primary", role="read") as s:
            s.scalar(select(items.c.id).limit(1))
        with dbs.session("db", role="write") as s:  # the same pooled connection
            s.execute(insert(items).values(marker="after-read"))


def test_weights_1_and_3_share_400_read_sessions_25_75(backend: Backend) -> None:
    first, second = backend.replicas
    with Registry.from_dict(backend.config({first: 1, second: 3})) as dbs:  # smooth round robin
        counts: Counter[str] = Counter()
        for _ in range(400):
            with dbs.session("db", role="read") as s:
                counts[backend.where(s)] += 1
    print(f"{backend.kind}: 400 read sessions, weights 1/3: {dict(counts)}")
    assert abs(counts[first] / 400 - 0.25) <= 0.05, counts
    assert abs(counts[second] / 400 - 0.75) <= 0.05, counts


def test_weight_0_gets_no_reads(backend: Backend) -> None:
    first, second = backend.replicas
    with Registry.from_dict(backend.config({first: 0, second: 1})) as dbs:
        for _ in range(20):
            with dbs.session("db", role="read") as s:
                assert backend.where(s) == second


# -- failures -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_replica_stopped_under_load_costs_no_failed_read(backend: Backend) -> None:
    victim = backend.cluster.replicas[0]
    served: Counter[str] = Counter()
    failures: list[BaseException] = []
    stop = threading.Event()
    with Registry.from_dict(backend.config(cooldown_seconds=2)) as dbs:

        def reader() -> None:
            while not stop.is_set():
                try:
                    with dbs.session("db", role="read") as s:
                        served[backend.where(s)] += 1
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: served[victim.name] >= 20, timeout=30, message="victim serves")
            victim.stop(crash=True)
            before = sum(served.values())
            wait_until(lambda: sum(served.values()) >= before + 200, timeout=30)
            victim.start()
            restarted = time.monotonic()
            back = served[victim.name]
            # Left out for cooldown_seconds (2), then it serves again.
            wait_until(lambda: served[victim.name] > back, timeout=2 + 8, message="victim back")
            print(
                f"{backend.kind}: {sum(served.values())} reads by 8 threads, "
                f"{len(failures)} failed; {victim.name} served again "
                f"{time.monotonic() - restarted:.1f}s after restart (cooldown 2s)"
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert failures == []
    assert dbs.stats()[engine_of(victim.name)].error_ejections >= 1


@pytest.mark.parametrize("path", ["connection", "exec_driver_sql", "execute"])
def test_a_stopped_replica_costs_no_failed_read_on_any_path_and_is_ejected(
    backend: Backend, path: str
) -> None:
    """Reads through ``session.connection()`` (pandas.read_sql) fail over like execute()."""
    victim = backend.cluster.replicas[0]
    failures: list[BaseException] = []
    served: Counter[str] = Counter()
    with Registry.from_dict(backend.config(cooldown_seconds=30)) as dbs:
        for _ in range(4):  # pooled connections to both replicas
            with dbs.session("db", role="read") as s:
                backend.where(s)
        victim.stop(crash=True)
        for _ in range(20):
            try:
                with dbs.session("db", role="read") as s:
                    if path == "connection":
                        value = s.connection().execute(text(backend.identity_sql)).scalar()
                    elif path == "exec_driver_sql":
                        value = s.connection().exec_driver_sql(backend.identity_sql).scalar()
                    else:
                        value = s.execute(text(backend.identity_sql)).scalar()
                    served[backend.names[value]] += 1
            except Exception as exc:
                failures.append(exc)
        ejections = dbs.stats()[engine_of(victim.name)].error_ejections
    print(f"{backend.kind} via {path}: 20 reads, {len(failures)} failed, served {dict(served)}")
    assert failures == []
    assert served[victim.name] == 0
    assert ejections >= 1


def test_read_session_whose_replica_dies_after_its_reads_ends_without_error(
    backend: Backend,
) -> None:
    first, second = backend.replicas
    with Registry.from_dict(backend.config({first: 1, second: 0})) as dbs:
        with dbs.session("db", role="read") as s:
            assert backend.where(s) == first
            backend.cluster.replicas[0].stop(crash=True)
        # and the next read moves on (the primary, as the other replica has weight 0)
        with dbs.session("db", role="read") as s:
            assert backend.where(s) == backend.primary


def test_replay_paused_replica_is_left_out_once_over_max_lag(backend: Backend) -> None:
    paused, other = backend.cluster.replicas
    config = backend.config(max_lag_seconds=1, check_interval_seconds=0.2)
    engine_name = engine_of(paused.name)
    with Registry.from_dict(config) as dbs:
        with dbs.session("db", role="read") as s:  # starts the lag monitor
            s.execute(text("SELECT 1"))
        wait_until(
            lambda: dbs.stats()[engine_name].in_rotation,
            timeout=10,
            message=f"{engine_name} never in rotation: {dbs.health()}",
        )
        paused.pause_replay()
        marker = write_marker(dbs)
        # After the limit (max lag + one probe interval) the paused replica is out...
        wait_until(
            lambda: not dbs.stats()[engine_name].in_rotation,
            timeout=1 + 0.2 + 2,
            message="paused replica left out",
        )
        backend.cluster.wait_caught_up()  # the other replica has the write
        for _ in range(20):
            with dbs.session("db", role="read") as s:
                assert backend.where(s) == other.name
                assert sees(s, marker)
        print(f"{backend.kind}: 20 read sessions after the write, 0 stale, all on {other.name}")
        # ...and after resume it serves reads again.
        paused.resume_replay()
        served: set[str] = set()

        def paused_serves_again() -> bool:
            with dbs.session("db", role="read") as s:
                served.add(backend.where(s))
                return paused.name in served

        wait_until(paused_serves_again, timeout=10, message="resumed replica back")


@pytest.mark.timeout(60)
def test_every_replica_stopped_without_fallback_raises_quickly(backend: Backend) -> None:
    for replica in backend.cluster.replicas:
        replica.stop(crash=True)
    with Registry.from_dict(backend.config(fallback_to_primary=False)) as dbs:
        started = time.monotonic()
        with pytest.raises(NoReplicaAvailableError), dbs.session("db", role="read") as s:
            s.execute(text("SELECT 1"))
        elapsed = time.monotonic() - started
    print(f"{backend.kind}: NoReplicaAvailableError after {elapsed:.2f}s")
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_lag_probes_are_bounded_by_time_not_by_reads(backend: Backend) -> None:
    config = backend.config(max_lag_seconds=5, check_interval_seconds=0.5)
    with Registry.from_dict(config) as dbs:
        started = time.monotonic()
        reads = 0
        while reads < 300 or time.monotonic() - started < 1.0:
            with dbs.session("db", role="read") as s:
                s.execute(text("SELECT 1"))
            reads += 1
        elapsed = time.monotonic() - started
        stats = dbs.stats()
    print(
        f"{backend.kind}: {reads} reads in {elapsed:.2f}s, lag probes per replica: "
        f"{[stats[engine_of(r)].lag_probes for r in backend.replicas]}"
    )
    for replica in backend.replicas:
        probes = stats[engine_of(replica)].lag_probes
        assert 1 <= probes <= elapsed / 0.5 + 2, (probes, reads, elapsed)


def test_health_reports_lag_of_each_replica(backend: Backend) -> None:
    with Registry.from_dict(backend.config()) as dbs:
        statuses = {s.name: s for s in dbs.health()}
    assert statuses["db.primary"].ok
    assert statuses["db.primary"].lag_seconds is None
    for replica in backend.replicas:
        status = statuses[engine_of(replica)]
        assert status.ok, status
        assert status.lag_seconds is not None
        assert "app-secret" not in status.url
