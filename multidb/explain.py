"""``dbs.explain()``: where a session would send a statement now, and why; nothing is sent.

    >>> dbs.explain("main", select(User), role="read")  # doctest: +SKIP
    Explanation(engine='main.b', reason='SmoothWeightedRoundRobin among main.a, main.b')

The answer follows the rules the sessions apply (roles, the statement's
kind, the router's choice, fallback, causal scopes), with the router's
state as it is now and without asking any server: a causal check a session
would make on its replica is reported as such, not made. The router does
not count the look, and its round robin does not move on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect
from sqlalchemy.exc import NoInspectionAvailable

from . import causal as _causal
from .errors import NoReplicaAvailableError, RoutingError, UnknownNameError
from .statements import Kind, classify

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Where a statement would go (an engine name) and why, as the routing log says it."""

    engine: str
    reason: str


def explain(dbs: Registry, name: str | None, statement: Any, role: str | None) -> Explanation:
    """The rules of :meth:`~multidb.Registry.explain`, first that applies:

    1. an unknown role or name, or ``role="write"`` on a replica: the error
       ``session()`` would raise;
    2. ``name`` None: the statement's database by the routes (RoutingError
       when none names it), then as for that database;
    3. an engine name: that engine (pinned);
    4. a database: its role (given, else the request's, else
       ``routing.default_role``): ``write`` the primary; ``auto`` the
       primary unless the statement is a read (``multidb_role`` honoured);
       a read: the replica the router would choose now (only one known to
       have applied the causal scope's position, else the one it would ask),
       else the primary when there are no replicas or falling back is
       allowed, else :class:`~multidb.NoReplicaAvailableError`.
    """
    if role is not None and role not in ("write", "read", "auto"):
        raise RoutingError(f"unknown role {role!r} for {name!r}: use 'write', 'read' or 'auto'")
    if name is None:
        name = _database_of(dbs, statement)
    engines = {e.name: e for e in dbs.config.engines()}
    if name in engines:
        engine = engines[name]
        if engine.role == "replica" and role == "write":
            raise RoutingError(f"{name} is a replica: it cannot take role='write'")
        read_only = engine.role == "replica" or role == "read"
        return Explanation(name, f"pinned to {name}{' (read-only)' if read_only else ''}")
    database = dbs.config.databases.get(name)
    if database is None:
        raise UnknownNameError(name, [*dbs.databases, *dbs.engine_names])
    role = role or _causal.request_role.get() or database.routing.default_role
    primary = database.primary.name
    if role == "write":
        return Explanation(primary, "write: the primary")
    if role == "auto" and _kind(statement) is not Kind.READ:
        what = "a flush" if statement is None else "a statement that is not a read"
        return Explanation(primary, f"auto: {what} goes to the primary")
    return _read(dbs, name)


def _kind(statement: Any) -> Kind:
    if statement is None:
        return Kind.WRITE
    options = getattr(statement, "get_execution_options", None)
    role = options().get("multidb_role") if options is not None else None
    if role in ("read", "write"):
        return Kind(role)
    return classify(statement)


def _read(dbs: Registry, name: str) -> Explanation:
    database = dbs.config.databases[name]
    primary = database.primary.name
    router = dbs._routers[name]
    if not database.replicas:
        return Explanation(primary, "no replicas")
    source = dbs._source(database)
    required = source.required()
    if required is not None and required.kind == "primary":
        if router.fallback_to_primary:
            return Explanation(primary, "causal: the position of the last write is unknown")
        raise NoReplicaAvailableError(f"{name}: the position of the last write is unknown")
    peeked = router.peek()
    if peeked is not None:
        replica, reason = peeked
        if required is None:
            return Explanation(replica, reason)
        verdict = (
            "has applied"
            if source.known_applied(replica, required)
            else "would be asked whether it has applied"
        )
        return Explanation(replica, f"{reason}; causal: {replica} {verdict} {required.text()}")
    why = router.why_none()
    if router.fallback_to_primary:
        return Explanation(primary, f"fallback: {why}")
    raise NoReplicaAvailableError(
        f"{name}: no replica can serve reads ({why}) and routing.fallback_to_primary is false"
    )


def _database_of(dbs: Registry, statement: Any) -> str:
    """The database the routes give ``statement``, as a session of several databases finds it."""
    mapper = None
    for description in getattr(statement, "column_descriptions", None) or ():
        entity = description.get("entity")
        if entity is not None:
            try:
                mapper = inspect(entity).mapper
            except NoInspectionAvailable:
                continue
            break
    database = dbs._database_router.database_for(mapper, statement)
    if database is None:
        raise RoutingError(
            "no route names the database of this statement; route its model with "
            "dbs.route(Model, DATABASE), or name the database"
        )
    return database
