"""A FastAPI app on multidb's async sessions: `uvicorn examples.fastapi_async:app`."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import multidb
import multidb.fastapi
from multidb.asgi import ReadYourWritesMiddleware

dbs = multidb.load(os.environ.get("MULTIDB_CONFIG", "config/async.yaml"))


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with dbs.async_engine("main").begin() as connection:  # the primary
        await connection.run_sync(Base.metadata.create_all)
    yield
    await dbs.async_dispose()  # closes every pool, stops the health monitor


app = FastAPI(lifespan=lifespan)
app.add_middleware(ReadYourWritesMiddleware, dbs=dbs)  # GET reads, other methods write
DB = Annotated[AsyncSession, multidb.fastapi.async_session(dbs, "main")]


@app.post("/notes")
async def add_note(text: str, s: DB) -> dict[str, int]:  # the primary
    note = Note(text=text)
    s.add(note)
    await s.flush()  # the new id; committed before the response is sent
    return {"id": note.id}


@app.get("/notes")
async def list_notes(s: DB) -> list[str]:  # a replica that has this client's writes
    return list(await s.scalars(select(Note.text).order_by(Note.id)))
