"""The ``multidb`` command: ``check`` connects to every engine, ``show`` prints the resolved config.

Exit codes: 0 all is well, 1 an engine did not answer as configured, 2 a
usage or config error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from .config import Config, load, secrets
from .errors import ConfigError
from .registry import EngineStatus, Registry

__all__ = ["main"]

DEFAULT_CONFIG = "config/databases.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="multidb", description="Check and show a multidb config file."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = f"config file (default: $MULTIDB_CONFIG, else {DEFAULT_CONFIG})"
    check = commands.add_parser("check", help="connect to every engine and report its status")
    check.add_argument("config", nargs="?", help=config_help)
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long each engine may take to answer (default: 5); all are asked at once",
    )
    show = commands.add_parser("show", help="print the resolved config, passwords masked")
    show.add_argument("config", nargs="?", help=config_help)
    # -- alembic-init (issue 12) --
    init = commands.add_parser(
        "alembic-init", help="write an Alembic project that migrates each database's primary"
    )
    init.add_argument("directory", help="the new project's directory (absent or empty)")
    init.add_argument("config", nargs="?", help=config_help)
    args = parser.parse_args(argv)
    if args.command == "alembic-init":
        return _alembic_init(args.directory, args.config or _default_config())

    path = args.config or _default_config()
    try:
        config = load(path)
    except ConfigError as exc:
        if args.command == "check" and args.json:
            # A JSON consumer always gets JSON: the error as an object.
            print(json.dumps(_error_object(exc), indent=2))
        print(exc, file=sys.stderr)
        return 2
    if args.command == "show":
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    try:
        with Registry(config) as registry:
            statuses = registry.health(timeout=args.timeout)
    except Exception as exc:  # never a traceback: one line, secrets masked
        print(f"multidb: {_one_line(exc, config)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=2))
    else:
        print(_table(statuses))
    return 0 if all(s.ok for s in statuses) else 1


def _error_object(exc: ConfigError) -> dict[str, Any]:
    return {
        "error": str(exc),
        "source": exc.source,
        "line": exc.line,
        "column": exc.column,
        "key_path": exc.key_path,
        "errors": [
            {"error": str(e), "line": e.line, "column": e.column, "key_path": e.key_path}
            for e in exc.errors
        ],
    }


def _one_line(exc: BaseException, config: Config) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    for engine in config.engines():
        for secret in secrets(engine):
            text = text.replace(secret, "***")
    return text


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {value!r}")
    return seconds


def _default_config() -> str:
    return os.environ.get("MULTIDB_CONFIG") or DEFAULT_CONFIG


def _alembic_init(directory: str, config: str) -> int:
    """``multidb alembic-init DIR [CONFIG]``: exit 0 with the files written, 2 on a mistake."""
    try:
        from .alembic import init_project
    except ImportError as exc:
        print(f"alembic is not installed ({exc}): pip install 'multidb[alembic]'", file=sys.stderr)
        return 2
    try:
        written = init_project(directory, config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}{'/' if path.is_dir() else ''}")
    print(f"next: alembic -c {Path(directory) / 'alembic.ini'} revision -m 'first'")
    return 0


def _table(statuses: Sequence[EngineStatus]) -> str:
    rows = [("ENGINE", "ROLE", "URL", "STATUS", "LATENCY", "LAG", "")]
    for s in statuses:
        latency = "-" if s.latency_ms is None else f"{s.latency_ms:.1f} ms"
        lag = "-" if s.lag_seconds is None else f"{s.lag_seconds:.1f} s"
        rows.append((s.name, s.role, s.url, "OK" if s.ok else "FAIL", latency, lag, s.error or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
