"""The pytest plugin (entry point ``multidb``): a registry and a statement recorder for tests.

Options: ``--multidb-config PATH`` (or ``multidb_config`` in the ini file,
else ``$MULTIDB_CONFIG``, else ``config/databases.yaml``) and
``--multidb-mirror`` (or ``multidb_mirror = true``): every test that uses
``multidb_registry`` runs inside ``dbs.testing.mirror()``.

Fixtures:

- ``multidb_registry``: the registry of that config, loaded once per test
  session and disposed at its end;
- ``multidb_recorder``: a :class:`~multidb.testing.Recording` of every
  statement the test sends (engine, role, reason, SQL)::

    def test_report_reads_replicas(multidb_recorder):
        build_report()
        assert all(s.role == "read" for s in multidb_recorder)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .registry import Registry
from .testing import Recording

__all__ = ["multidb_recorder", "multidb_registry"]

DEFAULT_CONFIG = "config/databases.yaml"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("multidb")
    group.addoption(
        "--multidb-config",
        dest="multidb_config",
        metavar="PATH",
        help=f"multidb config file (default: $MULTIDB_CONFIG, else {DEFAULT_CONFIG})",
    )
    group.addoption(
        "--multidb-mirror",
        dest="multidb_mirror",
        action="store_true",
        default=None,
        help="run each test that uses multidb_registry inside dbs.testing.mirror()",
    )
    parser.addini("multidb_config", "multidb config file, relative to the ini file")
    parser.addini("multidb_mirror", "run tests inside dbs.testing.mirror()", type="bool")


def _config_path(config: pytest.Config) -> Path:
    option = config.getoption("multidb_config")
    if option:
        return Path(option)
    ini = config.getini("multidb_config")
    if ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return base / str(ini)
    return Path(os.environ.get("MULTIDB_CONFIG") or DEFAULT_CONFIG)


@pytest.fixture(scope="session")
def _multidb_session_registry(pytestconfig: pytest.Config) -> Iterator[Registry]:
    with Registry.from_yaml(_config_path(pytestconfig)) as dbs:
        yield dbs


@pytest.fixture
def multidb_registry(
    _multidb_session_registry: Registry, pytestconfig: pytest.Config
) -> Iterator[Registry]:
    """The registry of ``--multidb-config``; mirrored per test with ``--multidb-mirror``."""
    dbs = _multidb_session_registry
    mirror = pytestconfig.getoption("multidb_mirror")
    if mirror is None:
        mirror = pytestconfig.getini("multidb_mirror")
    if not mirror:
        yield dbs
        return
    with dbs.testing.mirror():
        yield dbs


@pytest.fixture
def multidb_recorder(multidb_registry: Registry) -> Iterator[Recording]:
    """Every statement the test sends through ``multidb_registry``'s engines, in order."""
    with multidb_registry.testing.record() as recording:
        yield recording
