"""Celery (SPEC 6): a job enqueued right after a write reads that write, with replicas delayed.

A real worker (``celery.contrib.testing.worker.start_worker``, a thread with
the solo pool) and a real broker and result backend: a private
``redis-server`` on a free port, started by this module and stopped after it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker
from servers import PostgresCluster, _free_port, _port_accepts, wait_until
from sqlalchemy import insert, select, text
from webapps import Base, items

import multidb.celery
from multidb import Registry
from multidb.causal import open_scope


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private redis-server (no persistence) in a temporary directory, stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server not found on PATH"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="multidb-redis-") as directory:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        server = subprocess.Popen(
            [*argv, "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _port_accepts(port), timeout=10, message="redis did not start")
            yield f"redis://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@dataclass
class Jobs:
    dbs: Registry
    app: Celery
    read: Any  # the task: read_marker.delay(marker) -> {"found": bool, "server": port}
    token: Any  # the task: causal_token.delay() -> the token of the task's scope
    names: dict[int, str]


@pytest.fixture(scope="module")
def jobs(redis_url: str, pg_cluster: PostgresCluster) -> Iterator[Jobs]:
    config = {
        "databases": {
            "db": {
                "primary": pg_cluster.primary.url(),
                "replicas": {s.name.replace("-", "_"): s.url() for s in pg_cluster.standbys},
            }
        }
    }
    app = Celery("multidb_test", broker=f"{redis_url}/0", backend=f"{redis_url}/1")
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_hijack_root_logger = False  # leave the other tests' logging alone
    with Registry.from_dict(config) as dbs:
        Base.metadata.create_all(dbs.engine("db"))
        pg_cluster.wait_caught_up()
        multidb.celery.install(app, dbs)

        def read_marker(marker: str) -> dict[str, Any]:
            with dbs.session("db", role="read") as s:
                found = s.scalar(select(items.c.id).where(items.c.marker == marker))
                server = s.scalar(text("SELECT inet_server_port()"))
                return {"found": found is not None, "server": server}

        def causal_token() -> str | None:
            return dbs.causal_token()

        task = app.task(read_marker)
        token_task = app.task(causal_token)
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            yield Jobs(dbs, app, task, token_task, {s.port: s.name for s in pg_cluster.servers})
    pg_cluster.wait_caught_up(timeout=30)


def write_marker(dbs: Registry) -> str:
    marker = uuid.uuid4().hex
    with dbs.session("db", role="write") as s:
        s.execute(insert(items).values(marker=marker))
    return marker


@pytest.mark.postgresql
def test_30_jobs_enqueued_right_after_writes_read_them_with_both_standbys_delayed_0_stale(
    jobs: Jobs, pg_cluster: PostgresCluster
) -> None:
    with contextlib.ExitStack() as delayed:
        for standby in pg_cluster.standbys:
            # 2 s, not 0.3: under load the solo worker may pick a job up after 0.3 s,
            # and the control below needs the replicas still behind when it reads.
            delayed.enter_context(standby.apply_delay(2))
        # Each write and each enqueueing in a fresh scope, as in a web request or a job.
        control = []
        for _ in range(10):  # enqueued outside the writing scope: no token, the delay is real
            with open_scope(inherit=False):
                marker = write_marker(jobs.dbs)
            with open_scope(inherit=False):
                control.append(jobs.read.delay(marker))
        carried = []
        for _ in range(30):
            with open_scope(inherit=False):
                carried.append(jobs.read.delay(write_marker(jobs.dbs)))
        control_results = [r.get(timeout=30) for r in control]
        results = [r.get(timeout=30) for r in carried]
    stale = sum(not r["found"] for r in results)
    control_stale = sum(not r["found"] for r in control_results)
    served = Counter(jobs.names[r["server"]] for r in results)
    print(
        f"celery: 30 jobs enqueued after writes, {stale} stale, served by {dict(served)}; "
        f"without the token {control_stale}/10 stale"
    )
    assert stale == 0
    assert control_stale > 0


@pytest.mark.postgresql
def test_a_task_runs_in_the_enqueuing_scopes_token_and_no_other_jobs(jobs: Jobs) -> None:
    seen: dict[str, Any] = {}

    def capture(headers: dict[str, Any], **_: Any) -> None:
        seen.update(headers)

    signals.before_task_publish.connect(capture, weak=False)
    try:
        with open_scope(inherit=False):
            write_marker(jobs.dbs)
            token = jobs.dbs.causal_token()
            inside = jobs.token.delay().get(timeout=30)
        with open_scope(inherit=False):  # wrote nothing: the next job starts empty
            after = jobs.token.delay().get(timeout=30)
    finally:
        signals.before_task_publish.disconnect(capture)
    assert token is not None
    assert seen[multidb.celery.HEADER] == token
    assert (inside, after) == (token, None)
