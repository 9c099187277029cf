"""A FastAPI app on multidb's async sessions: `uvicorn examples.fastapi_async:app`."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import multidb

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
    await dbs.async_dispose()  # closes every pool, stops the lag monitor


app = FastAPI(lifespan=lifespan)


async def reader() -> AsyncIterator[AsyncSession]:
    async with dbs.async_session("main", role="read") as session:  # a replica, read-only
        yield session


async def writer() -> AsyncIterator[AsyncSession]:
    async with dbs.async_session("main", role="write") as session:  # the primary
        yield session


@app.post("/notes")
async def add_note(text: str, s: Annotated[AsyncSession, Depends(writer)]) -> dict[str, int]:
    note = Note(text=text)
    s.add(note)
    await s.commit()  # before the response: a failed commit is an error, never a 200
    return {"id": note.id}


@app.get("/notes")
async def list_notes(s: Annotated[AsyncSession, Depends(reader)]) -> list[str]:
    return list(await s.scalars(select(Note.text).order_by(Note.id)))
