"""The registry: every engine and session class of one config, handed out by name and role.

>>> import multidb
>>> with multidb.Registry.from_yaml("config/databases.yaml") as dbs:  # doctest: +SKIP
...     with dbs.session("main", role="read") as s:
...         s.execute(select(1))

Building a registry opens no connection and creates no engine. Each engine
gets its configured ``sessionmaker`` at once; the engine itself is created,
and the session class bound to it with ``configure(bind=...)``, the first
time it is used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import create_engine, orm, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from . import causal as _causal
from . import config as _config
from .causal import CausalScope
from .config import Config, DatabaseConfig, EngineConfig, Role
from .errors import RoutingError, UnknownNameError
from .monitor import LagMonitor, Watched
from .positions import install_capture
from .probes import probe
from .readonly import install_primary, install_replica
from .router import EngineStats, Router
from .sessions import AutoSession, ReadSession, ReadSource

__all__ = ["EngineStatus", "Registry", "load"]

log = logging.getLogger("multidb.routing")

_ROLES = ("write", "read", "auto")


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

    def __init__(self, config: Config) -> None:
        self.config = config
        self._engine_configs: dict[str, EngineConfig] = {e.name: e for e in config.engines()}
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._routers = {name: Router(db) for name, db in config.databases.items()}
        self._makers: dict[str, orm.sessionmaker[Session]] = {}
        for name, engine_config in self._engine_configs.items():
            database = config.databases[engine_config.database]
            if engine_config.role == "primary":
                self._makers[name] = orm.sessionmaker(**database.session)
            else:
                self._makers[name] = self._reads_maker(ReadSession, database, pinned=name)
        self._routed: dict[tuple[str, str], orm.sessionmaker[Session]] = {}
        for name, database in config.databases.items():
            self._routed[name, "read"] = self._reads_maker(ReadSession, database)
            self._routed[name, "auto"] = self._reads_maker(AutoSession, database)
        self._watched = [
            Watched(self._routers[name], db.routing.check_interval_seconds)
            for name, db in config.databases.items()
            if db.routing.max_lag_seconds is not None and db.replicas
        ]
        self._monitor: LagMonitor | None = None
        self._ttls = {n: db.routing.causal_ttl_seconds for n, db in config.databases.items()}
        # (name, role) -> factory, once resolved: the hot path is one dict lookup.
        self._factories: dict[tuple[str, str | None], orm.sessionmaker[Session]] = {}

    # -- building -------------------------------------------------------------

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
    ) -> Registry:
        """Load and check a YAML config file; raises ConfigError, opens no connection."""
        return cls(_config.load(path, env=env))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, env: Mapping[str, str] | None = None
    ) -> Registry:
        """Check a config given as a mapping; raises ConfigError, opens no connection."""
        return cls(_config.from_dict(data, env=env))

    def _reads_maker(
        self, class_: type[Session], database: DatabaseConfig, pinned: str | None = None
    ) -> orm.sessionmaker[Session]:
        """A factory of ``class_`` sessions reading from ``pinned``, or as the router chooses."""
        routing = database.routing
        reads = ReadSource(
            database=database.name,
            primary=database.primary.name,
            engine=self.engine,
            router=None if pinned else self._routers[database.name],
            pinned=pinned,
            read_your_writes=routing.read_your_writes,
            causal_wait_seconds=routing.causal_wait_seconds,
            causal_ttl_seconds=routing.causal_ttl_seconds,
        )
        return orm.sessionmaker(class_=class_, multidb_reads=reads, **database.session)

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
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = self._engines[name] = self._create_engine(self._engine_configs[name])
                self._makers[name].configure(bind=engine)
        return engine

    def _create_engine(self, engine_config: EngineConfig) -> Engine:
        url = engine_config.url
        # A SQLite primary file may live in a directory that does not exist yet
        # (config/var/ on a fresh clone); URI-mode URLs are left as written.
        if (
            url.get_backend_name() == "sqlite"
            and engine_config.role == "primary"
            and url.database not in (None, "", ":memory:")
            and not url.query.get("uri")
        ):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **engine_config.options)
        if engine_config.role == "replica":
            install_replica(engine, engine_config.name)
        else:
            install_primary(engine, engine_config.name)
            database = self.config.databases[engine_config.database]
            if database.routing.read_your_writes and database.replicas:
                install_capture(engine, database.name)
        return engine

    def sessionmaker(self, name: str, role: Role | None = None) -> orm.sessionmaker[Session]:
        """A session factory.

        For an engine name without a role: that engine's configured session
        class, bound to the engine. For a database name (or an engine name
        with a role): a factory of sessions routed as ``role``, for
        ``scoped_session`` and framework dependencies.
        """
        if role is None and name in self.config.databases:
            role = _causal.request_role.get()
        return self._factory(name, role)

    def _factory(self, name: str, role: str | None) -> orm.sessionmaker[Session]:
        maker = self._factories.get((name, role))
        if maker is None:
            maker = self._factories[name, role] = self._resolve(name, role)
        return maker

    def _resolve(self, name: str, role: str | None) -> orm.sessionmaker[Session]:
        if role is not None and role not in _ROLES:
            raise RoutingError(f"unknown role {role!r} for {name!r}: use 'write', 'read' or 'auto'")
        engine_config = self._engine_configs.get(name)
        if engine_config is None:
            database = self.config.databases.get(name)
            if database is None:
                raise UnknownNameError(name, [*self.databases, *self.engine_names])
            role = role or database.routing.default_role
            if role == "write":
                return self._bound(database.primary.name)
            if self._watched and self._monitor is None:
                self._start_monitor()
            return self._routed[name, role]
        # An engine name pins the session to that engine.
        if engine_config.role == "replica":
            if role == "write":
                raise RoutingError(
                    f"{name} is a replica: it cannot take role='write'; "
                    f"use {engine_config.database!r} or {engine_config.database}.primary to write"
                )
            return self._bound(name)
        if role == "read":  # read-only on a primary; _factory keeps it
            database = self.config.databases[engine_config.database]
            return self._reads_maker(ReadSession, database, pinned=name)
        return self._bound(name)

    def _bound(self, name: str) -> orm.sessionmaker[Session]:
        """The configured session class of engine ``name``, bound on first use."""
        if name not in self._engines:
            self.engine(name)
        return self._makers[name]

    # -- sessions -------------------------------------------------------------

    def session(self, name: str, *, role: Role | None = None) -> _SessionScope:
        """A session for a block: commits at its end, rolls back on error, always closes.

        ``name`` is a database (routed by ``role``, default
        ``routing.default_role``) or an engine (pinned to it). An unknown name
        or a role that does not fit raises here, before the block runs. A read
        session has nothing to commit: its transaction is just closed.
        """
        if role is None and name in self.config.databases:
            role = _causal.request_role.get()
        maker = self._factory(name, role)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s session", name, role or "default-role")
        return _SessionScope(maker)

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

    def health(self) -> list[EngineStatus]:
        """Connect to every engine and report its status, in file order."""
        statuses = []
        for database in self.config.databases.values():
            primary, position = self._status(database.primary.name, None)
            statuses.append(primary)
            statuses += [self._status(r.name, position)[0] for r in database.replicas]
        return statuses

    def _status(self, name: str, position: str | None) -> tuple[EngineStatus, str | None]:
        """One engine's status, and a primary's position for its replicas' lag."""
        engine_config = self._engine_configs[name]
        url = _config.mask_url(engine_config.url)
        started = time.perf_counter()
        try:
            with self.engine(name).connect() as connection:
                connection.execute(text("SELECT 1"))
                latency = (time.perf_counter() - started) * 1000
                state = probe(connection, engine_config.role, position)
        except Exception as exc:
            message = str(exc).strip().splitlines()
            error = message[0] if message else type(exc).__name__
            return EngineStatus(name, engine_config.role, url, False, None, None, error), None
        if engine_config.role == "replica":
            self._routers[engine_config.database].report_lag(name, state.lag_seconds)
        status = EngineStatus(
            name,
            engine_config.role,
            url,
            state.role_error is None,
            round(latency, 2),
            state.lag_seconds,
            state.role_error,
        )
        return status, state.position

    def stats(self) -> dict[str, EngineStats]:
        """Routing counters per engine: sessions routed, fallbacks, ejections, lag probes."""
        rows: dict[str, EngineStats] = {}
        for router in self._routers.values():
            rows.update((row.name, row) for row in router.stats())
        return rows

    # -- lag monitor ----------------------------------------------------------

    def _start_monitor(self) -> None:
        with self._lock:
            if self._monitor is not None:
                return
            monitor = self._monitor = LagMonitor(self._watched, self.engine)
        monitor.start(wait=max(w.interval for w in self._watched))

    # -- lifecycle ------------------------------------------------------------

    def dispose(self) -> None:
        """Stop the lag monitor and close every pooled connection."""
        with self._lock:
            monitor, self._monitor = self._monitor, None
            engines = list(self._engines.values())
            self._factories.clear()  # the next read session starts the monitor again
        if monitor is not None:
            monitor.stop()
        for engine in engines:
            engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()


class _SessionScope:
    """The context manager :meth:`Registry.session` returns: commit (not for a read
    session), or roll back on an error; always close."""

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
            # A read session has nothing to commit: closing ends its transaction
            # without expiring what it loaded.
            if exc_type is None and isinstance(session, ReadSession):
                session.flush()  # refuses pending changes; sends nothing when there are none
            elif exc_type is None:
                session.commit()
            else:
                try:
                    session.rollback()
                except Exception:  # the block's own error is the one to see
                    log.warning("rollback after an error failed", exc_info=True)
        finally:
            session.close()


def load(path: str | os.PathLike[str]) -> Registry:
    """``Registry.from_yaml(path)``."""
    return Registry.from_yaml(path)
