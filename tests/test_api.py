"""The public API of SPEC section 2: names, error classes, building, lifecycle, health, secrets."""

from __future__ import annotations

import logging
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

import multidb
from multidb import Registry

SECRET = "pw-Zq8xK2-api"

# The contract: SPEC section 2 and multidb/__init__.py as of this test.
PUBLIC_NAMES = {
    "AutoSession",
    "CausalScope",
    "ConfigError",
    "DatabaseRouter",
    "EngineStats",
    "EngineStatus",
    "Explanation",
    "MultiDBError",
    "NoReplicaAvailableError",
    "ReadOnlyError",
    "ReadSession",
    "Registry",
    "RoutedSession",
    "RoutingError",
    "UnknownNameError",
    "load",
}
ERROR_CLASSES = [
    multidb.MultiDBError,
    multidb.ConfigError,
    multidb.UnknownNameError,
    multidb.ReadOnlyError,
    multidb.NoReplicaAvailableError,
    multidb.RoutingError,
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sqlite_file(path: Path) -> Path:
    """Create an SQLite database file with one table, so read-only URIs can open it."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
    return path


def checked_in(engine: Engine) -> int:
    """How many connections sit idle in ``engine``'s pool (file SQLite uses a QueuePool)."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedin()


@pytest.fixture
def connect_attempts() -> Iterator[list[str]]:
    """Every DBAPI connect attempt of any engine, recorded before the driver is called."""
    attempts: list[str] = []

    def record(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
        attempts.append(dialect.name)

    event.listen(Engine, "do_connect", record)
    try:
        yield attempts
    finally:
        event.remove(Engine, "do_connect", record)


# --- public names ---------------------------------------------------------------------------


def test_all_is_exactly_the_public_names() -> None:
    assert set(multidb.__all__) == PUBLIC_NAMES
    assert len(multidb.__all__) == len(PUBLIC_NAMES), "no name listed twice"


def test_every_name_in_all_is_importable_from_the_package() -> None:
    namespace: dict[str, Any] = {}
    exec(f"from multidb import {', '.join(multidb.__all__)}", namespace)
    for name in multidb.__all__:
        assert namespace[name] is getattr(multidb, name)


def test_no_public_attribute_of_the_package_is_missing_from_all() -> None:
    public = {
        name
        for name, value in vars(multidb).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(multidb.__all__) == set()


# --- error classes --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_derives_from_multidberror(cls: type[Exception]) -> None:
    assert issubclass(cls, multidb.MultiDBError)


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (multidb.ConfigError, ValueError),
        (multidb.RoutingError, ValueError),
        (multidb.UnknownNameError, LookupError),
    ],
    ids=lambda c: c.__name__,
)
def test_error_classes_are_also_the_builtin_error_they_resemble(
    cls: type[Exception], base: type[Exception]
) -> None:
    assert issubclass(cls, base)


@pytest.mark.parametrize(
    "cls",
    [
        *ERROR_CLASSES,
    ],
    ids=lambda c: c.__name__,
)
def test_every_error_class_has_a_one_line_raised_when_docstring(cls: type[Exception]) -> None:
    doc = cls.__doc__ or ""
    lines = doc.strip().splitlines()
    assert lines, f"{cls.__name__} has no docstring"
    summary = lines[0]
    assert summary.startswith("Raised when "), summary
    assert summary.endswith("."), "the summary is one whole sentence on one line"
    assert len(lines) == 1 or lines[1].strip() == "", "a blank line follows the summary"


# --- building -------------------------------------------------------------------------------


def test_from_dict_opens_no_connection_even_to_servers_that_do_not_listen(
    connect_attempts: list[str],
) -> None:
    pg_port, maria_port = free_port(), free_port()
    started = time.perf_counter()
    dbs = Registry.from_dict(
        {
            "databases": {
                "main": {
                    "primary": f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:{pg_port}/app",
                    "replicas": {
                        "a": f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:{pg_port}/app"
                    },
                },
                "reports": f"mysql+pymysql://app:{SECRET}@127.0.0.1:{maria_port}/reports",
            }
        }
    )
    with dbs:
        assert dbs.databases == ("main", "reports")
        assert dbs.engine_names == ("main.primary", "main.a", "reports.primary")
        engines = [dbs.engine(name) for name in dbs.engine_names]
        assert dbs.engine("main") is engines[0]
        assert [e.dialect.name for e in engines] == ["postgresql", "postgresql", "mysql"]
        assert connect_attempts == []
    assert connect_attempts == []
    assert time.perf_counter() - started < 5, "nothing waited on a connection"


def test_load_is_registry_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "databases.yaml"
    path.write_text(
        "databases:\n"
        "  main:\n"
        "    primary: sqlite:///${CONFIG_DIR}/main.db\n"
        "    replicas:\n"
        "      a: sqlite:///file:${CONFIG_DIR}/main.db?mode=ro&uri=true\n"
        "  local: sqlite:///${CONFIG_DIR}/local.db\n",
        encoding="utf-8",
    )
    loaded, built = multidb.load(path), Registry.from_yaml(path)
    assert isinstance(loaded, Registry)
    assert loaded.databases == built.databases == ("main", "local")
    assert loaded.engine_names == built.engine_names == ("main.primary", "main.a", "local.primary")
    assert loaded.config == built.config


# --- lifecycle ------------------------------------------------------------------------------


def test_registry_as_context_manager_disposes_its_pools_on_exit(tmp_path: Path) -> None:
    sqlite_file(tmp_path / "main.db")
    closed: list[object] = []
    with Registry.from_dict(
        {
            "databases": {
                "main": {
                    "primary": f"sqlite:///{tmp_path}/main.db",
                    "replicas": {"a": f"sqlite:///file:{tmp_path}/main.db?mode=ro&uri=true"},
                }
            }
        }
    ) as dbs:
        engines = [dbs.engine(name) for name in dbs.engine_names]
        for engine in engines:
            event.listen(engine, "close", lambda dbapi_conn, rec: closed.append(dbapi_conn))
        with dbs.session("main", role="write") as s:
            s.execute(text("INSERT INTO t (id) VALUES (1)"))
        with dbs.session("main", role="read") as s:
            assert s.scalar(text("SELECT count(*) FROM t")) == 1
        assert [checked_in(e) for e in engines] == [1, 1]
    assert [checked_in(e) for e in engines] == [0, 0]
    assert len(closed) == 2, "dispose closed the pooled connection of each engine"


# --- health ---------------------------------------------------------------------------------


def test_health_on_sqlite_reports_every_engine_ok_with_a_latency(tmp_path: Path) -> None:
    sqlite_file(tmp_path / "main.db")
    with Registry.from_dict(
        {
            "databases": {
                "main": {
                    "primary": f"sqlite:///{tmp_path}/main.db",
                    "replicas": {"a": f"sqlite:///file:{tmp_path}/main.db?mode=ro&uri=true"},
                },
                "local": f"sqlite:///{tmp_path}/local.db",
            }
        }
    ) as dbs:
        rows = dbs.health()
    assert [(r.name, r.role, r.ok, r.error) for r in rows] == [
        ("main.primary", "primary", True, None),
        ("main.a", "replica", True, None),
        ("local.primary", "primary", True, None),
    ]
    for row in rows:
        assert isinstance(row.latency_ms, float)
        assert row.latency_ms >= 0
        # Primaries have no lag; a SQLite replica is the primary's own file: 0.
        assert row.lag_seconds == (0.0 if row.role == "replica" else None)


def test_health_reports_a_replica_whose_file_does_not_exist_as_failed_with_one_line(
    tmp_path: Path,
) -> None:
    with Registry.from_dict(
        {
            "databases": {
                "main": {
                    "primary": f"sqlite:///{tmp_path}/main.db",
                    "replicas": {"gone": "sqlite:///file:/nonexistent/x.db?mode=ro&uri=true"},
                }
            }
        }
    ) as dbs:
        primary, gone = dbs.health()
    assert primary.ok
    assert (gone.name, gone.role, gone.ok, gone.latency_ms) == ("main.gone", "replica", False, None)
    assert gone.error
    assert "\n" not in gone.error
    assert "unable to open database file" in gone.error


# --- secrets --------------------------------------------------------------------------------


def secret_config(tmp_path: Path) -> dict[str, Any]:
    """An SQLite primary with a PostgreSQL replica (password in its URL) nothing listens for."""
    sqlite_file(tmp_path / "main.db")
    return {
        "databases": {
            "main": {
                "primary": f"sqlite:///{tmp_path}/main.db",
                "replicas": {
                    "pg": f"postgresql+psycopg2://app:{SECRET}@127.0.0.1:{free_port()}/app"
                },
            }
        }
    }


def test_repr_of_registry_shows_no_password(tmp_path: Path) -> None:
    dbs = Registry.from_dict(secret_config(tmp_path))
    assert SECRET not in repr(dbs)
    assert SECRET not in str(dbs)


def test_health_rows_show_no_password(tmp_path: Path) -> None:
    with Registry.from_dict(secret_config(tmp_path)) as dbs:
        rows = dbs.health()
    assert [(r.name, r.ok) for r in rows] == [("main.primary", True), ("main.pg", False)]
    assert rows[1].url.startswith("postgresql+psycopg2://app:***@127.0.0.1:")
    for row in rows:
        assert SECRET not in str(row)
        assert SECRET not in repr(row)
        assert SECRET not in (row.error or "")


def test_no_password_in_log_records_when_a_replica_connection_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="multidb")
    errors: list[BaseException] = []
    with Registry.from_dict(secret_config(tmp_path)) as dbs:
        # The replica does not answer: the read is retried on the primary.
        with dbs.session("main", role="read") as s:
            assert s.scalar(text("SELECT count(*) FROM t")) == 0
        with dbs.session("main", role="auto") as s:
            s.scalar(text("SELECT count(*) FROM t"))
        # Pinned to the replica: the connection error itself reaches the caller.
        with pytest.raises(Exception) as info, dbs.session("main.pg") as s:
            s.execute(text("SELECT 1"))
        errors.append(info.value)
    messages = [record.getMessage() for record in caplog.records]
    assert any("main.pg" in m and "left out" in m for m in messages), messages
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            errors.append(record.exc_info[1])
    for error in errors:
        shown = "".join(traceback.format_exception(error))
        assert SECRET not in shown
        assert SECRET not in repr(error)


WITHOUT_GREENLET = """
import importlib, pkgutil, shutil, sys
from pathlib import Path
sys.modules["greenlet"] = None  # as on `pip install multidb`: SQLAlchemy 2.1 does not bring it

import multidb
from multidb.cli import main
from sqlalchemy import text

for module in pkgutil.iter_modules(multidb.__path__):
    if module.name not in ("__main__", "aio"):  # aio is the asyncio half; integrations too
        importlib.import_module(f"multidb.{module.name}")
assert "sqlalchemy.ext.asyncio" not in sys.modules, "imported SQLAlchemy's asyncio"

config = Path(sys.argv[1])
assert main(["check", str(config)]) == 0
with multidb.load(config) as dbs:
    with dbs.session("main", role="write") as s:
        s.execute(text("CREATE TABLE t (id integer)"))
        s.execute(text("INSERT INTO t VALUES (1)"))
    with dbs.session("main", role="read") as s:
        assert s.execute(text("SELECT id FROM t")).scalar() == 1
try:
    multidb.Registry.from_dict({"databases": {"a": {"primary": "sqlite+aiosqlite://"}}})
except multidb.ConfigError as exc:
    print("async:", exc)
"""


def test_sync_use_needs_no_greenlet_and_an_async_url_names_the_extra(tmp_path: Path) -> None:
    """SPEC: the dependencies are SQLAlchemy and PyYAML; greenlet comes with the async
    extras. Importing multidb, its integrations, ``multidb check`` and sync sessions run
    without it (a subprocess where ``import greenlet`` fails); an async URL says what to install.
    """
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    shutil.copy(Path(__file__).parent.parent / "config" / "databases.yaml", config_dir)
    script = tmp_path / "without_greenlet.py"
    script.write_text(WITHOUT_GREENLET)
    done = subprocess.run(
        [sys.executable, str(script), str(config_dir / "databases.yaml")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "main.a" in done.stdout  # multidb check's table (its exit code 0 is asserted inside)
    assert "needs greenlet, which is not installed: pip install 'multidb[aiosqlite]'" in done.stdout
