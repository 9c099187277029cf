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

Nothing here blocks the event loop: the lag monitor is a thread; health
checks await the drivers (an engine of a sync-only driver is probed in a
worker thread); causal waits sleep on the server. Sync code that must reach
an async-only driver (``multidb check``, :meth:`Registry.health`, the lag
monitor) does so with :func:`run_blocking` through a pool-less engine of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.util import greenlet_spawn

from .config import EngineConfig
from .drivers import modes
from .sessions import ReadSource

if TYPE_CHECKING:
    from .registry import EngineStatus, Registry

__all__ = ["AsyncEngines", "AsyncSessionScope", "run_blocking"]

log = logging.getLogger("multidb.routing")

T = TypeVar("T")

# create_engine options that configure a pool: not for the pool-less probe engines.
_POOL_OPTIONS = frozenset(
    (
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "pool_recycle",
        "pool_pre_ping",
        "pool_use_lifo",
        "pool_reset_on_return",
        "poolclass",
        "pool",
        "echo_pool",
        "pool_logging_name",
    )
)


def run_blocking(fn: Callable[[], T]) -> T:
    """Run sync ``fn``, which may use async drivers' engines, to its end; block until then.

    ``fn`` runs in a greenlet over a private event loop (in a worker thread
    when an event loop already runs in this one), so the connections it opens
    must not outlive it: use pool-less engines (:meth:`AsyncEngines.probe_engine`).
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

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._engines: dict[str, AsyncEngine] = {}
        self._probes: dict[str, Engine] = {}
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
                engine = create_async_engine(engine_config.url, **engine_config.options)
                registry._install(engine.sync_engine, engine_config)
                self._engines[name] = engine
        return engine

    def sync_engine(self, name: str) -> Engine:
        """``engine(name).sync_engine``: where an async session's ReadSource reads."""
        engine = self._engines.get(name) or self.engine(name)
        return engine.sync_engine

    def probe_engine(self, engine_config: EngineConfig) -> Engine:
        """A pool-less sync face of an async-only engine, for :func:`run_blocking` callers.

        Without a pool no connection outlives the event loop that opened it.
        """
        name = engine_config.name
        engine = self._probes.get(name)
        if engine is None:
            self._registry._prepare(engine_config)
            options = {k: v for k, v in engine_config.options.items() if k not in _POOL_OPTIONS}
            async_engine = create_async_engine(engine_config.url, poolclass=NullPool, **options)
            engine = self._probes.setdefault(name, async_engine.sync_engine)
        return engine

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
        maker = async_sessionmaker(
            bind=None if route.engine is None else self.engine(route.engine),
            class_=AsyncSession,
            sync_session_class=sync.class_,
            **kw,
        )
        return maker, route.routed

    def _through_async(self, source: ReadSource) -> ReadSource:
        twin = copy.copy(source)
        twin.engine = self.sync_engine
        return twin

    # -- health and lifecycle -------------------------------------------------

    async def health(self) -> list[EngineStatus]:
        """Every engine's status, in file order; databases and replicas probed at once."""
        databases = self._registry.config.databases.values()
        found = await asyncio.gather(*(self._database_health(db.name) for db in databases))
        return [status for statuses in found for status in statuses]

    async def _database_health(self, database: str) -> list[EngineStatus]:
        config = self._registry.config.databases[database]
        timeout = config.routing.connect_timeout_seconds
        primary, position = await self._status(config.primary, None, timeout)
        replicas = await asyncio.gather(
            *(self._status(r, position, timeout) for r in config.replicas)
        )
        return [primary, *(status for status, _ in replicas)]

    async def _status(
        self, engine_config: EngineConfig, position: str | None, timeout: float
    ) -> tuple[EngineStatus, str | None]:
        registry = self._registry
        started = time.perf_counter()

        async def ask() -> tuple[EngineStatus, str | None]:
            if "async" not in modes(engine_config.url):  # a sync-only driver: off the loop
                return await asyncio.to_thread(registry._status, engine_config.name, position)
            try:
                async with self.engine(engine_config.name).connect() as connection:
                    return await connection.run_sync(
                        registry._measure, engine_config, position, started
                    )
            except Exception as exc:
                return registry._failed(engine_config, exc), None

        try:
            return await asyncio.wait_for(ask(), timeout)
        except TimeoutError:
            error = TimeoutError(f"no answer within {timeout:g}s")
            return registry._failed(engine_config, error), None

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


class AsyncSessionScope:
    """The async context manager :meth:`Registry.async_session` returns."""

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
                await session.commit()
            else:
                try:
                    await session.rollback()
                except Exception:  # the block's own error is the one to see
                    log.warning("rollback after an error failed", exc_info=True)
        finally:
            await session.close()
