"""The cheapest places to see an engine's statements and transaction ends: its dialect.

A ``DialectEvents.do_execute`` listener costs an event dispatch per
statement, and any ``ConnectionEvents`` listener makes every Connection of
the engine dispatch at each step of every statement (15-25 us per session
on SQLite); a pool ``reset`` listener runs at every check-in. Instead, the
dialect's public ``do_execute``, ``do_execute_no_params``,
``do_executemany``, ``do_commit`` and ``do_rollback`` are wrapped once per
engine (the engine owns its dialect instance, so nothing else is touched),
and each wrapper runs the hooks registered for it in order. The execute
hooks run where a listener would, inside SQLAlchemy's error handling of the
statement, and what they raise reaches the caller as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

__all__ = ["EndHook", "Hook", "after_transaction", "before_execute", "pool_info"]

Hook = Callable[[str, Any], None]  # (the SQL string, its ExecutionContext)
# (the pooled DBAPI connection, its pool info, whether the transaction committed)
EndHook = Callable[[Any, dict[str, Any], bool], None]

_EXECUTE = "multidb_execute_hooks"  # attribute of a dialect: its execute hooks
_END = "multidb_end_hooks"  # attribute of a dialect: its transaction-end hooks


def before_execute(engine: Engine, hook: Hook) -> None:
    """Run ``hook(statement, context)`` before each statement ``engine`` sends."""
    dialect = engine.dialect
    hooks: list[Hook] | None = _first(dialect, _EXECUTE, hook)
    if hooks is None:
        return  # the wrappers are in place and run the list it joined
    execute = dialect.do_execute
    execute_no_params = dialect.do_execute_no_params
    executemany = dialect.do_executemany

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        for each in hooks:
            each(statement, context)
        execute(cursor, statement, parameters, context)

    def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        for each in hooks:
            each(statement, context)
        execute_no_params(cursor, statement, context)

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        for each in hooks:
            each(statement, context)
        executemany(cursor, statement, parameters, context)

    dialect.do_execute = do_execute  # type: ignore[method-assign]
    dialect.do_execute_no_params = do_execute_no_params  # type: ignore[method-assign]
    dialect.do_executemany = do_executemany  # type: ignore[method-assign]


def after_transaction(engine: Engine, hook: EndHook) -> None:
    """Run ``hook(connection, info, committed)`` after each commit and rollback on ``engine``.

    Every transaction ends in one of them, the pool's rollback of a
    connection given back mid-transaction included. The hooks act on what
    execute hooks left in the connection's pool info, so a connection whose
    info is empty (or that has none: the dialect's first-connect queries)
    runs none. A rollback that raises runs no hook: the pool rolls back again
    when the connection is given back, or discards it and its info.
    """
    dialect = engine.dialect
    hooks: list[EndHook] | None = _first(dialect, _END, hook)
    if hooks is None:
        return  # the wrappers are in place and run the list it joined
    commit = dialect.do_commit
    rollback = dialect.do_rollback

    def do_commit(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        info = pool_info(dbapi_connection)
        if info:
            for each in hooks:
                each(dbapi_connection, info, True)

    def do_rollback(dbapi_connection: Any) -> None:
        rollback(dbapi_connection)
        info = pool_info(dbapi_connection)
        if info:
            for each in hooks:
                each(dbapi_connection, info, False)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def _first(dialect: Any, attribute: str, hook: Any) -> list[Any] | None:
    """Add ``hook`` to the dialect's list in ``attribute``; the new list when it is the
    first there (the caller then wraps the dialect's methods around it), else None."""
    hooks: list[Any] | None = getattr(dialect, attribute, None)
    if hooks is not None:
        hooks.append(hook)
        return None
    hooks = [hook]
    setattr(dialect, attribute, hooks)
    return hooks


def pool_info(connection: Any) -> dict[str, Any] | None:
    """The pool's info dict of a Connection or a pooled DBAPI connection; None when it has
    none (an ad-hoc connection, as on first connect, or a raw one)."""
    try:
        info = connection.info
    except (AttributeError, NotImplementedError):
        return None
    return info if isinstance(info, dict) else None
