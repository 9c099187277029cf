"""Web requests (SPEC 6): the WSGI and ASGI middlewares in Flask and FastAPI, real test clients.

Each test runs against both frameworks: the Flask app behind
``multidb.flask.MultiDB`` (WSGI middleware) and the FastAPI app behind
``multidb.asgi.ReadYourWritesMiddleware`` with ``multidb.fastapi.session``
(sync endpoints, so Starlette runs them in its threadpool). On SQLite for
roles, commits and bad tokens; on the PostgreSQL cluster, with a standby under
real apply delay, for read-your-writes across requests and the cookie.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import flask.testing
import pytest
import webapps
import werkzeug.test
from servers import PostgresCluster, _free_port, wait_until
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket
from webapps import Base

from multidb import ReadOnlyError, Registry, causal
from multidb.asgi import ReadYourWritesMiddleware
from multidb.wsgi import ReadYourWritesMiddleware as WSGIMiddleware

FRAMEWORKS = ["flask", "fastapi"]


class Client:
    """Flask's test client or Starlette's TestClient, behind one face."""

    def __init__(
        self, framework: str, dbs: Registry, database: str, identity: str | None = None
    ) -> None:
        self._flask: flask.testing.FlaskClient | None = None
        self._starlette: TestClient | None = None
        self.errors: list[BaseException] = []  # what the application raised, server side
        if framework == "flask":
            app = webapps.flask_app(dbs, database, identity)
            flask.got_request_exception.connect(self._record, app, weak=False)
            self._flask = app.test_client()
        else:
            inner = webapps.fastapi_app(dbs, database, identity)

            async def recording(scope: Any, receive: Any, send: Any) -> None:
                try:
                    await inner(scope, receive, send)
                except Exception as exc:  # re-raised after the 500 was sent
                    self.errors.append(exc)
                    raise

            self._starlette = TestClient(recording, raise_server_exceptions=False)

    def _record(self, sender: object, exception: BaseException, **_: object) -> None:
        self.errors.append(exception)

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        if self._flask is not None:
            r = self._flask.open(path, method=method, **kwargs)
            return Response(r.status_code, r.headers.getlist("Set-Cookie"), r.get_json(silent=True))
        assert self._starlette is not None
        if "headers" in kwargs:  # as bytes: the Flask client sends str values as latin-1
            kwargs["headers"] = {k: v.encode("latin-1") for k, v in kwargs["headers"].items()}
        s = self._starlette.request(method, path, **kwargs)
        try:
            body = s.json()
        except ValueError:
            body = None
        return Response(s.status_code, s.headers.get_list("set-cookie"), body)

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Response:
        return self.request("POST", path, **kwargs)


class Response:
    def __init__(self, status: int, set_cookies: list[str], body: Any) -> None:
        self.status = status
        self.set_cookies = set_cookies
        self.body = body

    def __repr__(self) -> str:
        return f"<{self.status} {self.body!r} set-cookie={self.set_cookies}>"


# -- SQLite: roles, commits before the response, bad tokens ---------------------------------


@pytest.fixture
def sqlite_dbs(tmp_path: Path) -> Iterator[Registry]:
    db = tmp_path / "main.db"
    config = {
        "databases": {
            "main": {
                "primary": f"sqlite:///{db}",
                "replicas": {"a": f"sqlite:///file:{db}?mode=ro&uri=true"},
            }
        }
    }
    with Registry.from_dict(config) as dbs:
        Base.metadata.create_all(dbs.engine("main"))
        yield dbs


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_post_writes_on_the_primary_and_a_get_reads_it(
    framework: str, sqlite_dbs: Registry
) -> None:
    client = Client(framework, sqlite_dbs, "main", None)
    assert client.post("/items", json={"marker": "m1"}).status == 201
    assert client.get("/items/m1").body["found"] is True


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_get_handler_that_writes_is_a_500_read_only_error_unless_it_asks_for_write(
    framework: str, sqlite_dbs: Registry
) -> None:
    client = Client(framework, sqlite_dbs, "main", None)
    assert client.get("/write-on-get").status == 500
    assert [type(e) for e in client.errors] == [ReadOnlyError]
    assert client.get("/write-on-get-explicitly").status == 200
    with sqlite_dbs.session("main", role="write") as s:
        assert s.query(webapps.Item).filter_by(marker="get").count() == 1


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_commit_that_fails_is_a_500_and_saves_nothing(
    framework: str, sqlite_dbs: Registry
) -> None:
    client = Client(framework, sqlite_dbs, "main", None)
    assert client.post("/items", json={"marker": "first"}).status == 201
    with sqlite_dbs.session("main", role="write") as s:
        first = s.query(webapps.Item).filter_by(marker="first").one().id
    response = client.post(f"/duplicate/{first}")  # the INSERT is flushed by commit()
    assert response.status == 500, response
    assert [type(e) for e in client.errors] == [IntegrityError]
    with sqlite_dbs.session("main", role="write") as s:
        assert s.query(webapps.Item).filter_by(marker="dup").count() == 0


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    "cookie",
    [
        "multidb=garbage!!",
        "multidb=1.main~l~zz~1",
        'multidb="1.main"; other=1',
        "multidb=" + "1.main~l~1~1" * 2000,
        "x" * 100_000,
        "multidb=\u00e9t\u00e9".encode().decode("latin-1"),  # UTF-8 bytes
    ],
    ids=["garbage", "bad-lsn", "quoted", "huge-token", "huge-header", "non-ascii"],
)
def test_a_malformed_or_huge_cookie_is_an_ordinary_200(
    framework: str, cookie: str, sqlite_dbs: Registry
) -> None:
    client = Client(framework, sqlite_dbs, "main", None)
    headers = {"Cookie": cookie, "X-Multidb-Token": cookie}
    for path in ("/ping", "/items/nothing"):
        response = client.get(path, headers=headers)
        assert response.status == 200, response
        assert response.set_cookies == []


def test_asgi_passes_lifespan_and_websocket_through(sqlite_dbs: Registry) -> None:
    started: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append("lifespan")
        yield

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(await ws.receive_text())
        await ws.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)], lifespan=lifespan)
    client = TestClient(ReadYourWritesMiddleware(app, sqlite_dbs))
    with client, client.websocket_connect("/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
    assert started == ["lifespan"]


def test_bad_cookie_or_header_names_are_refused(sqlite_dbs: Registry) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="cookie name 'a b'"):
        ReadYourWritesMiddleware(app, sqlite_dbs, cookie="a b")
    with pytest.raises(ValueError, match="header name 'X:Y'"):
        ReadYourWritesMiddleware(app, sqlite_dbs, header="X:Y")


# -- PostgreSQL with a standby under real apply delay ---------------------------------------


@pytest.fixture
def pg_dbs(pg_cluster: PostgresCluster) -> Iterator[Registry]:
    """``db``: the primary, both standbys as replicas (round robin); tables created."""
    config = {
        "databases": {
            "db": {
                "primary": pg_cluster.primary.url(),
                "replicas": {s.name.replace("-", "_"): s.url() for s in pg_cluster.standbys},
            }
        }
    }
    with Registry.from_dict(config) as dbs:
        with dbs.engine("db").begin() as connection:
            Base.metadata.create_all(connection)
            connection.exec_driver_sql(webapps.DEFERRED_DDL)
        pg_cluster.wait_caught_up()
        yield dbs
    pg_cluster.wait_caught_up(timeout=30)


def pg_names(cluster: PostgresCluster) -> dict[int, str]:
    return {s.port: s.name for s in cluster.servers}


@pytest.mark.postgresql
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_100_post_then_get_pairs_with_a_delayed_standby_0_stale(
    framework: str, pg_cluster: PostgresCluster, pg_dbs: Registry
) -> None:
    names = pg_names(pg_cluster)
    client = Client(framework, pg_dbs, "db", "SELECT inet_server_port()")
    stranger = Client(framework, pg_dbs, "db", "SELECT inet_server_port()")  # no cookie
    served: Counter[str] = Counter()
    stale = stranger_stale = 0
    with pg_cluster.standbys[1].apply_delay(0.3):
        for _ in range(100):
            marker = uuid.uuid4().hex
            assert client.post("/items", json={"marker": marker}).status == 201
            response = client.get(f"/items/{marker}")
            assert response.status == 200
            served[names[response.body["server"]]] += 1
            stale += not response.body["found"]
        for _ in range(20):  # the same without the cookie: the delay is real
            marker = uuid.uuid4().hex
            assert client.post("/items", json={"marker": marker}).status == 201
            stranger_stale += not stranger.get(f"/items/{marker}").body["found"]
    print(
        f"{framework}: 100 POST-then-GET pairs, {stale} stale, served by {dict(served)}; "
        f"without the cookie {stranger_stale}/20 stale"
    )
    assert stale == 0
    assert stranger_stale > 0


@pytest.mark.postgresql
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_cookie_is_set_only_by_requests_that_wrote(framework: str, pg_dbs: Registry) -> None:
    client = Client(framework, pg_dbs, "db")
    for response in (
        client.get("/ping"),
        client.get("/items/x"),
        client.post("/noop"),
        client.get("/write-on-get"),  # 500: nothing written
    ):
        assert response.set_cookies == [], response
    written = client.post("/items", json={"marker": uuid.uuid4().hex})
    assert written.status == 201
    [cookie] = written.set_cookies
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value.startswith("multidb=1.db~l~")
    assert sorted(attributes) == ["HttpOnly", "Max-Age=60", "Path=/", "SameSite=Lax"]
    assert client.get("/items/x").set_cookies == []  # the client now sends it; not set again


@pytest.mark.postgresql
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_unique_violation_raised_by_commit_itself_is_a_500(
    framework: str, pg_dbs: Registry
) -> None:
    client = Client(framework, pg_dbs, "db")
    response = client.post("/deferred")  # both INSERTs succeed; COMMIT raises
    assert response.status == 500, response
    [error] = client.errors
    assert isinstance(error, IntegrityError) and "COMMIT" not in str(error)
    assert "web_deferred_k_key" in str(error)
    assert response.set_cookies == []
    with pg_dbs.session("db", role="write") as s:
        assert s.scalar(text("SELECT count(*) FROM web_deferred")) == 0


def test_the_middlewares_import_no_framework() -> None:
    code = (
        "import sys, multidb, multidb.wsgi, multidb.asgi\n"
        "loaded = {'flask', 'werkzeug', 'fastapi', 'starlette', 'celery'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_plain_yield_dependency_answers_201_for_a_commit_that_fails(sqlite_dbs: Registry) -> None:
    """Why multidb.fastapi.session is function-scoped: FastAPI's default runs the commit
    after the response was sent. If this starts failing, FastAPI changed that default."""
    import fastapi

    def plain() -> Iterator[Session]:
        with sqlite_dbs.session("main", role="write") as s:
            yield s

    app = fastapi.FastAPI()

    @app.post("/duplicate", status_code=201)
    def duplicate(s: Session = fastapi.Depends(plain)) -> None:  # noqa: B008
        s.add(webapps.Item(id=1, marker="dup"))

    with sqlite_dbs.session("main", role="write") as s:
        s.add(webapps.Item(id=1, marker="first"))
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/duplicate").status_code == 201  # and nothing was saved
    with sqlite_dbs.session("main", role="write") as s:
        assert s.query(webapps.Item).filter_by(marker="dup").count() == 0


def test_a_wsgi_body_generator_runs_in_the_requests_scope_and_role(sqlite_dbs: Registry) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        scope = causal.current()
        assert scope is not None
        yield f"{causal.request_role.get()} {sorted(scope.positions())}".encode()

    client = werkzeug.test.Client(WSGIMiddleware(app, sqlite_dbs))
    token = causal.encode({"main": causal.Position("lsn", 5, time.time())})
    assert client.get("/", headers={"X-Multidb-Token": token}).get_data() == b"read ['main']"
    assert client.post("/").get_data() == b"write []"
    assert client.options("/").get_data() == b"read []"
    assert (causal.current(), causal.request_role.get()) == (None, None)  # nothing leaked


def test_under_real_uvicorn_a_commit_that_fails_is_a_500_not_a_201(sqlite_dbs: Registry) -> None:
    import urllib.error
    import urllib.request

    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(webapps.fastapi_app(sqlite_dbs, "main"), port=port, log_level="critical")
    )
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, message="uvicorn did not start")
        base = f"http://127.0.0.1:{port}"
        post = urllib.request.Request(
            f"{base}/items",
            data=b'{"marker": "first"}',
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            assert response.status == 201
        with sqlite_dbs.session("main", role="write") as s:
            first = s.query(webapps.Item).filter_by(marker="first").one().id
        duplicate = urllib.request.Request(f"{base}/duplicate/{first}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(duplicate, timeout=10)
        assert failed.value.code == 500
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()
