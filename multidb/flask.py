"""Flask: per-request routed sessions, committed before the response is sent.

>>> from multidb.flask import MultiDB
>>> db = MultiDB(app, dbs)  # doctest: +SKIP
>>> @app.post("/orders")  # doctest: +SKIP
... def create_order():
...     db.session("main").add(Order(...))  # role=None: write (POST)
...     return {"ok": True}, 201

``MultiDB(app, dbs)`` wraps ``app.wsgi_app`` in
:class:`multidb.wsgi.ReadYourWritesMiddleware` (a causal scope and a role per
request) and opens each ``db.session(name, role=...)`` once per request.
After the view returns, an ``after_request`` hook commits every session the
request opened when the response is a success or a redirect (status < 400)
and rolls back otherwise; a commit that fails raises there, which Flask turns
into a 500, so a client never gets a 2xx for a write that was not saved. The
sessions are closed at teardown, whatever happened.
"""

from __future__ import annotations

from typing import Any

import flask
from sqlalchemy.orm import Session

from .config import Role
from .registry import Registry
from .sessions import finish
from .wsgi import ReadYourWritesMiddleware

__all__ = ["MultiDB"]

_KEY = "_multidb_sessions"


class MultiDB:
    """A Flask extension giving views routed sessions committed before the response."""

    def __init__(
        self, app: flask.Flask | None = None, dbs: Registry | None = None, **middleware: Any
    ) -> None:
        """``middleware``: keyword arguments of :class:`~multidb.wsgi.ReadYourWritesMiddleware`."""
        self.dbs = dbs
        self._middleware = middleware
        if app is not None:
            self.init_app(app, dbs)

    def init_app(self, app: flask.Flask, dbs: Registry | None = None) -> None:
        """Install the middleware and the commit / close hooks on ``app``."""
        if dbs is not None:
            self.dbs = dbs
        if self.dbs is None:
            raise ValueError("MultiDB needs a Registry: MultiDB(app, dbs) or init_app(app, dbs)")
        app.wsgi_app = ReadYourWritesMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, self.dbs, **self._middleware
        )
        app.after_request(self._commit)
        app.teardown_request(self._close)
        app.extensions["multidb"] = self

    def session(self, name: str | None, *, role: Role | None = None) -> Session:
        """This request's session for ``name`` and ``role``, opened on first use.

        ``role=None`` takes the request's role (``read`` for GET, HEAD and
        OPTIONS, else ``write``), as :meth:`Registry.session` does.
        """
        if self.dbs is None:
            raise RuntimeError("MultiDB.init_app(app, dbs) was not called")
        sessions: dict[tuple[str | None, Role | None], Session] = flask.g.setdefault(_KEY, {})
        key = (name, role)
        session = sessions.get(key)
        if session is None:
            session = sessions[key] = self.dbs.sessionmaker(name, role)()
        return session

    def _commit(self, response: flask.Response) -> flask.Response:
        sessions: dict[Any, Session] = flask.g.get(_KEY, {})
        for session in sessions.values():
            if response.status_code < 400:
                finish(session)  # commits (raising makes the response a 500), or only read
            else:
                session.rollback()
        return response

    def _close(self, exc: BaseException | None) -> None:
        sessions: dict[Any, Session] = flask.g.pop(_KEY, {})
        for session in sessions.values():
            session.close()  # rolls back what was not committed
