"""The cheapest place to see every statement an engine sends: its dialect's execute methods.

A ``DialectEvents.do_execute`` listener costs an event dispatch per
statement, and any ``ConnectionEvents`` listener makes every Connection of
the engine dispatch at each step of every statement (15-25 us per session
on SQLite). Wrapping the dialect's public ``do_execute`` methods, as
:mod:`multidb.positions` wraps ``do_commit``, costs one call: the engine
owns its dialect instance, so nothing else is touched. The hook runs where
the listener did, inside SQLAlchemy's error handling of the statement, and
what it raises reaches the caller as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

__all__ = ["Hook", "before_execute"]

Hook = Callable[[str, Any], None]  # (the SQL string, its ExecutionContext)


def before_execute(engine: Engine, hook: Hook) -> None:
    """Run ``hook(statement, context)`` before each statement ``engine`` sends."""
    dialect = engine.dialect
    execute = dialect.do_execute
    execute_no_params = dialect.do_execute_no_params
    executemany = dialect.do_executemany

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        hook(statement, context)
        execute(cursor, statement, parameters, context)

    def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        hook(statement, context)
        execute_no_params(cursor, statement, context)

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        hook(statement, context)
        executemany(cursor, statement, parameters, context)

    dialect.do_execute = do_execute  # type: ignore[method-assign]
    dialect.do_execute_no_params = do_execute_no_params  # type: ignore[method-assign]
    dialect.do_executemany = do_executemany  # type: ignore[method-assign]
