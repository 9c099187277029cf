"""Connect timeouts: a connection attempt that gets no answer fails like a refused one.

Every engine gets ``routing.connect_timeout_seconds`` as its driver takes it,
unless its options (``connect_args``) or its URL's query already set one:

- psycopg2, psycopg: libpq's ``connect_timeout`` (whole seconds, at least 2;
  it covers the whole connection start, authentication included);
- PyMySQL: ``connect_timeout`` bounds only the TCP connect, so the server's
  greeting and the authentication are read with ``read_timeout`` set to the
  same value, which is then put back to the configured one (None: no limit)
  before the connection is handed out (:func:`install_handshake_timeout`);
- mysqlclient, aiomysql, asyncmy: ``connect_timeout`` (aiomysql's and
  asyncmy's cover only the TCP connect, not the greeting); asyncpg: ``timeout``;
- SQLite and other drivers: nothing.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from .config import EngineConfig

__all__ = ["install_handshake_timeout", "with_connect_timeout"]

# Driver -> (its connect timeout argument, whether it takes whole seconds only).
_CONNECT_TIMEOUTS: dict[str, tuple[str, bool]] = {
    "psycopg2": ("connect_timeout", True),
    "psycopg": ("connect_timeout", True),
    "psycopg_async": ("connect_timeout", True),
    "asyncpg": ("timeout", False),
    "pymysql": ("connect_timeout", False),
    "mysqldb": ("connect_timeout", True),
    "aiomysql": ("connect_timeout", False),
    "asyncmy": ("connect_timeout", False),
}


def with_connect_timeout(engine_config: EngineConfig, seconds: float) -> dict[str, Any]:
    """``engine_config.options`` with a connect timeout of ``seconds``, unless already set."""
    options = dict(engine_config.options)
    known = _CONNECT_TIMEOUTS.get(engine_config.url.get_driver_name())
    if known is None:
        return options
    key, whole = known
    connect_args = dict(options.get("connect_args") or {})
    if key in connect_args or key in engine_config.url.query:
        return options
    connect_args[key] = max(2, math.ceil(seconds)) if whole else seconds
    options["connect_args"] = connect_args
    return options


def install_handshake_timeout(engine: Engine, seconds: float) -> None:
    """PyMySQL: bound the greeting and authentication by ``seconds`` too (see module doc)."""
    if engine.dialect.driver != "pymysql":
        return
    configured: list[Any] = []  # the read_timeout the options gave, seen at the first connect

    @event.listens_for(engine, "do_connect")
    def _handshake(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        if not configured:
            configured.append(cparams.get("read_timeout"))
        given = configured[0]
        cparams["read_timeout"] = min(seconds, given) if given else seconds

    @event.listens_for(engine, "connect", insert=True)
    def _after_handshake(dbapi_connection: Any, record: Any) -> None:
        # PyMySQL sets the socket's timeout from _read_timeout before each read
        # (pinned by a test): from now on reads wait as configured.
        dbapi_connection._read_timeout = configured[0] if configured else None
