"""asyncio (SPEC section 5): AsyncEngines and AsyncSessions, routed by the sync session classes.

SQLAlchemy's :class:`~sqlalchemy.ext.asyncio.AsyncSession` runs a sync
:class:`~sqlalchemy.orm.Session` in a greenlet. An async session factory
here is the sync factory the registry resolves for the same name and role,
given to :func:`~sqlalchemy.ext.asyncio.async_sessionmaker` as its
``sync_session_class`` (:class:`~multidb.ReadSession`,
:class:`~multidb.AutoSession` or the configured plain class), with its
:class:`~multidb.sessions.ReadSource` reading through the AsyncEngines'
``sync_engine``: every routing rule has one implementation, for both.
Read-only setup, write guards and causal position capture are installed on
``AsyncEngine.sync_engine`` exactly as on a sync Engine.

Nothing here blocks the event loop: the health monitor is threads; health
checks run off the loop; causal waits sleep on the server. Sync code that
must reach an async-only driver (the monitor's probes, ``multidb check``,
:meth:`Registry.health`) does so with :func:`run_blocking` through a
pool-less probe engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from .sessions import AutoSession, ReadSession, ReadSource, RoutedSession, finish

if TYPE_CHECKING:
    from .registry import Registry

_ROUTED_CLASSES: dict[tuple[type[Session], type[Session]], type[Session]] = {}


def _routed_class(routing: type[Session], base: type[Session]) -> type[Session]:
    """``routing`` on top of ``base``, made once per pair."""
    made = _ROUTED_CLASSES.get((routing, base))
    if made is None:
        namespace = {"__module__": routing.__module__, "__doc__": routing.__doc__}
        made = _ROUTED_CLASSES[routing, base] = type(routing.__name__, (routing, base), namespace)
    return made


__all__ = ["AsyncEngines", "AsyncSessionScope", "run_blocking"]

log = logging.getLogger("multidb.routing")

T = TypeVar("T")


def run_blocking(fn: Callable[[], T]) -> T:
    """Run sync ``fn``, which may use async drivers' engines, to its end; block until then.

    ``fn`` runs in a greenlet over a private event loop (in a worker thread
    when an event loop already runs in this one), so the connections it opens
    must not outlive it: use pool-less engines (the registry's probe engines).
    """

    async def main() -> T:
        return await greenlet_spawn(fn)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="multidb-sync") as worker:
        return worker.submit(asyncio.run, main()).result()


class AsyncEngines:
    """The asyncio half of a :class:`~multidb.Registry`: its AsyncEngines and async factories.

    Engines are created on first use, like the sync ones, with the same
    read-only setup, write guards and position capture on their ``sync_engine``.
    """

    def __init__(self, registry: Registry, class_: type[AsyncSession] | None = None) -> None:
        if class_ is not None and not (
            isinstance(class_, type) and issubclass(class_, AsyncSession)
        ):
            raise TypeError(
                "async_session_class must be a subclass of"
                f" sqlalchemy.ext.asyncio.AsyncSession, got {class_!r}"
            )
        self._registry = registry
        self._class = class_ or AsyncSession
        self._engines: dict[str, AsyncEngine] = {}
        # (name, role) -> (factory, whether the router picks its replicas)
        self._factories: dict[
            tuple[str | None, str | None], tuple[async_sessionmaker[AsyncSession], bool]
        ] = {}
        self._lock = threading.Lock()

    # -- engines --------------------------------------------------------------

    def engine(self, name: str) -> AsyncEngine:
        """The AsyncEngine of an engine name; a database name means its primary."""
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        registry = self._registry
        name = registry._engine_name(name)
        registry._require("async", name, (name,), "async_engine")
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine_config = registry._engine_configs[name]
                registry._prepare(engine_config)
                engine = create_async_engine(engine_config.url, **registry._options(engine_config))
                registry._install(engine.sync_engine, engine_config)
                self._engines[name] = engine
        return engine

    def sync_engine(self, name: str) -> Engine:
        """``engine(name).sync_engine``: where an async session's ReadSource reads."""
        engine = self._engines.get(name) or self.engine(name)
        return engine.sync_engine

    # -- session factories ----------------------------------------------------

    def factory(
        self, name: str | None, role: str | None
    ) -> tuple[async_sessionmaker[AsyncSession], bool]:
        """The async session factory of ``name`` and ``role`` (resolved once), and whether
        its sessions read through a router (then the lag monitor must run)."""
        found = self._factories.get((name, role))
        if found is None:
            found = self._factories[name, role] = self._resolve(name, role)
        return found

    def _resolve(
        self, name: str | None, role: str | None
    ) -> tuple[async_sessionmaker[AsyncSession], bool]:
        registry = self._registry
        route = registry._route(name, role)
        registry._require("async", name, route.engines, "async_session")
        sync = route.maker
        kw = dict(sync.kw)
        kw.pop("bind", None)
        # The same routing, reading through the AsyncEngines' sync_engine.
        reads = kw.get("multidb_reads")
        if isinstance(reads, ReadSource):
            kw["multidb_reads"] = self._through_async(reads)
        databases = kw.get("multidb_databases")
        if databases:
            kw["multidb_databases"] = {n: self._through_async(r) for n, r in databases.items()}
        count = getattr(sync, "_count", None)  # write and pinned sessions are counted
        maker_class = async_sessionmaker if count is None else _CountingMaker
        maker: async_sessionmaker[AsyncSession] = maker_class(
            bind=None if route.engine is None else self.engine(route.engine),
            class_=self._class,
            sync_session_class=self._sync_class(sync.class_),
            **kw,
        )
        if count is not None:
            maker._count = count  # type: ignore[attr-defined]
        return maker, route.routed

    def _sync_class(self, resolved: type[Session]) -> type[Session]:
        """The sync session class inside this registry's AsyncSessions for ``resolved``.

        The same routing class, on top of the async class's own
        ``sync_session_class`` (SQLModel's AsyncSession runs a ``sqlmodel.Session``).
        """
        base: type[Session] = getattr(self._class, "sync_session_class", None) or Session
        if base is Session:
            return resolved
        for routing in (ReadSession, AutoSession, RoutedSession):
            if issubclass(resolved, routing):
                return _routed_class(routing, base)
        return base

    def _through_async(self, source: ReadSource) -> ReadSource:
        twin = copy.copy(source)
        twin.engine = self.sync_engine
        return twin

    def scope(
        self, maker: async_sessionmaker[AsyncSession], ready: Callable[[], None] | None
    ) -> AsyncSessionScope:
        """:class:`AsyncSessionScope` (the registry imports this module on first async use)."""
        return AsyncSessionScope(maker, ready)

    # -- lifecycle ------------------------------------------------------------

    def forget(self, name: str | None) -> None:
        """Drop the factories of ``name`` (None: several databases), made again on next use."""
        with self._lock:
            for key in [k for k in self._factories if k[0] == name]:
                del self._factories[key]

    def take(self) -> dict[str, AsyncEngine]:
        """Forget every AsyncEngine and factory; the caller disposes the engines returned."""
        with self._lock:
            engines = dict(self._engines)
            self._engines.clear()
            self._factories.clear()
        return engines


class _CountingMaker(async_sessionmaker[AsyncSession]):
    """An ``async_sessionmaker`` that counts the sessions it makes (``EngineStats.sessions``)."""

    _count: Callable[[], None]

    def __call__(self, **local_kw: Any) -> AsyncSession:
        self._count()
        return super().__call__(**local_kw)


class AsyncSessionScope:
    """The async context manager :meth:`Registry.async_session` returns: commit (not a
    session that only read replicas, see :func:`~multidb.sessions.finish`), or roll back
    on an error; always close."""

    __slots__ = ("_maker", "_ready", "_session")

    def __init__(
        self, maker: async_sessionmaker[AsyncSession], ready: Callable[[], None] | None
    ) -> None:
        self._maker = maker
        self._ready = ready

    async def __aenter__(self) -> AsyncSession:
        if self._ready is not None:  # the lag monitor's first round, waited for off the loop
            await asyncio.to_thread(self._ready)
        self._session = self._maker()
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._session
        try:
            if exc_type is None:
                await session.run_sync(finish)  # commits, unless it only read replicas
            else:
                try:
                    await session.rollback()
                except Exception:  # the block's own error is the one to see
                    log.warning("rollback after an error failed", exc_info=True)
        finally:
            await session.close()
