"""Read-your-writes across sessions and threads, on real replicas with real apply delay.

One replica of each cluster is delayed (PostgreSQL ``recovery_min_apply_delay``,
MariaDB ``MASTER_DELAY``) while the other replicates as fast as it can. Which
server answered, and whether the row was there, is asked of the servers.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest
from servers import MariaDBCluster, PostgresCluster, PostgresServer, wait_until
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.orm import Session

from multidb import NoReplicaAvailableError, Registry

metadata = MetaData()
marks = Table(
    "ryw_marks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("marker", String(64), nullable=False),
)
counters = Table(
    "ryw_counters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("n", Integer, nullable=False),
)

Cluster = PostgresCluster | MariaDBCluster


@dataclass
class Backend:
    kind: str
    cluster: Cluster
    identity_sql: str
    names: dict[Any, str]

    @property
    def replicas(self) -> list[str]:
        return [r.name for r in self.cluster.replicas]

    def config(self, replicas: list[str] | None = None, **routing: Any) -> dict[str, Any]:
        chosen = [r for r in self.cluster.replicas if replicas is None or r.name in replicas]
        return {
            "databases": {
                "db": {
                    "primary": self.cluster.primary.url(),
                    "replicas": {r.name.replace("-", "_"): r.url() for r in chosen},
                    "routing": routing,
                }
            }
        }

    def where(self, session: Session) -> str:
        return self.names[session.execute(text(self.identity_sql)).scalar()]

    def delay(self, replica: int = 1) -> AbstractContextManager[None]:
        """Real apply lag on one replica: 0.3 s on PostgreSQL, 1 s (whole seconds) on MariaDB."""
        server = self.cluster.replicas[replica]
        if isinstance(server, PostgresServer):
            return server.apply_delay(0.3)
        return server.apply_delay(1)


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgresql":
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        names = {s.port: s.name for s in cluster.servers}
        backend = Backend("postgresql", cluster, "SELECT inet_server_port()", names)
    else:
        cluster = request.getfixturevalue("mariadb_cluster")
        assert isinstance(cluster, MariaDBCluster)
        names = {s.server_id: s.name for s in cluster.servers}
        backend = Backend("mariadb", cluster, "SELECT @@server_id", names)
    with Registry.from_dict(backend.config()) as setup:
        metadata.create_all(setup.engine("db"))
    cluster.wait_caught_up()
    yield backend
    cluster.wait_caught_up(timeout=30)


def write_marker(dbs: Registry) -> str:
    marker = uuid.uuid4().hex
    with dbs.session("db", role="write") as s:
        s.execute(insert(marks).values(marker=marker))
    return marker


def sees(session: Session, marker: str) -> bool:
    return session.scalar(select(marks.c.id).where(marks.c.marker == marker)) is not None


def read_back(
    dbs: Registry, backend: Backend, write: Callable[[str], object], times: int = 20
) -> tuple[int, Counter[str]]:
    """``times`` times, ``write(marker)`` a new marker and read it at once in a new read
    session: how many reads missed it, and which servers answered them."""
    stale = 0
    served: Counter[str] = Counter()
    for _ in range(times):
        marker = uuid.uuid4().hex
        write(marker)
        with dbs.session("db", role="read") as s:
            served[backend.where(s)] += 1
            stale += not sees(s, marker)
    return stale, served


def test_300_writes_each_read_by_a_new_read_session_with_a_delayed_replica_0_stale(
    backend: Backend,
) -> None:
    served: Counter[str] = Counter()
    stale = 0
    with Registry.from_dict(backend.config()) as dbs, backend.delay():
        for _ in range(300):
            marker = write_marker(dbs)
            with dbs.session("db", role="read") as s:
                served[backend.where(s)] += 1
                stale += not sees(s, marker)
        stats = dbs.stats()
    print(f"{backend.kind}: 300 write-then-read cycles, {stale} stale, served by {dict(served)}")
    assert stale == 0
    delayed = f"db.{backend.replicas[1].replace('-', '_')}"
    assert stats[delayed].causal_waits > 0  # it was asked, and found behind


def test_300_writes_read_in_another_thread_through_the_token_0_stale(backend: Backend) -> None:
    tokens: queue.Queue[tuple[str, str | None] | None] = queue.Queue()
    stale: list[str] = []
    served: Counter[str] = Counter()

    with Registry.from_dict(backend.config()) as dbs, backend.delay():

        def reader() -> None:
            while (item := tokens.get()) is not None:
                marker, token = item
                with dbs.causal(token), dbs.session("db", role="read") as s:
                    served[backend.where(s)] += 1
                    if not sees(s, marker):
                        stale.append(marker)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for _ in range(300):
                with dbs.causal():
                    marker = write_marker(dbs)
                    tokens.put((marker, dbs.causal_token()))
        finally:
            tokens.put(None)
            thread.join(timeout=60)
    print(f"{backend.kind}: 300 tokens passed between threads, {len(stale)} stale, {dict(served)}")
    assert not thread.is_alive()
    assert stale == []


def test_100_auto_read_modify_write_increments_end_at_exactly_100(backend: Backend) -> None:
    row_id = uuid.uuid4().int % 2**31
    with Registry.from_dict(backend.config()) as dbs, backend.delay():
        with dbs.session("db", role="write") as s:
            s.execute(insert(counters).values(id=row_id, n=0))
        for _ in range(100):
            with dbs.session("db", role="auto") as s:
                n = s.scalar(select(counters.c.n).where(counters.c.id == row_id))
                assert n is not None
                s.execute(update(counters).where(counters.c.id == row_id).values(n=n + 1))
        with dbs.session("db", role="write") as s:
            final = s.scalar(select(counters.c.n).where(counters.c.id == row_id))
    assert final == 100


def test_without_delay_most_reads_after_a_write_are_served_by_replicas(backend: Backend) -> None:
    served: Counter[str] = Counter()
    stale = 0
    with Registry.from_dict(backend.config(causal_wait_seconds=0.2)) as dbs:
        for _ in range(100):
            marker = write_marker(dbs)
            with dbs.session("db", role="read") as s:
                served[backend.where(s)] += 1
                stale += not sees(s, marker)
    on_replicas = sum(served[r] for r in backend.replicas)
    print(
        f"{backend.kind}: no delay, causal_wait 0.2 s: {on_replicas}/100 on replicas, {stale} stale"
    )
    assert stale == 0
    assert on_replicas >= 80, served


def test_a_delayed_replica_is_waited_for_up_to_causal_wait_seconds(backend: Backend) -> None:
    delayed = backend.replicas[1]
    config = backend.config([delayed], causal_wait_seconds=5, fallback_to_primary=False)
    with Registry.from_dict(config) as dbs, backend.delay():
        # The first read session waits for the health monitor's first round; after it, the
        # monitor cannot know of the write below before the read has asked and waited.
        with dbs.session("db", role="read") as s:
            s.execute(text("SELECT 1"))
        marker = write_marker(dbs)
        with dbs.session("db", role="read") as s:
            assert backend.where(s) == delayed
            assert sees(s, marker)
        stats = dbs.stats()
    engine = f"db.{delayed.replace('-', '_')}"
    assert stats[engine].causal_waits == 1
    assert stats["db.primary"].causal_fallbacks == 0


def test_no_replica_caught_up_without_fallback_raises_saying_so(backend: Backend) -> None:
    for replica in backend.cluster.replicas:
        replica.pause_replay()
    try:
        with Registry.from_dict(backend.config(fallback_to_primary=False)) as dbs:
            write_marker(dbs)
            with (
                pytest.raises(NoReplicaAvailableError, match="no replica has applied"),
                dbs.session("db", role="read") as s,
            ):
                s.execute(text("SELECT 1"))
    finally:
        for replica in backend.cluster.replicas:
            replica.resume_replay()


def test_behind_replicas_send_the_read_to_the_primary_and_count_it(backend: Backend) -> None:
    for replica in backend.cluster.replicas:
        replica.pause_replay()
    try:
        with Registry.from_dict(backend.config()) as dbs:
            marker = write_marker(dbs)
            with dbs.session("db", role="read") as s:
                assert backend.where(s) == backend.cluster.primary.name
                assert sees(s, marker)
            assert dbs.stats()["db.primary"].causal_fallbacks == 1
    finally:
        for replica in backend.cluster.replicas:
            replica.resume_replay()


def test_an_expired_token_no_longer_constrains_reads(backend: Backend) -> None:
    for replica in backend.cluster.replicas:
        replica.pause_replay()
    try:
        with Registry.from_dict(backend.config(causal_ttl_seconds=0.5)) as dbs:
            with dbs.causal():
                write_marker(dbs)
                token = dbs.causal_token()
            assert token is not None

            def read_goes_to_a_replica() -> bool:
                with dbs.causal(token), dbs.session("db", role="read") as s:
                    return backend.where(s) in backend.replicas

            assert not read_goes_to_a_replica()
            wait_until(read_goes_to_a_replica, timeout=5, message="token never expired")
    finally:
        for replica in backend.cluster.replicas:
            replica.resume_replay()


@pytest.mark.parametrize("token", ["garbage", "1." + "x" * 5000, "1.db~l~ff~1\u00e9"])
def test_malformed_tokens_are_ignored_and_reads_work_on_replicas(
    backend: Backend, token: str
) -> None:
    with (
        Registry.from_dict(backend.config()) as dbs,
        dbs.causal(token),
        dbs.session("db", role="read") as s,
    ):
        assert backend.where(s) in backend.replicas


def test_read_your_writes_false_turns_it_off(backend: Backend) -> None:
    for replica in backend.cluster.replicas:
        replica.pause_replay()
    try:
        with Registry.from_dict(backend.config(read_your_writes=False)) as dbs:
            marker = write_marker(dbs)
            with dbs.session("db", role="read") as s:
                assert backend.where(s) in backend.replicas
                assert not sees(s, marker)  # what read_your_writes protects from
    finally:
        for replica in backend.cluster.replicas:
            replica.resume_replay()


@pytest.mark.postgresql
def test_asynchronous_commits_are_read_back_0_stale(pg_cluster: PostgresCluster) -> None:
    """``synchronous_commit = off``: COMMIT returns before its WAL is written, so the
    position to wait for is the primary's insert position, not its write position."""
    names = {s.port: s.name for s in pg_cluster.servers}
    backend = Backend("postgresql", pg_cluster, "SELECT inet_server_port()", names)
    config = backend.config(replicas=backend.replicas[:1], causal_wait_seconds=2)
    with Registry.from_dict(config) as dbs:
        metadata.create_all(dbs.engine("db"))
        pg_cluster.wait_caught_up()

        def write(marker: str) -> None:
            with dbs.session("db", role="write") as s:
                s.execute(text("SET LOCAL synchronous_commit TO OFF"))
                s.execute(insert(marks).values(marker=marker))

        stale, served = read_back(dbs, backend, write)
    print(f"postgresql: 20 asynchronous commits read back, {stale} stale, served by {served}")
    assert stale == 0
    assert served[backend.replicas[0]] >= 15  # waited for (up to 2 s), not given up on


def test_autocommit_writes_closed_without_a_commit_are_read_back_0_stale(backend: Backend) -> None:
    """On an AUTOCOMMIT connection each statement commits as it runs; closing it ends the
    transaction SQLAlchemy began with a rollback, which must not lose the position."""
    with Registry.from_dict(backend.config()) as dbs, backend.delay():
        autocommit = dbs.engine("db").execution_options(isolation_level="AUTOCOMMIT")

        def write(marker: str) -> None:
            with autocommit.connect() as connection:
                connection.execute(insert(marks).values(marker=marker))

        stale, served = read_back(dbs, backend, write)
    print(f"{backend.kind}: 20 autocommit writes read back, {stale} stale, served by {served}")
    assert stale == 0
    assert sum(served[r] for r in backend.replicas) >= 10  # the caught-up replica still serves


def test_a_function_that_writes_called_by_a_select_is_read_back_0_stale(backend: Backend) -> None:
    """``SELECT f(...)`` in a write session, where ``f`` inserts: the transaction called a
    function multidb does not know, so its position is recorded as a write's."""
    if backend.kind == "postgresql":
        create = (
            "CREATE OR REPLACE FUNCTION ryw_mark(m text) RETURNS int LANGUAGE sql AS "
            "$$ INSERT INTO ryw_marks (marker) VALUES (m) RETURNING 1 $$"
        )
    else:
        create = (
            "CREATE OR REPLACE DEFINER=CURRENT_USER FUNCTION ryw_mark(m varchar(64)) RETURNS int"
            " DETERMINISTIC MODIFIES SQL DATA SQL SECURITY INVOKER BEGIN"
            " INSERT INTO ryw_marks (marker) VALUES (m); RETURN 1; END"
        )
    primary = backend.cluster.primary
    if isinstance(primary, PostgresServer):
        primary.query(create, admin=False)
    else:  # with the binary log on, only an administrator may create a function that writes
        primary.query(create, database="app")
    backend.cluster.wait_caught_up()
    with Registry.from_dict(backend.config()) as dbs, backend.delay():

        def write(marker: str) -> None:
            with dbs.session("db", role="write") as s:
                assert s.scalar(text("SELECT ryw_mark(:m)"), {"m": marker}) == 1

        stale, _ = read_back(dbs, backend, write)
    print(f"{backend.kind}: 20 writes by a function in a SELECT read back, {stale} stale")
    assert stale == 0
