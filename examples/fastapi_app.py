"""A FastAPI app on multidb: notes written on the primary, read back from a replica that has them.

    .venv/bin/pip install -q -e '.[fastapi]'
    .venv/bin/python examples/fastapi_app.py      # http://127.0.0.1:8000, config/databases.yaml
    curl -si -X POST localhost:8000/notes -H 'Content-Type: application/json' -d '{"text": "hi"}'
    curl -s localhost:8000/notes/1

``MULTIDB_CONFIG`` names another config (``scripts/cluster.py`` writes one),
``MULTIDB_DATABASE`` the database (default: the config's first), ``PORT``
the port. POST requests write on the primary and send back the ``multidb``
cookie; GET requests read from a replica that has applied the client's
writes (or the primary), and may not write. Endpoints are plain ``def``:
Starlette runs them in its threadpool, inside the request's causal scope.
"""

import os
from typing import Annotated, Any

import fastapi
import uvicorn
from pydantic import BaseModel
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import multidb
import multidb.fastapi
from multidb.asgi import ReadYourWritesMiddleware


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(500))


class NewNote(BaseModel):
    text: str


dbs = multidb.load(os.environ.get("MULTIDB_CONFIG", "config/databases.yaml"))
DATABASE = os.environ.get("MULTIDB_DATABASE", dbs.databases[0])
Base.metadata.create_all(dbs.engine(DATABASE))  # on the primary

app = fastapi.FastAPI()
app.add_middleware(ReadYourWritesMiddleware, dbs=dbs)  # a causal scope and a role per request
# Commits when the endpoint returns, before the response is sent: a failed commit is a 500.
DB = Annotated[Session, multidb.fastapi.session(dbs, DATABASE)]


@app.post("/notes", status_code=201)
def create_note(new: NewNote, s: DB) -> dict[str, Any]:
    note = Note(text=new.text)  # POST: role "write", the primary
    s.add(note)
    s.flush()
    return {"id": note.id, "text": note.text}


@app.get("/notes/{note_id}")
def show_note(note_id: int, s: DB) -> dict[str, Any]:
    note = s.get(Note, note_id)  # GET: role "read", a caught-up replica
    if note is None:
        raise fastapi.HTTPException(404)
    return {"id": note.id, "text": note.text}


@app.get("/notes")
def list_notes(s: DB) -> list[dict[str, Any]]:
    return [{"id": n.id, "text": n.text} for n in s.scalars(select(Note).order_by(Note.id))]


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
