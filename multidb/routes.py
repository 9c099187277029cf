"""Which database a model lives in, for sessions that serve several (SPEC section 7).

``dbs.route(target, database)`` fills a :class:`RouteTable`: a mapped class
(and its subclasses), every class of a declarative base, a ``Table`` or a
``MetaData``. A session made with ``dbs.session(None, role=...)`` asks it,
statement by statement, which database to use. An application may replace
the table with its own :class:`DatabaseRouter`, as Django's
``db_for_read``/``db_for_write`` routers do::

    class ByTenant:
        def database_for(self, mapper, clause):
            return "eu" if current_tenant().region == "eu" else None

    dbs.use_router(ByTenant())
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from sqlalchemy import MetaData, Table
from sqlalchemy.orm import Mapper
from sqlalchemy.sql.util import find_tables

__all__ = ["DatabaseRouter", "RouteTable"]


class DatabaseRouter(Protocol):
    """Names the database a statement goes to; None when it does not know."""

    def database_for(self, mapper: Mapper[Any] | None, clause: Any) -> str | None: ...


class RouteTable:
    """The routes ``dbs.route()`` set: classes, tables and metadata, each to a database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._classes: dict[type, str] = {}
        # Keyed by identity, not by object: statements carry annotated copies of tables.
        self._tables: dict[tuple[int, str], tuple[Table, str]] = {}
        self._metadata: dict[int, tuple[MetaData, str]] = {}

    def add(self, target: Any, database: str) -> None:
        """Route ``target`` (a mapped class, a declarative base, a Table or a MetaData)."""
        with self._lock:
            if isinstance(target, Table):
                self._tables[id(target.metadata), target.fullname] = (target, database)
            elif isinstance(target, MetaData):
                self._metadata[id(target)] = (target, database)
            elif isinstance(target, type):
                self._classes[target] = database
            else:
                raise TypeError(
                    f"cannot route {target!r}: give a mapped class, a declarative base, "
                    "a Table or a MetaData"
                )

    def __bool__(self) -> bool:
        return bool(self._classes or self._tables or self._metadata)

    def describe(self) -> str:
        """The routes, one ``target -> database`` per entry, for error messages."""
        shown = [f"{c.__name__} -> {d}" for c, d in self._classes.items()]
        shown += [f"table {t.fullname} -> {d}" for t, d in self._tables.values()]
        shown += [
            f"MetaData of {', '.join(m.tables) or 'no tables'} -> {d}"
            for m, d in self._metadata.values()
        ]
        return ", ".join(shown) or "none"

    def database_for(self, mapper: Mapper[Any] | None, clause: Any) -> str | None:
        """The database of the first routed class, table or metadata the statement names."""
        if mapper is not None:
            for cls in mapper.class_.__mro__:
                database = self._classes.get(cls)
                if database is not None:
                    return database
            for table in mapper.tables:
                database = self._table(table)
                if database is not None:
                    return database
        if clause is not None:
            for table in find_tables(clause, include_crud=True, include_joins=True):
                if isinstance(table, Table):
                    database = self._table(table)
                    if database is not None:
                        return database
        return None

    def _table(self, table: Any) -> str | None:
        metadata = getattr(table, "metadata", None)
        routed = self._tables.get((id(metadata), getattr(table, "fullname", "")))
        if routed is not None:
            return routed[1]
        by_metadata = self._metadata.get(id(metadata))
        return None if by_metadata is None else by_metadata[1]
