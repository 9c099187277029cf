"""Choosing the replica a read goes to.

A :class:`Router` keeps the state of one database's replicas: weight, whether
a recent connection failure has left one out (``cooldown_seconds``), and,
when ``max_lag_seconds`` is set, the replication lag last measured for each.
It never opens a connection: sessions tell it about failures
(:meth:`Router.eject`), the lag monitor tells it about lag
(:meth:`Router.report_lag`), and it answers :meth:`Router.choose`.

The choice among usable replicas is a :class:`ReplicaPolicy`;
:class:`SmoothWeightedRoundRobin` and :class:`WeightedRandom` are built in
(``routing.policy``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from .config import DatabaseConfig

__all__ = [
    "EngineStats",
    "ReplicaPolicy",
    "Router",
    "SmoothWeightedRoundRobin",
    "WeightedRandom",
]

log = logging.getLogger("multidb.routing")


class Candidate(Protocol):
    """What a policy sees of a usable replica."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...


class ReplicaPolicy(Protocol):
    """Picks one replica among the usable ones (all have weight > 0)."""

    def choose(self, candidates: Sequence[Candidate]) -> Candidate: ...


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin: weights 1 and 3 give a b b b, spread out."""

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        total = 0.0
        best: Candidate | None = None
        for candidate in candidates:
            current = self._current.get(candidate.name, 0.0) + candidate.weight
            self._current[candidate.name] = current
            total += candidate.weight
            if best is None or current > self._current[best.name]:
                best = candidate
        assert best is not None, "choose() needs at least one candidate"
        self._current[best.name] -= total
        return best


class WeightedRandom:
    """Each replica is picked with probability weight / total weight."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        return self._rng.choices(candidates, weights=[c.weight for c in candidates])[0]


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters of one engine since the registry was built."""

    name: str
    sessions: int  # read sessions (and auto sessions' reads) routed to it
    fallbacks: int  # reads that came to this primary because no replica was usable
    error_ejections: int  # times it was left out after a connection failure
    lag_ejections: int  # times it was left out for lag or stopped replication
    lag_probes: int  # lag measurements taken
    causal_waits: int  # reads that asked this replica whether it had applied a position
    causal_fallbacks: int  # reads that came to this primary because no replica had
    in_rotation: bool  # whether reads may go to it now (weight > 0, not left out)


class _Replica:
    """Mutable routing state of one replica; guarded by the router's lock."""

    __slots__ = (
        "applied",
        "causal_waits",
        "down_until",
        "error_ejections",
        "lag",
        "lag_ejections",
        "lag_ok",
        "lag_probes",
        "name",
        "sessions",
        "weight",
    )

    def __init__(self, name: str, weight: float, lag_checked: bool) -> None:
        self.name = name
        self.weight = weight
        self.down_until = 0.0
        self.lag: float | None = None
        # Until the first probe says otherwise, a lag-checked replica is not trusted.
        self.lag_ok = not lag_checked
        self.sessions = 0
        self.error_ejections = 0
        self.lag_ejections = 0
        self.lag_probes = 0
        self.applied: str | None = None  # the position it had applied when last asked
        self.causal_waits = 0

    def in_rotation(self, now: float) -> bool:
        """Weight above 0, not cooling down after a failure, lag within the limit."""
        return self.weight > 0 and self.down_until <= now and self.lag_ok


class Router:
    """Chooses replicas for one database and remembers which ones to leave out.

    Safe to share between threads: all state changes happen under one lock.
    """

    def __init__(
        self,
        database: DatabaseConfig,
        *,
        policy: ReplicaPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        routing = database.routing
        self.database = database.name
        self.primary = database.primary.name
        self.fallback_to_primary = routing.fallback_to_primary
        self.cooldown_seconds = routing.cooldown_seconds
        self.max_lag_seconds = routing.max_lag_seconds
        if policy is None:
            policy = WeightedRandom() if routing.policy == "random" else SmoothWeightedRoundRobin()
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        lag_checked = routing.max_lag_seconds is not None
        self._replicas = {
            r.name: _Replica(r.name, r.weight, lag_checked) for r in database.replicas
        }
        self._fallbacks = 0
        self._causal_fallbacks = 0
        # dbs.testing.lag(): replica -> (forced lag, (lag, lag_ok) before it was forced)
        self._forced: dict[str, tuple[float | None, tuple[float | None, bool]]] = {}

    @property
    def replica_names(self) -> tuple[str, ...]:
        return tuple(self._replicas)

    def choose(self, exclude: Collection[str] = ()) -> str | None:
        """The replica the next read goes to, or None when none is usable.

        A replica is usable when its weight is above 0, it is not cooling down
        after a failure, it is not in ``exclude``, and (with ``max_lag_seconds``)
        its last measured lag is known and within the limit.
        """
        now = self._clock()
        with self._lock:
            usable = [r for r in self._replicas.values() if r.in_rotation(now)]
            if exclude:
                usable = [r for r in usable if r.name not in exclude]
            if not usable:
                return None
            chosen = usable[0] if len(usable) == 1 else self._policy.choose(usable)
            assert isinstance(chosen, _Replica)
            chosen.sessions += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: read -> %s (%s among %s)",
                self.database,
                chosen.name,
                type(self._policy).__name__,
                ", ".join(r.name for r in usable),
            )
        return chosen.name

    def why_none(self) -> str:
        """One line saying why :meth:`choose` found no usable replica."""
        now = self._clock()
        with self._lock:
            reasons = []
            for r in self._replicas.values():
                if r.weight <= 0:
                    reasons.append(f"{r.name} has weight 0")
                elif r.down_until > now:
                    reasons.append(f"{r.name} failed, left out for {r.down_until - now:.1f}s")
                elif not r.lag_ok:
                    lag = "unknown" if r.lag is None else f"{r.lag:.1f}s"
                    reasons.append(f"{r.name} lag {lag} (max {self.max_lag_seconds}s)")
                else:
                    reasons.append(f"{r.name} already failed in this session")
        return "; ".join(reasons) or "it has no replicas"

    def note_fallback(self, reason: str) -> None:
        """Count a read that went to the primary because no replica was usable."""
        with self._lock:
            self._fallbacks += 1
        log.debug("%s: read -> %s (fallback: %s)", self.database, self.primary, reason)

    def note_causal_wait(self, name: str, applied: str | None) -> None:
        """Count a read that asked replica ``name`` for its applied position; remember it."""
        with self._lock:
            replica = self._replicas[name]
            replica.causal_waits += 1
            if applied is not None:
                replica.applied = applied

    def note_applied(self, name: str, applied: str | None) -> None:
        """Remember the position replica ``name`` had applied when last asked (None: unknown)."""
        with self._lock:
            self._replicas[name].applied = applied

    def note_causal_fallback(self, reason: str) -> None:
        """Count a read that went to the primary because no replica had applied its position."""
        with self._lock:
            self._causal_fallbacks += 1
        log.debug("%s: read -> %s (%s)", self.database, self.primary, reason)

    def eject(self, name: str, error: BaseException) -> None:
        """Leave replica ``name`` out for ``cooldown_seconds`` after a connection failure."""
        with self._lock:
            replica = self._replicas[name]
            replica.down_until = self._clock() + self.cooldown_seconds
            replica.error_ejections += 1
        log.warning(
            "%s: replica %s left out for %ss after a connection failure: %s",
            self.database,
            name,
            self.cooldown_seconds,
            _one_line(error),
        )

    def force_lag(self, name: str, lag: float | None) -> None:
        """Take ``lag`` as replica ``name``'s every measurement until :meth:`release_lag`."""
        with self._lock:
            replica = self._replicas[name]
            before = self._forced.get(name, (None, (replica.lag, replica.lag_ok)))[1]
            self._forced[name] = (lag, before)
        self.report_lag(name, lag)

    def release_lag(self, name: str) -> None:
        """Let real measurements of ``name`` count again, from the state before it was forced."""
        with self._lock:
            forced = self._forced.pop(name, None)
            if forced is not None:
                replica = self._replicas[name]
                replica.lag, replica.lag_ok = forced[1]

    def report_lag(self, name: str, lag: float | None) -> None:
        """Record a lag measurement; None means unknown or replication stopped."""
        limit = self.max_lag_seconds
        with self._lock:
            if name in self._forced:
                lag = self._forced[name][0]
            replica = self._replicas[name]
            replica.lag = lag
            replica.lag_probes += 1
            was_ok = replica.lag_ok
            replica.lag_ok = limit is None or (lag is not None and lag <= limit)
            if was_ok and not replica.lag_ok:
                replica.lag_ejections += 1
            changed = was_ok != replica.lag_ok
        if changed:
            state = "back in rotation" if replica.lag_ok else "left out"
            lag_text = "unknown or replication stopped" if lag is None else f"{lag:.2f}s"
            log.info(
                "%s: replica %s %s: lag %s (max %ss)", self.database, name, state, lag_text, limit
            )

    def applied(self, name: str) -> str | None:
        """The position replica ``name`` had applied when last asked, as the server wrote it."""
        return self._replicas[name].applied

    def lag(self, name: str) -> float | None:
        with self._lock:
            return self._replicas[name].lag

    def stats(self) -> list[EngineStats]:
        """A snapshot of the counters of this database's engines, primary first."""
        now = self._clock()
        with self._lock:
            rows = [
                EngineStats(
                    self.primary, 0, self._fallbacks, 0, 0, 0, 0, self._causal_fallbacks, True
                )
            ]
            rows += [
                EngineStats(
                    r.name,
                    r.sessions,
                    0,
                    r.error_ejections,
                    r.lag_ejections,
                    r.lag_probes,
                    r.causal_waits,
                    0,
                    r.in_rotation(now),
                )
                for r in self._replicas.values()
            ]
        return rows


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
