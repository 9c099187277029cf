"""The registry: every engine and session class of one config, handed out by name and role.

>>> import multidb
>>> with multidb.Registry.from_yaml("config/databases.yaml") as dbs:  # doctest: +SKIP
...     with dbs.session("main", role="read") as s:
...         s.execute(select(1))

Building a registry opens no connection and creates no engine. Each engine
gets its configured ``sessionmaker`` at once; the engine itself is created,
and the session class bound to it with ``configure(bind=...)``, the first
time it is used. Every engine gets a connect timeout
(``routing.connect_timeout_seconds``) unless its options already set one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from sqlalchemy import create_engine, orm
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from . import causal as _causal
from . import config as _config
from .causal import CausalScope
from .config import Config, DatabaseConfig, EngineConfig, Role
from .cutoff import Connections
from .drivers import Mode, instead, modes
from .errors import RoutingError, UnknownNameError
from .monitor import Answer, HealthMonitor, Prober, report
from .positions import install_capture
from .readonly import install_primary, install_replica
from .router import EngineStats, Router
from .routes import DatabaseRouter, RouteTable
from .sessions import AutoSession, ReadSession, ReadSource, RoutedSession, finish
from .timeouts import install_handshake_timeout, with_connect_timeout

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from . import aio
    from .explain import Explanation
    from .testing import Testing

__all__ = ["EngineStatus", "Registry", "load"]

log = logging.getLogger("multidb.routing")

_ROLES = ("write", "read", "auto")
_S = TypeVar("_S", bound=Session)
_T = TypeVar("_T")

# create_engine options of the pool, left out of the probe engines (which pool nothing).
_POOL_OPTIONS = frozenset(
    {
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "pool_recycle",
        "pool_pre_ping",
        "pool_use_lifo",
        "pool_reset_on_return",
        "poolclass",
        "pool",
        "pool_logging_name",
        "echo_pool",
    }
)


@dataclass(frozen=True, slots=True)
class _Route:
    """What a name and role resolve to, for sync and async factories alike."""

    maker: orm.sessionmaker[Session]  # the sync factory (its class and options)
    engine: str | None  # the engine its sessions are bound to (None: several databases)
    engines: tuple[str, ...]  # every engine its sessions may use
    bound: bool  # maker is the engine's own configured class, bound on first use
    routed: bool  # the router picks replicas: the lag monitor must run


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """What :meth:`Registry.health` found for one engine."""

    name: str
    role: Literal["primary", "replica"]
    url: str  # password masked
    ok: bool
    latency_ms: float | None
    lag_seconds: float | None  # replicas only; None when unknown
    error: str | None  # one line, or None


class Registry:
    """The databases of one config: engines, session classes and routed sessions.

    Safe to share between threads; sessions are not, as in SQLAlchemy.
    """

    def __init__(
        self,
        config: Config,
        *,
        session_class: type[Session] | None = None,
        async_session_class: type[AsyncSession] | None = None,
    ) -> None:
        if session_class is not None and not (
            isinstance(session_class, type) and issubclass(session_class, Session)
        ):
            raise TypeError(
                f"session_class must be a subclass of sqlalchemy.orm.Session, got {session_class!r}"
            )
        self.config = config
        self.session_class: type[Session] = session_class or Session
        self.async_session_class = async_session_class
        self._read_class = _routed_class(ReadSession, self.session_class)
        self._auto_class = _routed_class(AutoSession, self.session_class)
        self._engine_configs: dict[str, EngineConfig] = {e.name: e for e in config.engines()}
        self._engines: dict[str, Engine] = {}
        self._probe_engines: dict[str, Engine] = {}
        self._connections: dict[str, Connections] = {}  # replicas' open connections
        self._lock = threading.Lock()
        self._routers = {name: Router(db) for name, db in config.databases.items()}
        self._makers: dict[str, orm.sessionmaker[Session]] = {}
        for name, engine_config in self._engine_configs.items():
            database = config.databases[engine_config.database]
            if engine_config.role == "primary":
                self._makers[name] = _CountingMaker(
                    self._counter(name), class_=self.session_class, **database.session
                )
            else:
                self._makers[name] = self._reads_maker(self._read_class, database, pinned=name)
        self._routed: dict[tuple[str, str], orm.sessionmaker[Session]] = {}
        for name, database in config.databases.items():
            self._routed[name, "read"] = self._reads_maker(self._read_class, database)
            self._routed[name, "auto"] = self._reads_maker(self._auto_class, database)
        self._watched = [
            (db, self._routers[name]) for name, db in config.databases.items() if db.replicas
        ]
        self._monitor: HealthMonitor | None = None
        self._routes = RouteTable()
        self._database_router: DatabaseRouter = self._routes
        self._ttls = {n: db.routing.causal_ttl_seconds for n, db in config.databases.items()}
        self._health_prober = Prober(self._health_engine, call=self._probe_call)
        # (name, role) -> factory, once resolved: the hot path is one dict lookup.
        self._factories: dict[tuple[str | None, str | None], orm.sessionmaker[Session]] = {}
        # The asyncio half, made on first async use: SQLAlchemy's asyncio needs greenlet,
        # which only the async drivers' extras install (a class given checks it now).
        self._async: aio.AsyncEngines | None = None
        if async_session_class is not None:
            from .aio import AsyncEngines

            self._async = AsyncEngines(self, async_session_class)
        # Engines whose driver serves async code only: sync probes go through run_blocking.
        self._async_only = frozenset(
            name for name, e in self._engine_configs.items() if "sync" not in modes(e.url)
        )

    # -- building -------------------------------------------------------------

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        session_class: type[Session] | None = None,
        async_session_class: type[AsyncSession] | None = None,
    ) -> Registry:
        """Load and check a YAML config file; raises ConfigError, opens no connection.

        ``session_class`` (e.g. ``sqlmodel.Session``) is the class every
        session handed out is an instance of, with multidb's routing added;
        ``async_session_class`` the same for asyncio.
        """
        return cls(
            _config.load(path, env=env),
            session_class=session_class,
            async_session_class=async_session_class,
        )

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        session_class: type[Session] | None = None,
        async_session_class: type[AsyncSession] | None = None,
    ) -> Registry:
        """Check a config given as a mapping; raises ConfigError, opens no connection."""
        return cls(
            _config.from_dict(data, env=env),
            session_class=session_class,
            async_session_class=async_session_class,
        )

    def _reads_maker(
        self, class_: type[Session], database: DatabaseConfig, pinned: str | None = None
    ) -> orm.sessionmaker[Session]:
        """A factory of ``class_`` sessions reading from ``pinned``, or as the router chooses."""
        reads = self._source(database, pinned)
        if pinned is None:  # the router counts the sessions it routes
            return orm.sessionmaker(class_=class_, multidb_reads=reads, **database.session)
        return _CountingMaker(
            self._counter(pinned), class_=class_, multidb_reads=reads, **database.session
        )

    def _source(self, database: DatabaseConfig, pinned: str | None = None) -> ReadSource:
        """Where sessions read ``database`` from: ``pinned``, or as its router chooses."""
        routing = database.routing
        return ReadSource(
            database=database.name,
            primary=database.primary.name,
            engine=self.engine,
            router=None if pinned else self._routers[database.name],
            pinned=pinned,
            read_your_writes=routing.read_your_writes,
            causal_wait_seconds=routing.causal_wait_seconds,
            causal_ttl_seconds=routing.causal_ttl_seconds,
        )

    def _counter(self, name: str) -> Callable[[], None]:
        """Counts a session of engine ``name`` that no router chose (write, pinned)."""
        router = self._routers[self._engine_configs[name].database]
        return functools.partial(router.note_session, name)

    # -- names ----------------------------------------------------------------

    @property
    def databases(self) -> tuple[str, ...]:
        """The database names, in file order."""
        return tuple(self.config.databases)

    @property
    def engine_names(self) -> tuple[str, ...]:
        """Every engine name: ``DATABASE.primary`` and ``DATABASE.REPLICA``, in file order."""
        return tuple(self._engine_configs)

    def __contains__(self, name: object) -> bool:
        return name in self.config.databases or name in self._engine_configs

    def __iter__(self) -> Iterator[str]:
        return iter(self.config.databases)

    def __len__(self) -> int:
        return len(self.config.databases)

    def __repr__(self) -> str:
        return f"<Registry {self.config.source or 'from_dict'}: {', '.join(self.databases)}>"

    def _engine_name(self, name: str) -> str:
        if name in self._engine_configs:
            return name
        database = self.config.databases.get(name)
        if database is None:
            raise UnknownNameError(name, [*self.databases, *self.engine_names])
        return database.primary.name

    # -- engines and session classes ------------------------------------------

    def engine(self, name: str) -> Engine:
        """The Engine of an engine name; a database name means its primary.

        Created on first use; creating it opens no connection.
        """
        engine = self._engines.get(name)
        if engine is not None:
            return engine
        name = self._engine_name(name)
        self._require("sync", name, (name,), "engine")
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine_config = self._engine_configs[name]
                engine = self._engines[name] = self._create_engine(engine_config)
                self._makers[name].configure(bind=engine)
                if engine_config.role == "primary":
                    # Routed sessions' bind: code reading session.bind.dialect works.
                    for role in ("read", "auto"):
                        self._routed[engine_config.database, role].configure(bind=engine)
        return engine

    def _create_engine(self, engine_config: EngineConfig) -> Engine:
        self._prepare(engine_config)
        engine = create_engine(engine_config.url, **self._options(engine_config))
        install_handshake_timeout(engine, self._timeout(engine_config.name))
        self._install(engine, engine_config)
        if engine_config.role == "replica":
            self._connections[engine_config.name] = Connections(engine)
        return engine

    @staticmethod
    def _prepare(engine_config: EngineConfig) -> None:
        """What an engine needs before it is created, sync or async."""
        url = engine_config.url
        # A SQLite primary file may live in a directory that does not exist yet
        # (config/var/ on a fresh clone); URI-mode URLs are left as written.
        if (
            url.get_backend_name() == "sqlite"
            and engine_config.role == "primary"
            and url.database not in (None, "", ":memory:")
            and not url.query.get("uri")
        ):
            path = Path(url.database)
            path.parent.mkdir(parents=True, exist_ok=True)
            # An empty file is an empty database; replicas opening it read-only
            # (mode=ro) then find it, whichever engine connects first.
            path.touch(exist_ok=True)

    def _install(self, engine: Engine, engine_config: EngineConfig) -> None:
        """Read-only setup, write guards and position capture; ``engine`` may be a sync_engine."""
        if engine_config.role == "replica":
            install_replica(engine, engine_config.name)
        else:
            install_primary(engine, engine_config.name)
            database = self.config.databases[engine_config.database]
            if database.routing.read_your_writes and database.replicas:
                install_capture(engine, database.name)

    def _timeout(self, name: str) -> float:
        database = self.config.databases[self._engine_configs[name].database]
        return database.routing.connect_timeout_seconds

    def sessionmaker(self, name: str | None, role: Role | None = None) -> orm.sessionmaker[Session]:
        """A session factory.

        For an engine name without a role: that engine's configured session
        class, bound to the engine. For a database name (or an engine name
        with a role): a factory of sessions routed as ``role``, for
        ``scoped_session`` and framework dependencies. For None: sessions of
        every routed model (:meth:`route`).
        """
        if role is None and (name is None or name in self.config.databases):
            role = _causal.request_role.get()
        return self._factory(name, role)

    def _factory(self, name: str | None, role: str | None) -> orm.sessionmaker[Session]:
        maker = self._factories.get((name, role))
        if maker is None:
            maker = self._factories[name, role] = self._resolve(name, role)
        return maker

    def _resolve(self, name: str | None, role: str | None) -> orm.sessionmaker[Session]:
        route = self._route(name, role)
        self._require("sync", name, route.engines, "session")
        if route.engine is not None:
            engine = self.engine(route.engine)  # binds the engine's own session class
            if not route.bound:  # routed sessions' bind: code reading session.bind works
                route.maker.configure(bind=engine)
        if route.routed and self._watched:
            self._start_monitor()  # and wait for its first round, like every caller
        return route.maker

    def _route(self, name: str | None, role: str | None) -> _Route:
        """Where sessions of ``name`` and ``role`` go; raises RoutingError, UnknownNameError."""
        if role is not None and role not in _ROLES:
            raise RoutingError(f"unknown role {role!r} for {name!r}: use 'write', 'read' or 'auto'")
        if name is None:  # every routed model; engines are checked as statements reach them
            role = role or "write"
            return _Route(self._several(role), None, (), False, role != "write")
        engine_config = self._engine_configs.get(name)
        if engine_config is None:
            database = self.config.databases.get(name)
            if database is None:
                raise UnknownNameError(name, [*self.databases, *self.engine_names])
            role = role or database.routing.default_role
            primary = database.primary.name
            if role == "write":
                return _Route(self._makers[primary], primary, (primary,), True, False)
            engines = tuple(e.name for e in database.engines)
            return _Route(
                self._routed[name, role], primary, engines, False, bool(database.replicas)
            )
        # An engine name pins the session to that engine.
        if engine_config.role == "replica":
            if role == "write":
                raise RoutingError(
                    f"{name} is a replica: it cannot take role='write'; "
                    f"use {engine_config.database!r} or {engine_config.database}.primary to write"
                )
            return _Route(self._makers[name], name, (name,), True, False)
        if role == "read":  # read-only on a primary; _factory keeps it
            database = self.config.databases[engine_config.database]
            maker = self._reads_maker(self._read_class, database, pinned=name)
            return _Route(maker, name, (name,), False, False)
        return _Route(self._makers[name], name, (name,), True, False)

    def _require(self, mode: Mode, name: str | None, engines: tuple[str, ...], method: str) -> None:
        """Raise RoutingError unless every engine's driver serves ``mode`` code."""
        for engine in engines:
            url = self._engine_configs[engine].url
            if mode in modes(url):
                continue
            if mode == "sync":
                raise RoutingError(
                    f"{engine} uses {url.drivername}, an async-only driver: use"
                    f" dbs.async_{method}({name!r}) in async code, or write"
                    f" {instead(url, 'sync')} to serve sync code too"
                )
            plain = method.removeprefix("async_")
            raise RoutingError(
                f"{engine} uses {url.drivername}, a sync-only driver: use dbs.{plain}({name!r})"
                f" in sync code, or write {instead(url, 'async')} to serve async code"
            )

    # -- sessions -------------------------------------------------------------

    def session(self, name: str | None, *, role: Role | None = None) -> _SessionScope:
        """A session for a block: commits at its end, rolls back on error, always closes.

        ``name`` is a database (routed by ``role``, default
        ``routing.default_role``), an engine (pinned to it), or None: every
        model :meth:`route` names, each statement on its own database by the
        role's rules (default ``write``). An unknown name or a role that does
        not fit raises here, before the block runs. A read session, or an
        auto session that only read replicas, has nothing to commit: its
        transaction is just closed.
        """
        if role is None and (name is None or name in self.config.databases):
            role = _causal.request_role.get()
        maker = self._factories.get((name, role)) or self._factory(name, role)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s session", name, role or "default-role")
        return _SessionScope(maker)

    # -- several databases in one session --------------------------------------

    def route(self, target: Any, database: str) -> None:
        """Say that ``target`` lives in ``database``, for ``session(None, ...)``.

        ``target`` is a mapped class (its subclasses follow), a declarative
        base (every class of it), a ``Table`` or a ``MetaData``::

            dbs.route(User, "main")
            dbs.route(AnalyticsBase, "reports")
        """
        if database not in self.config.databases:
            raise UnknownNameError(database, self.databases, kind="database")
        self._routes.add(target, database)

    def use_router(self, router: DatabaseRouter) -> None:
        """Replace the table of routes with ``router.database_for(mapper, clause)``.

        It returns a database name, or None when it does not know (then the
        statement raises ``RoutingError``, unless it names a database with
        ``bind_arguments={"database": NAME}``).
        """
        self._database_router = router
        self._factories = {k: v for k, v in self._factories.items() if k[0] is not None}
        if self._async is not None:
            self._async.forget(None)

    def _several(self, role: str) -> orm.sessionmaker[Session]:
        """A factory of sessions serving every database, routed per statement."""
        sources = {name: self._source(database) for name, database in self.config.databases.items()}
        options: dict[str, Any] = {}
        for database in self.config.databases.values():  # in file order, later ones win
            options.update(database.session)
        class_ = {
            "write": _routed_class(RoutedSession, self.session_class),
            "read": self._read_class,
            "auto": self._auto_class,
        }[role]
        return orm.sessionmaker(
            class_=class_,
            multidb_databases=sources,
            multidb_routes=self._database_router,
            **options,
        )

    # -- explain (SPEC 2) -----------------------------------------------------

    def explain(
        self, name: str | None, statement: Any = None, *, role: Role | None = None
    ) -> Explanation:
        """Where a session of ``name`` and ``role`` would send ``statement`` now, and why.

        Sends nothing, opens no connection, and neither counts nor moves the
        router's choice on (see :mod:`multidb.explain` for the rules)::

            dbs.explain("main", select(User), role="read")
            # Explanation(engine='main.a', reason='SmoothWeightedRoundRobin among main.a')
        """
        from .explain import explain

        return explain(self, name, statement, role)

    # -- testing (SPEC 8) -----------------------------------------------------

    @property
    def testing(self) -> Testing:
        """Test helpers: ``record()``, ``lag(name, seconds)``, ``mirror()`` (multidb.testing)."""
        from .testing import Testing

        return Testing(self)

    # -- causal scopes --------------------------------------------------------

    def causal(self, token: str | None = None) -> AbstractContextManager[CausalScope]:
        """A causal scope for a block, seeded from ``token`` (SPEC section 4).

        Reads in the block never miss a write made before them in it, nor one
        the token names; the enclosing scope takes in the block's writes when
        it ends. A malformed token is ignored (logged at WARNING).
        """
        return _causal.open_scope(token)

    def causal_token(self) -> str | None:
        """The current scope's unexpired positions as a short ASCII token, or None."""
        scope = _causal.current()
        return None if scope is None else scope.token(self._ttls)

    # -- health ---------------------------------------------------------------

    def health(self, *, timeout: float | None = None) -> list[EngineStatus]:
        """Connect to every engine at once and report its status, in file order.

        Each engine gets ``timeout`` seconds (default: its database's
        ``routing.connect_timeout_seconds``) to answer; one that accepts
        connections and never answers is reported not ok after that, and
        never holds up the others.
        """
        databases = list(self.config.databases.values())
        for database in databases:  # a SQLite primary's file exists before its replicas look
            self._prepare(database.primary)
        results: dict[str, list[Answer]] = {}

        def run(database: DatabaseConfig) -> None:
            limit = database.routing.connect_timeout_seconds if timeout is None else timeout
            results[database.name] = self._health_prober.round(database, limit)

        threads = [threading.Thread(target=run, args=(db,), daemon=True) for db in databases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()  # each round ends within its timeout
        statuses = []
        for database in databases:
            answers = results[database.name]
            report(self._routers[database.name], answers[1:])
            statuses += [
                self._status(engine_config, answer)
                for engine_config, answer in zip(database.engines, answers, strict=True)
            ]
        return statuses

    @staticmethod
    def _status(engine_config: EngineConfig, answer: Answer) -> EngineStatus:
        state = answer.state
        role_error = None if state is None else state.role_error
        return EngineStatus(
            engine_config.name,
            engine_config.role,
            _config.mask_url(engine_config.url),
            answer.answered and role_error is None,
            None if answer.latency_ms is None else round(answer.latency_ms, 2),
            None if engine_config.role == "primary" else answer.lag,
            answer.error,
        )

    def stats(self) -> dict[str, EngineStats]:
        """Counters per engine: sessions (write, pinned included), fallbacks, ejections, probes."""
        rows: dict[str, EngineStats] = {}
        for router in self._routers.values():
            rows.update((row.name, row) for row in router.stats())
        return rows

    # -- health monitor -------------------------------------------------------

    def _start_monitor(self) -> None:
        """Start probing replicas; wait (bounded) until every replica was probed once."""
        with self._lock:
            monitor = self._monitor
            if monitor is None:
                monitor = self._monitor = HealthMonitor(
                    self._watched, self._probe_engine, self._cut_off, call=self._probe_call
                )
                monitor.start()
        # Every caller waits, not only the one that started it: concurrent first
        # reads use replicas. A round ends within its connect timeout.
        limit = max(db.routing.connect_timeout_seconds for db, _ in self._watched)
        monitor.first_round.wait(limit + 1.0)

    def _cut_off(self, name: str) -> None:
        """Fail the statements waiting on replica ``name``, which stopped answering."""
        connections = self._connections.get(name)
        if connections is not None:
            count = connections.cut_off()
            if count:
                log.warning(
                    "%s: %d connection(s) to %s cut off: it does not answer",
                    self._engine_configs[name].database,
                    count,
                    name,
                )

    def _probe_engine(self, name: str) -> Engine:
        """The engine the monitor probes ``name`` with: one connection of its own.

        Its own, so that a busy or exhausted application pool never delays a
        probe and a hung probe holds no application connection; checked
        before each use (``pool_pre_ping``), so a restarted server costs no
        failed probe. An async-only driver's has no pool (its connections
        belong to the event loop of one probe, see :meth:`_probe_call`).
        """
        engine = self._probe_engines.get(name)
        if engine is not None:
            return engine
        engine_config = self._engine_configs[name]
        with self._lock:
            engine = self._probe_engines.get(name)
            if engine is None:
                self._prepare(engine_config)
                options = {
                    k: v for k, v in self._options(engine_config).items() if k not in _POOL_OPTIONS
                }
                if name in self._async_only:
                    from sqlalchemy.ext.asyncio import create_async_engine

                    engine = create_async_engine(
                        engine_config.url, poolclass=NullPool, **options
                    ).sync_engine
                else:
                    engine = create_engine(
                        engine_config.url,
                        poolclass=QueuePool,
                        pool_size=1,
                        max_overflow=0,
                        pool_pre_ping=True,
                        pool_timeout=self._timeout(name),
                        **options,
                    )
                install_handshake_timeout(engine, self._timeout(name))
                self._probe_engines[name] = engine
        return engine

    def _health_engine(self, name: str) -> Engine:
        """The engine health() probes ``name`` with: the application's, or a probe engine."""
        return self._probe_engine(name) if name in self._async_only else self.engine(name)

    def _probe_call(self, name: str, work: Callable[[], _T]) -> _T:
        """Run a probe's ``work`` on ``name``: in a private event loop for an async-only driver."""
        if name not in self._async_only:
            return work()
        from .aio import run_blocking

        return run_blocking(work)

    def _options(self, engine_config: EngineConfig) -> dict[str, Any]:
        """create_engine() keyword arguments of an engine: its options and a connect timeout."""
        return with_connect_timeout(engine_config, self._timeout(engine_config.name))

    # -- lifecycle ------------------------------------------------------------

    def dispose(self) -> None:
        """Stop the health monitor and close every pooled connection."""
        with self._lock:
            monitor, self._monitor = self._monitor, None
            engines = [*self._engines.values(), *self._probe_engines.values()]
            self._probe_engines.clear()
            self._factories.clear()  # the next read session starts the monitor again
        if monitor is not None:
            monitor.stop()
        self._health_prober.close()
        for engine in engines:
            engine.dispose()
        for name, async_engine in (self._async.take() if self._async else {}).items():
            # Its connections belong to an event loop: only async_dispose() can close them.
            log.warning(
                "dispose(): AsyncEngine %s dropped without closing its connections;"
                " use `await dbs.async_dispose()` or `async with dbs`",
                name,
            )
            async_engine.sync_engine.dispose(close=False)

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()

    # -- asyncio (SPEC section 5; the machinery is in multidb/aio.py) ------------

    @property
    def _aio(self) -> aio.AsyncEngines:
        engines = self._async
        if engines is None:
            from .aio import AsyncEngines

            with self._lock:
                engines = self._async
                if engines is None:
                    engines = self._async = AsyncEngines(self)
        return engines

    def async_engine(self, name: str) -> AsyncEngine:
        """The AsyncEngine of an engine name; a database name means its primary.

        Created on first use; creating it opens no connection. A sync-only
        driver's engine raises RoutingError saying what to write instead.
        """
        return self._aio.engine(name)

    def async_sessionmaker(
        self, name: str | None, role: Role | None = None
    ) -> async_sessionmaker[AsyncSession]:
        """A factory of AsyncSessions routed exactly as :meth:`sessionmaker`'s sessions are."""
        if role is None and (name is None or name in self.config.databases):
            role = _causal.request_role.get()
        maker, routed = self._aio.factory(name, role)
        if routed and self._watched and not self._probed():
            self._start_monitor_off_loop()
        return maker

    def async_session(self, name: str | None, *, role: Role | None = None) -> aio.AsyncSessionScope:
        """An AsyncSession for an ``async with`` block: commits, rolls back on error, closes.

        Routed exactly as :meth:`session` is (``name`` None included); an
        unknown name or a role that does not fit raises here, before the block runs.
        """
        if role is None and (name is None or name in self.config.databases):
            role = _causal.request_role.get()
        engines = self._aio
        maker, routed = engines.factory(name, role)
        ready = None
        if routed and self._watched and not self._probed():
            ready = self._start_monitor  # waited for in a worker thread, not on the loop
        return engines.scope(maker, ready)

    async def async_health(self, *, timeout: float | None = None) -> list[EngineStatus]:
        """:meth:`health` for async code: the same probes, run off the event loop."""
        return await asyncio.to_thread(self.health, timeout=timeout)

    async def async_dispose(self) -> None:
        """Stop the lag monitor and close every pooled connection, sync and async."""
        engines = self._aio.take()
        await asyncio.to_thread(self.dispose)
        for engine in engines.values():
            await engine.dispose()

    def _probed(self) -> bool:
        """Whether the health monitor runs and has probed every replica once."""
        monitor = self._monitor
        return monitor is not None and monitor.first_round.is_set()

    def _start_monitor_off_loop(self) -> None:
        """Start the lag monitor; wait for its first round only where no event loop runs."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._start_monitor()
            return
        threading.Thread(target=self._start_monitor, name="multidb-monitor-start").start()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.async_dispose()


class _SessionScope:
    """The context manager :meth:`Registry.session` returns: commit (not a session
    that only read replicas, see :func:`~multidb.sessions.finish`), or roll back on
    an error; always close."""

    __slots__ = ("_maker", "_session")

    def __init__(self, maker: orm.sessionmaker[Session]) -> None:
        self._maker = maker

    def __enter__(self) -> Session:
        self._session = self._maker()
        return self._session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._session
        try:
            if exc_type is None:
                finish(session)  # commits, unless it only read replicas
            else:
                try:
                    session.rollback()
                except Exception:  # the block's own error is the one to see
                    log.warning("rollback after an error failed", exc_info=True)
        finally:
            session.close()


def load(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    session_class: type[Session] | None = None,
    async_session_class: type[AsyncSession] | None = None,
) -> Registry:
    """``Registry.from_yaml(path, **kw)``."""
    return Registry.from_yaml(
        path, env=env, session_class=session_class, async_session_class=async_session_class
    )


class _CountingMaker(orm.sessionmaker[_S]):
    """A ``sessionmaker`` that counts the sessions it makes (``EngineStats.sessions``)."""

    def __init__(self, count: Callable[[], None], **kw: Any) -> None:
        super().__init__(**kw)
        self._count = count

    def __call__(self, **local_kw: Any) -> _S:
        self._count()
        return super().__call__(**local_kw)


def _routed_class(routing: type[Session], base: type[Session]) -> type[Session]:
    """``routing`` (ReadSession, AutoSession) on top of the application's session class."""
    if base is Session:
        return routing
    namespace = {"__module__": routing.__module__, "__doc__": routing.__doc__}
    return cast("type[Session]", type(routing.__name__, (routing, base), namespace))
