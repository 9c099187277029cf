"""How long building a large registry takes, and how many connections it opens (none).

    python benchmarks/startup.py [--databases D] [--replicas R] [--builds B]

Writes a YAML config of D databases with R replicas each (default 100 x 2),
once with SQLite files under a temporary directory and once with PostgreSQL
URLs pointing at a port nothing listens on, then times
``multidb.Registry.from_yaml`` (parse, check, build) and reports the median of
B builds. Connections are counted with ``sqlalchemy.event`` listeners on the
``Engine`` class: ``do_connect`` (every attempt, even one that would fail)
and ``connect`` (every DBAPI connection made). Target: < 100 ms, 0 connections.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy
import yaml
from sqlalchemy import Engine, event

import multidb

__all__ = ["count_connections", "main", "write_config"]


def _closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write_config(path: Path, databases: int, replicas: int, url: Callable[[str], str]) -> None:
    """Write a config of ``databases`` databases, each a primary and ``replicas`` replicas."""
    config: dict[str, Any] = {"defaults": {"pool_pre_ping": True}, "databases": {}}
    for d in range(databases):
        name = f"db{d:03d}"
        config["databases"][name] = {
            "primary": url(name),
            "replicas": {f"r{r}": url(f"{name}-r{r}") for r in range(1, replicas + 1)},
            "routing": {"max_lag_seconds": 5, "check_interval_seconds": 1},
        }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class count_connections:  # noqa: N801 - used like a function: ``with count_connections() as c``
    """Count DBAPI connections attempted and made by any engine while the block runs."""

    def __init__(self) -> None:
        self.attempts = 0
        self.made = 0

    def _attempt(self, *args: Any) -> None:
        self.attempts += 1

    def _made(self, *args: Any) -> None:
        self.made += 1

    def __enter__(self) -> count_connections:
        event.listen(Engine, "do_connect", self._attempt)
        event.listen(Engine, "connect", self._made)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "do_connect", self._attempt)
        event.remove(Engine, "connect", self._made)


def measure(path: Path, builds: int) -> tuple[float, int, int, int]:
    """Median build time in ms, engines, connection attempts and connections made."""
    times: list[float] = []
    with count_connections() as counter:
        engines = 0
        for _ in range(builds):
            start = time.perf_counter()
            registry = multidb.Registry.from_yaml(path)
            times.append(time.perf_counter() - start)
            engines = len(registry.engine_names)
            registry.dispose()
    return statistics.median(times) * 1000, engines, counter.attempts, counter.made


def main(argv: Sequence[str] | None = None) -> int:
    """Build the registries, print one row per variant; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--databases", type=int, default=100, help="default 100")
    parser.add_argument("--replicas", type=int, default=2, help="per database; default 2")
    parser.add_argument("--builds", type=int, default=7, help="builds timed (median); default 7")
    args = parser.parse_args(argv)
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )
    print(
        "command: python benchmarks/startup.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    directory = Path(tempfile.mkdtemp(prefix="multidb-startup-"))
    port = _closed_port()
    variants: dict[str, Callable[[str], str]] = {
        "sqlite": lambda name: f"sqlite:///{directory}/{name}.db",
        "postgresql": lambda name: (
            f"postgresql+psycopg2://app:secret@127.0.0.1:{port}/{name.replace('-', '_')}"
        ),
    }
    try:
        print(
            f"{args.databases} databases x (1 primary + {args.replicas} replicas), "
            f"median of {args.builds} builds of Registry.from_yaml"
        )
        print(f"{'variant':<12}{'engines':>8}{'build ms':>10}{'attempts':>10}{'connections':>13}")
        for variant, url in variants.items():
            path = directory / f"{variant}.yaml"
            write_config(path, args.databases, args.replicas, url)
            ms, engines, attempts, made = measure(path, args.builds)
            print(f"{variant:<12}{engines:>8}{ms:>10.1f}{attempts:>10}{made:>13}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
