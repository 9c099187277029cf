"""FastAPI: a routed session per request, committed before the response is sent.

>>> from typing import Annotated
>>> from multidb.fastapi import session
>>> DB = Annotated[Session, session(dbs, "main")]  # doctest: +SKIP
>>> @app.post("/orders", status_code=201)  # doctest: +SKIP
... def create_order(s: DB): s.add(Order(...))

A dependency with ``yield`` runs its exit code after the response was sent
unless it is declared with ``Depends(..., scope="function")``: the plain
recipe answers ``201 Created`` and then fails to commit. :func:`session`
returns the function-scoped form, so the commit runs when the endpoint
returns, before the response starts, and a commit that fails is a 500;
:func:`async_session` is the same for ``async def`` endpoints.
Add :class:`multidb.asgi.ReadYourWritesMiddleware` for per-request causal
scopes and roles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import Depends
from sqlalchemy.orm import Session

from .config import Role
from .registry import Registry

__all__ = ["async_session", "session"]


def session(dbs: Registry, name: str | None, *, role: Role | None = None) -> Any:
    """A ``Depends`` giving the endpoint a session, committed before the response.

    The session is :meth:`Registry.session` ``(name, role=role)``: it commits
    when the endpoint returns, rolls back when it raises (an ``HTTPException``
    included), and is always closed. ``role=None`` takes the request's role
    set by the middleware (``read`` for GET, HEAD and OPTIONS, else ``write``).
    """

    def dependency() -> Iterator[Session]:
        with dbs.session(name, role=role) as s:
            yield s

    return Depends(dependency, scope="function")


def async_session(dbs: Registry, name: str | None, *, role: Role | None = None) -> Any:
    """:func:`session` for ``async def`` endpoints: :meth:`Registry.async_session`."""

    # Not AsyncIterator[AsyncSession]: importing SQLAlchemy's asyncio needs greenlet,
    # which sync-only applications need not install.
    async def dependency() -> AsyncIterator[Any]:
        async with dbs.async_session(name, role=role) as s:
            yield s

    return Depends(dependency, scope="function")
