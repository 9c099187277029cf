"""Read-your-writes for any WSGI application (Flask, Django, ...): a causal scope per request.

>>> from multidb.wsgi import ReadYourWritesMiddleware
>>> app.wsgi_app = ReadYourWritesMiddleware(app.wsgi_app, dbs)  # doctest: +SKIP

Each request runs in its own causal scope, seeded from the client's token
(cookie ``multidb`` and header ``X-Multidb-Token``); a response to a request
that wrote carries the scope's token back in both. Sessions that name no role
take ``read`` for GET, HEAD and OPTIONS and ``write`` for other methods; an
explicit role always wins. Committing before the response starts is the
application's part (see :mod:`multidb.flask`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from . import causal as _causal
from ._web import READ_METHODS, RequestPolicy
from .config import Role
from .registry import Registry

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ReadYourWritesMiddleware"]


class ReadYourWritesMiddleware:
    """Wrap a WSGI application so each request has its own causal scope and role (SPEC 6)."""

    def __init__(
        self,
        app: WSGIApplication,
        dbs: Registry,
        *,
        cookie: str = "multidb",
        header: str = "X-Multidb-Token",
        read_methods: Iterable[str] = READ_METHODS,
        read_role: Role | None = "read",
        write_role: Role | None = "write",
        secure: bool = False,
    ) -> None:
        """``read_role`` / ``write_role`` None: sessions keep ``routing.default_role``.

        The cookie's ``Max-Age`` is the largest ``causal_ttl_seconds`` of the
        databases; ``secure=True`` adds ``Secure`` to it.
        """
        self.app = app
        self.dbs = dbs
        ttls = {n: db.routing.causal_ttl_seconds for n, db in dbs.config.databases.items()}
        self.policy = RequestPolicy.build(
            ttls,
            cookie=cookie,
            header=header,
            read_methods=read_methods,
            read_role=read_role,
            write_role=write_role,
            secure=secure,
        )
        self._environ_key = "HTTP_" + header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # The request's context is a copy: the scope and role set in it stay in it, and
        # the response body (a generator, maybe) is iterated in it too.
        context = contextvars.copy_context()
        return context.run(self._handle, context, environ, start_response)

    def _handle(
        self,
        context: contextvars.Context,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        stack = contextlib.ExitStack()
        scope = stack.enter_context(_causal.open_scope(None, inherit=False))
        stack.enter_context(_causal.use_role(self.policy.role(environ.get("REQUEST_METHOD", ""))))
        self.policy.seed(scope, environ.get("HTTP_COOKIE"), environ.get(self._environ_key))

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> object:
            headers = [*headers, *self.policy.response_headers(scope)]
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)  # type: ignore[arg-type]
        except BaseException:
            stack.close()
            raise
        return _Body(body, context, stack)


class _Body:
    """The application's response body, iterated and closed in the request's context."""

    def __init__(
        self, body: Iterable[bytes], context: contextvars.Context, stack: contextlib.ExitStack
    ) -> None:
        self._body = body
        self._iterator: Iterator[bytes] | None = None
        self._context = context
        self._stack = stack

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                self._context.run(close)
        finally:
            self._context.run(self._stack.close)
