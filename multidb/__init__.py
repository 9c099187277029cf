"""multidb: one YAML file names your databases; sessions go to the primary or a replica by role.

>>> import multidb
>>> dbs = multidb.load("config/databases.yaml")  # doctest: +SKIP
>>> with dbs.session("main", role="read") as s:  # doctest: +SKIP
...     s.execute(select(1))
"""

from .errors import (
    ConfigError,
    MultiDBError,
    NoReplicaAvailableError,
    ReadOnlyError,
    RoutingError,
    UnknownNameError,
)
from .registry import EngineStatus, Registry, load
from .router import EngineStats
from .sessions import AutoSession, ReadSession

__all__ = [
    "AutoSession",
    "ConfigError",
    "EngineStats",
    "EngineStatus",
    "MultiDBError",
    "NoReplicaAvailableError",
    "ReadOnlyError",
    "ReadSession",
    "Registry",
    "RoutingError",
    "UnknownNameError",
    "load",
]
