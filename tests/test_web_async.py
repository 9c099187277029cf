"""Web requests on asyncio: FastAPI ``async def`` endpoints on AsyncSessions (asyncpg).

The request's causal scope is the one the ASGI middleware opened: positions
recorded by commits run in SQLAlchemy's asyncio greenlets land in it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import webapps
from servers import PostgresCluster
from starlette.testclient import TestClient
from webapps import Base

from multidb import Registry

pytestmark = pytest.mark.postgresql


def _asyncpg(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql+asyncpg://", 1)


@pytest.fixture
def async_dbs(pg_cluster: PostgresCluster) -> Iterator[Registry]:
    """``db`` through asyncpg: the primary, both standbys as replicas; tables created."""
    replicas = {s.name.replace("-", "_"): s.url() for s in pg_cluster.standbys}
    setup = {"databases": {"db": {"primary": pg_cluster.primary.url(), "replicas": replicas}}}
    with Registry.from_dict(setup) as dbs, dbs.engine("db").begin() as connection:
        Base.metadata.create_all(connection)
        connection.exec_driver_sql(webapps.DEFERRED_DDL)
    pg_cluster.wait_caught_up()
    config = {
        "databases": {
            "db": {
                "primary": _asyncpg(pg_cluster.primary.url()),
                "replicas": {name: _asyncpg(url) for name, url in replicas.items()},
            }
        }
    }
    dbs = Registry.from_dict(config)
    yield dbs
    dbs.dispose()
    pg_cluster.wait_caught_up(timeout=30)


def test_100_async_post_then_get_pairs_with_a_delayed_standby_0_stale(
    pg_cluster: PostgresCluster, async_dbs: Registry
) -> None:
    names = {s.port: s.name for s in pg_cluster.servers}
    app = webapps.fastapi_async_app(async_dbs, "db")
    served: Counter[str] = Counter()
    stale = stranger_stale = 0
    # One client: one event loop for the asyncpg pool (a TestClient opened with `with`).
    with TestClient(app) as client, pg_cluster.standbys[1].apply_delay(0.3):
        for _ in range(100):
            marker = uuid.uuid4().hex
            response = client.post("/items", json={"marker": marker})
            assert response.status_code == 201
            assert response.cookies.get("multidb", "").startswith("1.db~l~")
            body = client.get(f"/items/{marker}").json()
            served[names[body["server"]]] += 1
            stale += not body["found"]
        for _ in range(20):  # without the cookie: the delay is real
            marker = uuid.uuid4().hex
            assert client.post("/items", json={"marker": marker}).status_code == 201
            client.cookies.clear()
            stranger_stale += not client.get(f"/items/{marker}").json()["found"]
    print(
        f"fastapi async: 100 POST-then-GET pairs, {stale} stale, served by {dict(served)}; "
        f"without the cookie {stranger_stale}/20 stale"
    )
    assert stale == 0
    assert stranger_stale > 0


def test_async_get_that_writes_and_a_commit_that_fails_are_500s(
    pg_cluster: PostgresCluster, async_dbs: Registry
) -> None:
    app = webapps.fastapi_async_app(async_dbs, "db")
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/write-on-get").status_code == 500
        response = client.post("/deferred")  # both INSERTs succeed; COMMIT raises
    assert response.status_code == 500
    assert "set-cookie" not in response.headers
    [(count,)] = pg_cluster.primary.query("SELECT count(*) FROM web_deferred", admin=False)
    assert count == 0
