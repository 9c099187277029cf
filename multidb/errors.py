"""The exceptions multidb raises.

One root, :class:`MultiDBError`, split as SQLAlchemy's ``exc`` module is:
errors of setup (a bad config file, a name that does not exist) and errors of
use (a write in a read session, no replica to read from). Database errors are
SQLAlchemy's own and pass through unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "MultiDBError",
    "NoReplicaAvailableError",
    "ReadOnlyError",
    "RoutingError",
    "UnknownNameError",
    "closest",
    "one_line",
]


class MultiDBError(Exception):
    """Raised when multidb itself detects an error; the root of all the others."""


class ConfigError(MultiDBError, ValueError):
    """Raised when the config file or mapping is wrong; says where and how to fix it.

    The message reads ``FILE:LINE:COLUMN: key.path: what is wrong``, or
    ``key.path: what is wrong`` when the config came from a mapping; with
    several mistakes, one such line each, and ``errors`` lists them.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
        key_path: str = "",
    ) -> None:
        self.problem = problem
        self.source = source
        self.line = line
        self.column = column
        self.key_path = key_path
        where = f"{key_path}: " if key_path else ""
        if source is not None and line is not None and column is not None:
            where = f"{source}:{line}:{column}: {where}"
        elif source is not None:
            where = f"{source}: {where}"
        self.errors: list[ConfigError] = [self]
        super().__init__(f"{where}{problem}")

    @classmethod
    def combine(cls, errors: Iterable[ConfigError]) -> ConfigError:
        """One error reporting all of ``errors`` (one per line, in file order).

        Its ``source``, ``line``, ``column`` and ``key_path`` are the first one's;
        ``errors`` lists them all.
        """
        ordered = sorted(errors, key=lambda e: (e.line or 0, e.column or 0))
        if len(ordered) == 1:
            return ordered[0]
        first = ordered[0]
        combined = cls(
            first.problem,
            source=first.source,
            line=first.line,
            column=first.column,
            key_path=first.key_path,
        )
        combined.errors = ordered
        combined.args = ("\n".join(str(e) for e in ordered),)
        return combined


class UnknownNameError(MultiDBError, LookupError):
    """Raised when a database or engine name is not in the registry."""

    def __init__(
        self, name: str, known: Iterable[str], *, kind: str = "database or engine"
    ) -> None:
        self.name = name
        self.known = tuple(known)
        self.suggestion = closest(name, self.known)
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else ""
        super().__init__(
            f"unknown {kind} {name!r}{hint} (known: {', '.join(self.known) or 'none'})"
        )

    def __str__(self) -> str:
        # LookupError's str() would quote the message like a key.
        return str(self.args[0])


class ReadOnlyError(MultiDBError):
    """Raised when a read session is asked to write; nothing was sent to the database."""


class NoReplicaAvailableError(MultiDBError):
    """Raised when a read needs a replica, none is usable and falling back is off."""


class RoutingError(MultiDBError, ValueError):
    """Raised when a role is unknown or does not fit the engine it names."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``word``, or None when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def one_line(error: BaseException) -> str:
    """The first line of an error's message, or its class name when it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
