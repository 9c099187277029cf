"""The same small application in Flask and in FastAPI, for the web integration tests.

Endpoints: ``POST /items`` (insert a marker, 201), ``GET /items/MARKER``
(found? and the server that answered), ``GET /write-on-get`` (inserts with the
request's role: ``read`` on GET, so ``ReadOnlyError``), ``GET /write-on-get-
explicitly`` (asks for ``write``), ``POST /noop`` (writes nothing),
``POST /duplicate/ID`` (an ORM insert of an existing id, flushed by the
commit), ``POST /deferred`` (PostgreSQL: a deferred unique violation raised by
COMMIT itself), ``GET /ping``.
"""

from typing import Annotated, Any, cast

import fastapi
import flask
from sqlalchemy import String, Table, insert, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from multidb import Registry
from multidb.asgi import ReadYourWritesMiddleware
from multidb.fastapi import session
from multidb.flask import MultiDB


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "web_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    marker: Mapped[str] = mapped_column(String(64))


items = cast(Table, Item.__table__)

DEFERRED_DDL = (
    "CREATE TABLE IF NOT EXISTS web_deferred (k integer, UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
)


def _where(s: Session, identity_sql: str | None) -> Any:
    return None if identity_sql is None else s.scalar(text(identity_sql))


def flask_app(dbs: Registry, database: str, identity_sql: str | None = None) -> flask.Flask:
    app = flask.Flask(__name__)
    db = MultiDB(app, dbs)

    @app.post("/items")
    def create() -> Any:
        marker = flask.request.get_json()["marker"]
        db.session(database).execute(insert(items).values(marker=marker))
        return {"marker": marker}, 201

    @app.get("/items/<marker>")
    def show(marker: str) -> Any:
        s = db.session(database)
        found = s.scalar(select(items.c.id).where(items.c.marker == marker)) is not None
        return {"found": found, "server": _where(s, identity_sql)}

    @app.get("/write-on-get")
    def write_on_get() -> Any:
        db.session(database).execute(insert(items).values(marker="get"))
        return {"wrote": True}

    @app.get("/write-on-get-explicitly")
    def write_on_get_explicitly() -> Any:
        db.session(database, role="write").execute(insert(items).values(marker="get"))
        return {"wrote": True}

    @app.post("/noop")
    def noop() -> Any:
        db.session(database).execute(select(1))
        return {"wrote": False}

    @app.post("/duplicate/<int:item_id>")
    def duplicate(item_id: int) -> Any:
        db.session(database).add(Item(id=item_id, marker="dup"))  # flushed by the commit
        return {"created": item_id}, 201

    @app.post("/deferred")
    def deferred() -> Any:
        db.session(database).execute(text("INSERT INTO web_deferred VALUES (1), (1)"))
        return {"created": True}, 201

    @app.get("/ping")
    def ping() -> Any:
        return {"ok": True}

    return app


def fastapi_app(dbs: Registry, database: str, identity_sql: str | None = None) -> fastapi.FastAPI:
    app = fastapi.FastAPI()
    app.add_middleware(ReadYourWritesMiddleware, dbs=dbs)
    DB = Annotated[Session, session(dbs, database)]  # noqa: N806
    Writer = Annotated[Session, session(dbs, database, role="write")]  # noqa: N806

    @app.post("/items", status_code=201)
    def create(body: dict[str, str], s: DB) -> Any:
        s.execute(insert(items).values(marker=body["marker"]))
        return {"marker": body["marker"]}

    @app.get("/items/{marker}")
    def show(marker: str, s: DB) -> Any:
        found = s.scalar(select(items.c.id).where(items.c.marker == marker)) is not None
        return {"found": found, "server": _where(s, identity_sql)}

    @app.get("/write-on-get")
    def write_on_get(s: DB) -> Any:
        s.execute(insert(items).values(marker="get"))
        return {"wrote": True}

    @app.get("/write-on-get-explicitly")
    def write_on_get_explicitly(s: Writer) -> Any:
        s.execute(insert(items).values(marker="get"))
        return {"wrote": True}

    @app.post("/noop")
    def noop(s: DB) -> Any:
        s.execute(select(1))
        return {"wrote": False}

    @app.post("/duplicate/{item_id}", status_code=201)
    def duplicate(item_id: int, s: DB) -> Any:
        s.add(Item(id=item_id, marker="dup"))
        return {"created": item_id}

    @app.post("/deferred", status_code=201)
    def deferred(s: DB) -> Any:
        s.execute(text("INSERT INTO web_deferred VALUES (1), (1)"))
        return {"created": True}

    @app.get("/ping")
    async def ping() -> Any:
        return {"ok": True}

    return app


def fastapi_async_app(dbs: Registry, database: str) -> fastapi.FastAPI:
    """The FastAPI app on AsyncSessions (``async def`` endpoints, no threadpool)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from multidb.fastapi import async_session

    app = fastapi.FastAPI()
    app.add_middleware(ReadYourWritesMiddleware, dbs=dbs)
    DB = Annotated[AsyncSession, async_session(dbs, database)]  # noqa: N806

    @app.post("/items", status_code=201)
    async def create(body: dict[str, str], s: DB) -> Any:
        await s.execute(insert(items).values(marker=body["marker"]))
        return {"marker": body["marker"]}

    @app.get("/items/{marker}")
    async def show(marker: str, s: DB) -> Any:
        found = await s.scalar(select(items.c.id).where(items.c.marker == marker))
        server = await s.scalar(text("SELECT inet_server_port()"))
        return {"found": found is not None, "server": server}

    @app.get("/write-on-get")
    async def write_on_get(s: DB) -> Any:
        await s.execute(insert(items).values(marker="get"))
        return {"wrote": True}

    @app.post("/deferred", status_code=201)
    async def deferred(s: DB) -> Any:
        await s.execute(text("INSERT INTO web_deferred VALUES (1), (1)"))
        return {"created": True}

    return app
