"""Causal scopes: a read never misses a write that came before it in the same scope.

After a write transaction commits on a primary, the primary's position (a
PostgreSQL WAL position, a MariaDB GTID) is recorded in the current
:class:`CausalScope`; a later read in that scope goes only to a replica that
has applied it (see :mod:`multidb.positions`), else to the primary.

A scope lives in a :mod:`contextvars` variable: each thread and each asyncio
task has its own, and a context copied from another (an asyncio task, a
thread pool's worker, SQLAlchemy's asyncio greenlets) shares its scope, so a
write made there is seen by the code that opened the scope. A scope travels
between processes as a token: a short ASCII string safe in a cookie, an HTTP
header or a job's headers::

    with dbs.session("main", role="write") as s:
        s.add(order)
    token = dbs.causal_token()          # e.g. "1.main~l~3000120~1764528000"
    ...                                 # later, elsewhere
    with dbs.causal(token):
        with dbs.session("main", role="read") as s:
            s.get(Order, order_id)      # sees the order

A token is untrusted input: a malformed one is ignored (logged at WARNING),
and a position in it constrains reads only for ``routing.causal_ttl_seconds``
after its write, so a forged token can at worst send its holder's reads to
the primary for that long.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from .config import Role

__all__ = [
    "CausalScope",
    "Position",
    "current",
    "decode",
    "encode",
    "ensure",
    "open_scope",
    "parse_position",
    "request_role",
    "use_role",
]

log = logging.getLogger("multidb.causal")

PositionKind = Literal["lsn", "gtid", "primary"]

_MAX_TOKEN = 4096  # longer tokens are not parsed at all


@dataclass(frozen=True, slots=True)
class Position:
    """Where a primary was after a write, and when (wall clock, seconds since the epoch).

    ``kind`` is ``"lsn"`` (PostgreSQL: ``value`` is the WAL position as an
    int), ``"gtid"`` (MariaDB: ``value`` maps GTID domain to (server id,
    sequence number)) or ``"primary"`` (the position could not be read: only
    the primary may serve the reads).
    """

    kind: PositionKind
    value: int | tuple[tuple[int, int, int], ...] | None
    written_at: float

    def later(self, other: Position) -> Position:
        """The position a replica must have applied to cover both."""
        if self.kind == "primary" or other.kind != self.kind:
            kind = "primary" if "primary" in (self.kind, other.kind) else other.kind
            if kind == "primary":
                return Position("primary", None, max(self.written_at, other.written_at))
            return other if other.written_at >= self.written_at else self
        written_at = max(self.written_at, other.written_at)
        if self.kind == "lsn":
            assert isinstance(self.value, int) and isinstance(other.value, int)
            return Position("lsn", max(self.value, other.value), written_at)
        merged = dict(_gtid_map(self.value))
        for domain, (server, seq) in _gtid_map(other.value).items():
            if domain not in merged or seq > merged[domain][1]:
                merged[domain] = (server, seq)
        return Position("gtid", _gtid_tuple(merged), written_at)

    def text(self) -> str:
        """The position as the server writes it: ``16/B374D848``, ``0-1-42,1-2-7``."""
        if self.kind == "lsn":
            assert isinstance(self.value, int)
            return format_lsn(self.value)
        if self.kind == "gtid":
            return ",".join(f"{d}-{s}-{n}" for d, s, n in _gtids(self.value))
        return "primary"


def _gtids(value: object) -> tuple[tuple[int, int, int], ...]:
    assert isinstance(value, tuple)
    return value


def _gtid_map(value: object) -> dict[int, tuple[int, int]]:
    return {d: (s, n) for d, s, n in _gtids(value)}


def _gtid_tuple(mapping: Mapping[int, tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    return tuple((d, s, n) for d, (s, n) in sorted(mapping.items()))


# -- positions as the servers write them ------------------------------------------------

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_GTID = re.compile(r"(\d{1,10})-(\d{1,10})-(\d{1,20})")


def parse_lsn(text: str) -> int | None:
    """``'16/B374D848'`` as an int, or None when it is not a WAL position."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        return None
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def parse_gtids(text: str) -> tuple[tuple[int, int, int], ...] | None:
    """``'0-1-42,1-2-7'`` (a MariaDB GTID list) as sorted triples; ``''`` is empty.

    None when the text is not a GTID list. Of several GTIDs of one domain the
    highest sequence number is kept.
    """
    merged: dict[int, tuple[int, int]] = {}
    for part in text.replace("\n", "").split(","):
        if not part.strip():
            continue
        match = _GTID.fullmatch(part.strip())
        if match is None:
            return None
        domain, server, seq = (int(g) for g in match.groups())
        if seq >= 2**64 or domain >= 2**32 or server >= 2**32:
            return None
        if domain not in merged or seq > merged[domain][1]:
            merged[domain] = (server, seq)
    return _gtid_tuple(merged)


@functools.lru_cache(maxsize=256)
def parse_position(text: str) -> Position | None:
    """A replica's applied position as the server wrote it (a WAL position or GTIDs)."""
    if "/" in text:
        lsn = parse_lsn(text)
        return None if lsn is None else Position("lsn", lsn, 0.0)
    gtids = parse_gtids(text)
    return None if gtids is None else Position("gtid", gtids, 0.0)


def covers(applied: Position | None, required: Position) -> bool:
    """Whether a replica at ``applied`` has applied everything up to ``required``."""
    if applied is None or required.kind == "primary" or applied.kind != required.kind:
        return False
    if required.kind == "lsn":
        assert isinstance(applied.value, int) and isinstance(required.value, int)
        return applied.value >= required.value
    have = _gtid_map(applied.value)
    return all(
        domain in have and have[domain][1] >= seq
        for domain, (_, seq) in _gtid_map(required.value).items()
    )


# -- the scope ----------------------------------------------------------------------------


class CausalScope:
    """The positions a scope's reads must see, one per database; safe to share between threads."""

    __slots__ = ("_lock", "_positions", "wrote")

    def __init__(self, positions: Mapping[str, Position] | None = None) -> None:
        self._lock = threading.Lock()
        self._positions: dict[str, Position] = dict(positions or {})
        self.wrote = False  # a write transaction committed on a primary in this scope

    def __repr__(self) -> str:
        shown = ", ".join(f"{db}={p.text()}" for db, p in self.positions().items())
        return f"<CausalScope {shown or 'empty'}{' wrote' if self.wrote else ''}>"

    def record(self, database: str, position: Position | None) -> None:
        """Note a committed write: its position (None where the backend has none)."""
        self.wrote = True
        if position is not None:
            self.merge({database: position})

    def merge(self, positions: Mapping[str, Position]) -> None:
        """Keep, for each database, the later of the held and the given position."""
        with self._lock:
            held = self._positions
            for database, position in positions.items():
                old = held.get(database)
                held[database] = position if old is None else old.later(position)

    def positions(self) -> dict[str, Position]:
        with self._lock:
            return dict(self._positions)

    def position(self, database: str, ttl: float, now: float | None = None) -> Position | None:
        """The unexpired position reads of ``database`` must see, or None."""
        position = self._positions.get(database)
        if position is None:
            return None
        if (now if now is not None else time.time()) - position.written_at > ttl:
            return None
        return position

    def token(self, ttl: Mapping[str, float] | None = None) -> str | None:
        """This scope's positions as a token (expired ones left out), or None when none."""
        now = time.time()
        positions = {
            db: p
            for db, p in self.positions().items()
            if ttl is None or now - p.written_at <= ttl.get(db, 0.0)
        }
        return encode(positions) if positions else None


_current: ContextVar[CausalScope | None] = ContextVar("multidb_causal_scope", default=None)


# The scope of this thread or task, or None when nothing opened or wrote in one
# (the ContextVar's own method: read for every routed session, so no Python frame).
current: Callable[[], CausalScope | None] = _current.get


def ensure() -> CausalScope:
    """The current scope, made (for this context) when there is none yet."""
    scope = _current.get()
    if scope is None:
        scope = CausalScope()
        _current.set(scope)
    return scope


@contextlib.contextmanager
def open_scope(token: str | None = None, *, inherit: bool = True) -> Iterator[CausalScope]:
    """A new scope for a block: the enclosing scope's positions plus the token's.

    When the block ends, the enclosing scope takes in what was written inside,
    so a read after the block sees it too. ``inherit=False`` starts from the
    token alone and gives nothing back: one client's request, one job.
    """
    outer = _current.get() if inherit else None
    scope = CausalScope(outer.positions() if outer is not None else None)
    if token:
        scope.merge(decode(token))
    reset = _current.set(scope)
    try:
        yield scope
    finally:
        try:
            _current.reset(reset)
        except ValueError:  # ended in another context than it began (an async generator)
            _current.set(outer)
        if outer is not None:
            outer.merge(scope.positions())
            outer.wrote = outer.wrote or scope.wrote


# -- tokens -------------------------------------------------------------------------------
#
# "1" then, per database, ".NAME~KIND~VALUE~SECONDS": KIND l (a WAL position in hex),
# g (GTIDs as domain-server-seq joined by "_") or p (the primary only); SECONDS is the
# write's time, rounded up. Only [A-Za-z0-9._~-]: safe in cookies and headers unquoted.

_ENTRY = re.compile(
    r"([A-Za-z_][A-Za-z0-9_-]{0,63})~(?:l~([0-9a-f]{1,16})|g~(\d+-\d+-\d+(?:_\d+-\d+-\d+)*)|p~)~(\d{1,12})"
)


def encode(positions: Mapping[str, Position]) -> str:
    """A token naming ``positions``; :func:`decode` reads it back."""
    parts = ["1"]
    for database, p in sorted(positions.items()):
        seconds = int(-(-p.written_at // 1))  # rounded up: never expires early
        if p.kind == "lsn":
            assert isinstance(p.value, int)
            parts.append(f"{database}~l~{p.value:x}~{seconds}")
        elif p.kind == "gtid":
            gtids = "_".join(f"{d}-{s}-{n}" for d, s, n in _gtids(p.value))
            parts.append(f"{database}~g~{gtids}~{seconds}")
        else:
            parts.append(f"{database}~p~~{seconds}")
    return ".".join(parts)


def decode(token: str | bytes | None) -> dict[str, Position]:
    """The positions a token names; a malformed token names none (logged at WARNING).

    A write time in the future is taken as now: a token constrains reads for
    at most ``causal_ttl_seconds``, whoever wrote it.
    """
    if not token:
        return {}
    try:
        text = token.decode("ascii") if isinstance(token, bytes) else str(token)
    except UnicodeDecodeError:
        text = None
    positions = _parse(text) if text is not None and len(text) <= _MAX_TOKEN else None
    if positions is None:
        shown = repr(token[:40]) + ("..." if len(token) > 40 else "")
        log.warning("causal: ignored a malformed token (%d chars): %s", len(token), shown)
        return {}
    return positions


def _parse(text: str) -> dict[str, Position] | None:
    version, _, rest = text.strip().partition(".")
    if version != "1" or not rest:
        return None
    now = time.time()
    positions: dict[str, Position] = {}
    for entry in rest.split("."):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            return None
        database, lsn, gtids, seconds = match.groups()
        written_at = min(float(seconds), now)  # a write time ahead of this clock is now
        if lsn is not None:
            position = Position("lsn", int(lsn, 16), written_at)
        elif gtids is not None:
            parsed = parse_gtids(gtids.replace("_", ","))
            if parsed is None:
                return None
            position = Position("gtid", parsed, written_at)
        else:
            position = Position("primary", None, written_at)
        old = positions.get(database)
        positions[database] = position if old is None else old.later(position)
    return positions


# -- request roles ------------------------------------------------------------------------

request_role: ContextVar[Role | None] = ContextVar("multidb_request_role", default=None)
"""The role ``session(DATABASE)`` takes when it names none (the web middleware sets it)."""


@contextlib.contextmanager
def use_role(role: Role | None) -> Iterator[None]:
    """Make ``role`` the role of sessions that name none, for a block (None: no override)."""
    reset = request_role.set(role)
    try:
        yield
    finally:
        try:
            request_role.reset(reset)
        except ValueError:
            request_role.set(None)
