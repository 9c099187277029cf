"""Shared pytest fixtures.

The harness that starts throw-away servers lives in ``tests/servers.py``
(importable as ``servers``: pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
from servers import (
    MariaDBCluster,
    PostgresCluster,
    mariadb_binaries_missing,
    postgres_binaries_missing,
    start_mariadb_cluster,
    start_postgres_cluster,
)

from multidb import causal

# ---------------------------------------------------------------------------
# Server clusters (session-scoped, started lazily by the first test that asks).
# Mark tests that use them with @pytest.mark.postgresql / @pytest.mark.mariadb.
# Unavailable servers skip those tests, except with CI=true where they fail.
# ---------------------------------------------------------------------------

C = TypeVar("C", PostgresCluster, MariaDBCluster)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _cluster(
    kind: str, missing: Callable[[], str | None], start: Callable[[Path], C]
) -> Iterator[C]:
    reason = missing()
    if reason is not None:
        _unavailable(f"{kind} servers unavailable: {reason}")
    # Not under /tmp/pytest-of-<user> (mode 0700): the servers run as postgres / mysql.
    base = Path(tempfile.mkdtemp(prefix=f"multidb-{kind}-"))
    base.chmod(0o755)
    try:
        cluster = start(base)
    except Exception as exc:
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(f"{kind} cluster could not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL primary (``pg-primary``) with hot standbys ``pg-standby1``/``2``."""
    yield from _cluster("postgresql", postgres_binaries_missing, start_postgres_cluster)


@pytest.fixture(scope="session")
def mariadb_cluster() -> Iterator[MariaDBCluster]:
    """A MariaDB primary (``maria-primary``) with read-only replicas ``maria-replica1``/``2``.

    Two replicas, like PostgreSQL, so routing tests can run on both backends alike.
    """
    yield from _cluster(
        "mariadb", mariadb_binaries_missing, lambda base: start_mariadb_cluster(base, replicas=2)
    )


# ---------------------------------------------------------------------------
# Other shared fixtures go below this line.
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _own_causal_scope() -> Iterator[None]:
    """Each test starts with no causal scope, like a new request: writes of earlier
    tests (whose databases share names like ``db``) do not constrain its reads."""
    reset = causal._current.set(None)
    yield
    causal._current.reset(reset)
