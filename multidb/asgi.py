"""Read-your-writes for any ASGI application (Starlette, FastAPI, ...): a causal scope per request.

>>> from multidb.asgi import ReadYourWritesMiddleware
>>> app.add_middleware(ReadYourWritesMiddleware, dbs=dbs)  # doctest: +SKIP

Each HTTP request runs in its own causal scope, seeded from the client's
token (cookie ``multidb`` and header ``X-Multidb-Token``); a response to a
request that wrote carries the scope's token back in both. Sessions that
name no role take ``read`` for GET, HEAD and OPTIONS and ``write`` for other
methods; an explicit role always wins. The scope is one object shared by
every context copied from the request's: a write made in a threadpool worker
(Starlette's sync endpoints and dependencies) or a child task is seen here.
Lifespan and websocket connections pass through untouched. Committing
before the response starts is the application's part (see
:mod:`multidb.fastapi`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from . import causal as _causal
from ._web import READ_METHODS, RequestPolicy
from .config import Role
from .registry import Registry

__all__ = ["ReadYourWritesMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ReadYourWritesMiddleware:
    """Wrap an ASGI application so each request has its own causal scope and role (SPEC 6)."""

    def __init__(
        self,
        app: ASGIApp,
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
        self._header = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies: list[str] = []
        token: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies.append(value.decode("latin-1"))
            elif name == self._header:
                token = value.decode("latin-1")
        role = self.policy.role(scope.get("method", ""))
        with _causal.open_scope(None, inherit=False) as causal, _causal.use_role(role):
            self.policy.seed(causal, "; ".join(cookies), token)

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start":
                    extra = self.policy.response_headers(causal)
                    if extra:
                        headers = list(message.get("headers", ()))
                        headers += [(k.lower().encode(), v.encode()) for k, v in extra]
                        message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_with_token)
