"""Which code a driver serves: sync, async, or both.

A SQLAlchemy driver is sync (psycopg2, PyMySQL, pysqlite) or async
(asyncpg, aiomysql, asyncmy, aiosqlite: ``dialect.is_async``); psycopg 3
serves both from one ``postgresql+psycopg://`` URL (its dialect names an
async twin). Only the dialect module is imported, never the driver.
"""

from __future__ import annotations

import functools
from typing import Literal

from sqlalchemy.engine import URL

__all__ = ["Mode", "instead", "modes"]

Mode = Literal["sync", "async"]

_BOTH: frozenset[Mode] = frozenset(("sync", "async"))
_SYNC: frozenset[Mode] = frozenset(("sync",))
_ASYNC: frozenset[Mode] = frozenset(("async",))

# What to write for each backend, by the mode that is missing.
_SYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg:// (psycopg 3 serves sync and async)",
    "mysql": "mysql+pymysql://",
    "mariadb": "mariadb+pymysql://",
    "sqlite": "sqlite://",
}
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg:// or postgresql+psycopg:// (psycopg 3 serves both)",
    "mysql": "mysql+aiomysql:// or mysql+asyncmy://",
    "mariadb": "mariadb+aiomysql:// or mariadb+asyncmy://",
    "sqlite": "sqlite+aiosqlite://",
}


def modes(url: URL) -> frozenset[Mode]:
    """The code ``url``'s driver serves: ``{"sync"}``, ``{"async"}`` or both."""
    return _modes(url.drivername)


@functools.lru_cache(maxsize=64)
def _modes(drivername: str) -> frozenset[Mode]:
    url = URL.create(drivername)  # the driver alone decides; no credentials kept here
    dialect = url.get_dialect()
    if dialect.is_async:
        return _ASYNC
    return _BOTH if dialect.get_async_dialect_cls(url).is_async else _SYNC


def instead(url: URL, mode: Mode) -> str:
    """A URL scheme that serves ``mode`` on ``url``'s backend, for error messages."""
    table = _SYNC_DRIVERS if mode == "sync" else _ASYNC_DRIVERS
    backend = url.get_backend_name()
    return table.get(backend, f"a {mode} driver for {backend}")
