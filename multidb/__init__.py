"""multidb: one YAML file names your databases; sessions go to the primary or a replica by role.

>>> import multidb
>>> dbs = multidb.load("config/databases.yaml")  # doctest: +SKIP
>>> with dbs.session("main", role="read") as s:  # doctest: +SKIP
...     s.execute(select(1))
"""

from .causal import CausalScope
from .errors import (
    ConfigError,
    MultiDBError,
    NoReplicaAvailableError,
    ReadOnlyError,
    RoutingError,
    UnknownNameError,
)
from .explain import Explanation
from .registry import EngineStatus, Registry, load
from .router import EngineStats
from .routes import DatabaseRouter
from .sessions import AutoSession, ReadSession, RoutedSession

__all__ = [
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
]
