"""Where each statement went and why, for ``dbs.testing.record()`` and ``multidb.metrics.trace()``.

An :class:`Observer` calls a function with a :class:`Routed` (engine, role,
reason, SQL) for every statement an engine of a registry sends, from the
moment it is installed until it is removed. Nothing of it exists before:
the engine listeners, and the capture of routing decisions, come and go
with it, so the hot path pays nothing unless someone observes.

- ``engine``: the engine name the statement ran on (``main.a``).
- ``role``: ``"read"`` when it ran read-only (on a replica, or on a primary
  inside a read session), else ``"write"``.
- ``reason``: the routing decision that sent this context's session there,
  as multidb logs it on ``multidb.routing`` (``SmoothWeightedRoundRobin among
  main.a, main.b``, ``fallback: main.a failed, left out for 4.2s``, ``auto:
  first statement that is not a read``); without one, ``"write: the
  primary"`` or ``"read: pinned to ENGINE"``.

Under ``dbs.testing.mirror()`` a read runs on the primary's test
connection; it is reported on the replica the router chose for it, with
``(mirror: on DATABASE.primary)`` after the reason. The SAVEPOINT
statements that mirror wraps each session in are not reported.

Decisions are captured by a filter on the ``multidb.routing`` logger, per
thread and asyncio task (a :mod:`contextvars` variable). While an observer
is installed that logger is let down to DEBUG, and the filter passes on to
the application's handlers only the records its own level would have let
through: the application's logs do not change.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.events import ConnectionEvents

from .errors import RoutingError

__all__ = ["Observer", "Routed"]

_READ_ONLY = "multidb_read_only"  # the Connection option readonly.begin_read_only sets


@dataclass(frozen=True, slots=True)
class Routed:
    """One statement: the engine that ran it, its role, why it went there, and its SQL."""

    engine: str
    role: Literal["read", "write"]
    reason: str
    statement: str


# -- routing decisions, per thread and task --------------------------------------------------

# database -> (engine, reason) of the last decision made in this context
_decisions: ContextVar[Mapping[str, tuple[str, str]]] = ContextVar(
    "multidb_decisions", default=MappingProxyType({})
)

# "main: read -> main.a (SmoothWeightedRoundRobin among main.a, main.b)"
_DECISION = re.compile(r"(?P<database>[^:]+): .+? -> (?P<engine>\S+) \((?P<reason>.*)\)", re.DOTALL)
_SAVEPOINT = re.compile(r"(?:RELEASE |ROLLBACK TO )?SAVEPOINT ", re.IGNORECASE)
_SESSION = re.compile(r"\S+: \S+ session")


class _Decisions(logging.Filter):
    """Keeps each routing decision for the context it was made in; passes on what was due."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold  # the level the application had set

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.DEBUG:
            message = record.getMessage()
            match = _DECISION.fullmatch(message)
            if match is not None:
                decision = (match["engine"], match["reason"])
                _decisions.set({**_decisions.get(), match["database"]: decision})
            elif _SESSION.fullmatch(message):
                _decisions.set({})  # a new session: earlier decisions were another's
        return record.levelno >= self.threshold


_lock = threading.Lock()
_capture: dict[str, Any] = {"users": 0, "filter": None, "level": logging.NOTSET}
_logger = logging.getLogger("multidb.routing")


def _start_capture() -> None:
    with _lock:
        if _capture["users"] == 0:
            threshold = _logger.getEffectiveLevel()
            decisions = _Decisions(threshold)
            _capture.update(filter=decisions, level=_logger.level)
            _logger.addFilter(decisions)
            _logger.setLevel(logging.DEBUG)
        _capture["users"] += 1


def _stop_capture() -> None:
    with _lock:
        _capture["users"] -= 1
        if _capture["users"] == 0:
            _logger.removeFilter(_capture["filter"])
            _logger.setLevel(_capture["level"])


# -- the observer -----------------------------------------------------------------------------


class Observer:
    """Calls ``sink(Routed(...))`` for every statement ``dbs``'s engines send while installed.

    Every engine of the registry is created (which opens no connection) so
    that none is missed. Statements of multidb's own background threads
    (the lag monitor) are left out.
    """

    def __init__(self, dbs: Any, sink: Callable[[Routed], None]) -> None:
        self._dbs = dbs
        self._sink = sink
        self._engines: list[tuple[Engine, Callable[..., None]]] = []

    def install(self) -> None:
        _start_capture()
        for engine_config in self._dbs.config.engines():
            name = engine_config.name
            listener = self._listener(name, engine_config.database, engine_config.role)
            engine = _sync_engine(self._dbs, name)
            event.listen(engine, "before_cursor_execute", listener)
            self._engines.append((engine, listener))

    def remove(self) -> None:
        for engine, listener in self._engines:
            event.remove(engine, "before_cursor_execute", listener)
            _forget_events(engine)
        self._engines.clear()
        _stop_capture()

    def _listener(self, name: str, database: str, role: str) -> Callable[..., None]:
        sink = self._sink
        replica = role == "replica"

        def before_cursor_execute(
            conn: Connection,
            cursor: Any,
            statement: str,
            parameters: Any,
            context: Any,
            executemany: bool,
        ) -> None:
            if threading.current_thread().name.startswith("multidb-"):
                return
            mirrored = getattr(conn, "multidb_mirror", False)
            if mirrored and _SAVEPOINT.match(statement):
                return
            read = replica or bool(conn.get_execution_options().get(_READ_ONLY))
            engine, reason = _decisions.get().get(database, (name, ""))
            if mirrored and read:
                reason = f"{reason} (mirror: on {name})" if reason else f"mirror: on {name}"
            elif engine != name:
                engine, reason = name, ""
            if not reason:
                reason = f"read: pinned to {name}" if read else "write: the primary"
            sink(Routed(engine, "read" if read else "write", reason, statement))

        return before_cursor_execute


_CONNECTION_EVENTS = tuple(
    name for name in vars(ConnectionEvents) if not name.startswith("_") and name != "dispatch"
)


def _forget_events(engine: Engine) -> None:
    """Let ``engine``'s Connections skip event dispatch again once no listener is left.

    SQLAlchemy sets ``Engine._has_events`` when a listener is added and never
    clears it: every Connection would then dispatch through the event system
    (a few microseconds per statement) for the rest of the process.
    """
    dispatch = engine.dispatch
    if not any(getattr(dispatch, name, None) for name in _CONNECTION_EVENTS):
        engine._has_events = False


def _sync_engine(dbs: Any, name: str) -> Engine:
    """The sync Engine under engine ``name``, whether its driver is sync or async."""
    try:
        engine: Engine = dbs.engine(name)
    except RoutingError:  # an async-only driver: its AsyncEngine wraps a sync Engine
        engine = dbs.async_engine(name).sync_engine
    return engine
