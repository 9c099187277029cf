"""A Flask app on multidb: notes written on the primary, read back from a replica that has them.

    .venv/bin/pip install -q -e '.[flask]'
    .venv/bin/python examples/flask_app.py        # http://127.0.0.1:5000, config/databases.yaml
    curl -si -X POST localhost:5000/notes -H 'Content-Type: application/json' -d '{"text": "hi"}'
    curl -s localhost:5000/notes/1

``MULTIDB_CONFIG`` names another config (``scripts/cluster.py`` writes one),
``MULTIDB_DATABASE`` the database (default: the config's first), ``PORT``
the port. POST requests write on the primary and send back the ``multidb``
cookie; GET requests read from a replica that has applied the client's
writes (or the primary), and may not write.
"""

from __future__ import annotations

import os
from typing import Any

import flask
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import multidb
from multidb.flask import MultiDB


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "example_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(500))


dbs = multidb.load(os.environ.get("MULTIDB_CONFIG", "config/databases.yaml"))
DATABASE = os.environ.get("MULTIDB_DATABASE", dbs.databases[0])
Base.metadata.create_all(dbs.engine(DATABASE))  # on the primary

app = flask.Flask(__name__)
db = MultiDB(app, dbs)  # a causal scope and a role per request; commits before the response


@app.post("/notes")
def create_note() -> Any:
    note = Note(text=flask.request.get_json()["text"])
    s = db.session(DATABASE)  # POST: role "write", the primary
    s.add(note)
    s.flush()  # the id now; the commit comes before the response is sent
    return {"id": note.id, "text": note.text}, 201


@app.get("/notes/<int:note_id>")
def show_note(note_id: int) -> Any:
    note = db.session(DATABASE).get(Note, note_id)  # GET: role "read", a caught-up replica
    if note is None:
        flask.abort(404)
    return {"id": note.id, "text": note.text}


@app.get("/notes")
def list_notes() -> Any:
    notes = db.session(DATABASE).scalars(select(Note).order_by(Note.id)).all()
    return [{"id": n.id, "text": n.text} for n in notes]


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
