"""Alembic migrations on each database's primary, never on a replica.

Call :func:`run_migrations` from an Alembic ``env.py`` (``multidb
alembic-init DIR`` writes one)::

    from alembic import context
    import multidb
    from multidb.alembic import run_migrations

    with multidb.load(context.config.get_main_option("multidb_config")) as dbs:
        run_migrations(dbs, target_metadata={"main": Base.metadata})

Each revision script has one ``upgrade_NAME()`` / ``downgrade_NAME()`` pair
per database, as in Alembic's own ``multidb`` template; each database keeps
its own ``alembic_version`` table.

Online, in this order:

1. the databases to migrate: ``databases`` (default: all, in file order),
   narrowed by ``alembic -x database=NAME[,NAME...]``;
2. every one of them is asked, on its primary engine, whether the server
   really is a primary (PostgreSQL ``pg_is_in_recovery()`` false, MySQL and
   MariaDB ``@@global.read_only`` off; SQLite has no roles): a server that
   is not refuses the whole run with :class:`~multidb.RoutingError` before
   any DDL is sent anywhere;
3. each database is migrated in its own transaction on its primary,
   checked once more on that very connection. A URL with an async driver
   runs through an ``AsyncEngine`` and ``Connection.run_sync``.

Offline (``alembic upgrade head --sql``) connects to nothing: one database's
SQL goes to standard output, several databases' to ``NAME.sql`` files in
the current directory (as Alembic's ``multidb`` template does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import string
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from .config import load
from .drivers import modes
from .errors import ConfigError, RoutingError, UnknownNameError
from .probes import probe
from .registry import Registry

if TYPE_CHECKING:  # SQLAlchemy's asyncio needs greenlet: async drivers' extras install it
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["function_name", "init_project", "run_migrations"]

log = logging.getLogger("multidb.alembic")


def run_migrations(
    dbs: Registry,
    databases: Sequence[str] | None = None,
    *,
    target_metadata: MetaData | Mapping[str, MetaData] | None = None,
    **configure: Any,
) -> None:
    """Run the current Alembic command on each database's primary (see the module docstring).

    ``target_metadata`` (for ``--autogenerate``) is one ``MetaData`` per
    database name, or one for all; ``configure`` goes to
    ``context.configure()`` for every database.
    """
    names = _targets(dbs, databases)
    metadata = {name: _metadata(target_metadata, name) for name in names}
    if context.is_offline_mode():
        _offline(dbs, names, metadata, configure)
        return
    for name in names:  # every target first: a replica stops the run before any DDL
        _run(dbs, name, _check)
    for name in names:
        log.info("Migrating database %s on %s", name, dbs.config.databases[name].primary.name)
        _run(dbs, name, _migrate, metadata[name], configure)


def function_name(database: str) -> str:
    """The suffix of a database's functions in revision scripts: ``main-eu`` -> ``main_eu``."""
    return database.replace("-", "_")


def _targets(dbs: Registry, databases: Sequence[str] | None) -> list[str]:
    """The databases to migrate: ``databases`` (default all), narrowed by ``-x database=``."""
    names = list(dbs.databases if databases is None else databases)
    for name in names:
        if name not in dbs.config.databases:
            raise UnknownNameError(name, dbs.databases, kind="database")
    chosen = context.get_x_argument(as_dictionary=True).get("database")
    if not chosen:
        return names
    wanted = [n.strip() for n in chosen.split(",") if n.strip()]
    for name in wanted:
        if name not in names:
            raise UnknownNameError(name, names, kind="database")
    return [n for n in names if n in wanted]


def _metadata(target: MetaData | Mapping[str, MetaData] | None, name: str) -> MetaData | None:
    if target is None or isinstance(target, MetaData):
        return target
    return target.get(name)


def _run(dbs: Registry, name: str, step: Any, *args: Any) -> None:
    """Run ``step(connection, engine_name, *args)`` on a connection to ``name``'s primary."""
    primary = dbs.config.databases[name].primary
    engine_name = primary.name
    if "sync" in modes(primary.url):  # psycopg 3 serves both: the sync engine will do
        with dbs.engine(engine_name).connect() as connection:
            step(connection, engine_name, *args)
        return
    asyncio.run(_run_async(dbs.async_engine(engine_name), step, engine_name, *args))


async def _run_async(engine: AsyncEngine, step: Any, *args: Any) -> None:
    async with engine.connect() as connection:
        await connection.run_sync(step, *args)
    await engine.dispose()  # its pool belongs to this event loop, which is about to end


def _check(connection: Connection, engine_name: str) -> None:
    """Refuse, before any DDL, a server that answers as anything but a primary."""
    try:
        error = probe(connection, "primary").role_error
    finally:
        connection.rollback()  # Alembic must begin (and commit) its own transaction
    if error is not None:
        raise RoutingError(
            f"{engine_name}: {error}; refused to run migrations, no DDL was sent to any "
            "database: point the database's primary URL at the writable server"
        )


def _migrate(
    connection: Connection,
    engine_name: str,
    metadata: MetaData | None,
    configure: Mapping[str, Any],
) -> None:
    _check(connection, engine_name)
    name = engine_name.rpartition(".")[0]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        upgrade_token=f"{function_name(name)}_upgrades",
        downgrade_token=f"{function_name(name)}_downgrades",
        **configure,
    )
    with context.begin_transaction():
        context.run_migrations(engine_name=name)


def _offline(
    dbs: Registry,
    names: Sequence[str],
    metadata: Mapping[str, MetaData | None],
    configure: Mapping[str, Any],
) -> None:
    options = {"literal_binds": True, "dialect_opts": {"paramstyle": "named"}, **configure}
    for name in names:
        url = dbs.config.databases[name].primary.url
        if len(names) == 1:
            _emit(name, url, metadata[name], options, sys.stdout)
            continue
        path = f"{name}.sql"
        log.info("Writing the SQL of database %s to %s", name, path)
        with open(path, "w", encoding="utf-8") as buffer:
            _emit(name, url, metadata[name], options, buffer)


def _emit(
    name: str, url: Any, metadata: MetaData | None, options: Mapping[str, Any], buffer: Any
) -> None:
    context.configure(url=url, target_metadata=metadata, output_buffer=buffer, **options)
    with context.begin_transaction():
        context.run_migrations(engine_name=name)


def init_project(directory: str | os.PathLike[str], config: str | os.PathLike[str]) -> list[Path]:
    """Write a ready Alembic project for ``config`` into ``directory``; the files written.

    ``alembic.ini`` (naming the config by a path relative to itself, and the
    databases), ``env.py`` calling :func:`run_migrations`, ``script.py.mako``
    with one function pair per database, and an empty ``versions/``. The
    config is loaded first (a mistake in it is a :class:`~multidb.ConfigError`);
    a ``directory`` that exists and is not empty is refused the same way.
    """
    target = Path(directory)
    loaded = load(config)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target}: exists and is not an empty directory; choose a new one")
    config_path, here = Path(config).resolve(), target.resolve()
    if os.path.commonpath([config_path, here]) == here.anchor:  # nothing shared: absolute
        written_path = config_path.as_posix().replace("%", "%%")
    else:
        relative = Path(os.path.relpath(config_path, here)).as_posix()
        written_path = "%(here)s/" + relative.replace("%", "%%")
    values = {
        "ini": str(target / "alembic.ini"),
        "config": written_path,
        "databases": ", ".join(loaded.databases),
    }
    (target / "versions").mkdir(parents=True)
    files = resources.files(__package__).joinpath("alembic_project")
    written = []
    for source, name in (
        ("alembic.ini.tmpl", "alembic.ini"),
        ("env.py.tmpl", "env.py"),
        ("script.py.mako", "script.py.mako"),
    ):
        text = files.joinpath(source).read_text(encoding="utf-8")
        if name == "alembic.ini":
            text = string.Template(text).substitute(values)
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    written.append(target / "versions")
    return written
