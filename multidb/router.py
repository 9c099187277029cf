"""Choosing the replica a read goes to.

A :class:`Router` keeps the state of one database's replicas: weight, whether
a recent connection failure has left one out (``cooldown_seconds``), whether
it answered its last health probe, and the lag and applied position last
measured for each. It never opens a connection: sessions tell it about
failures (:meth:`Router.eject`), the health monitor about probes
(:meth:`Router.report_lag`, :meth:`Router.report_unreachable`), and it
answers :meth:`Router.choose`.

The choice among usable replicas is a :class:`ReplicaPolicy`;
:class:`SmoothWeightedRoundRobin` and :class:`WeightedRandom` are built in
(``routing.policy``).
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from .config import DatabaseConfig
from .errors import one_line

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
    sessions: int  # every session that used it: routed reads, write and pinned sessions
    fallbacks: int  # reads that came to this primary because no replica was usable
    error_ejections: int  # times it was left out after a failed or unanswered connection
    lag_ejections: int  # times it was left out for lag, unknown lag or stopped replication
    lag_probes: int  # probes that measured its lag
    causal_waits: int  # reads that asked this replica whether it had applied a position
    causal_fallbacks: int  # reads that came to this primary because no replica had
    in_rotation: bool  # whether reads may go to it now (weight > 0, not left out)


class _Replica:
    """Mutable routing state of one replica; guarded by the router's lock."""

    __slots__ = (
        "answering",
        "applied",
        "causal_waits",
        "down_until",
        "error_ejections",
        "fresh_as_of",
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
        self.down_until = 0.0  # left out until then after a failed connection
        self.answering = True  # false from a probe that got no answer until one that does
        self.lag: float | None = None  # last measured lag, None when unknown
        # The router's clock time by which the replica had applied everything the
        # primary had committed: its lag now is at most clock() - fresh_as_of.
        self.fresh_as_of: float | None = None
        # Whether the lag bound held at the last look (to count ejections); a
        # lag-checked replica is not trusted before its first probe.
        self.lag_ok = not lag_checked
        self.applied: str | None = None  # the position it had applied when last asked
        self.causal_waits = 0
        self.sessions = 0
        self.error_ejections = 0
        self.lag_ejections = 0
        self.lag_probes = 0


class Router:
    """Chooses replicas for one database and remembers which ones to leave out.

    Safe to share between threads: all state changes happen under one lock.
    A replica is in rotation while all of these hold:

    1. its weight is above 0;
    2. no connection to it failed within the last ``cooldown_seconds``;
    3. its last health probe got an answer (:meth:`report_unreachable` takes
       it out, :meth:`report_lag` brings it back);
    4. with ``max_lag_seconds``: its last measured lag plus the age of that
       measurement is within the limit (a hard bound, checked at each read).
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
        self._sessions: dict[str, int] = dict.fromkeys((database.primary.name, *self._replicas), 0)
        # dbs.testing.lag(): replica -> (its constant lag, (lag, fresh_as_of) before forcing)
        self._forced: dict[str, tuple[float | None, tuple[float | None, float | None]]] = {}

    @property
    def replica_names(self) -> tuple[str, ...]:
        return tuple(self._replicas)

    def _usable(self, replica: _Replica, now: float, events: list[str]) -> bool:
        """Rules 1-4 of the class docstring; counts and notes a lag bound just broken."""
        if replica.weight <= 0 or replica.down_until > now or not replica.answering:
            return False
        return self.max_lag_seconds is None or self._lag_ok(replica, now, events)

    def _lag_ok(self, replica: _Replica, now: float, events: list[str]) -> bool:
        """Rule 4 (``max_lag_seconds`` is set); counts and notes a lag bound just broken."""
        limit = self.max_lag_seconds
        assert limit is not None
        fresh = self._fresh(replica, now)
        lag_ok = fresh is not None and now - fresh <= limit
        if lag_ok != replica.lag_ok:
            replica.lag_ok = lag_ok
            if not lag_ok:
                replica.lag_ejections += 1
            events.append(self._lag_event(replica, now))
        return lag_ok

    def _fresh(self, replica: _Replica, now: float) -> float | None:
        """``fresh_as_of``; for a lag forced by ``dbs.testing.lag()``, ``now`` minus it."""
        if replica.name in self._forced:
            lag = self._forced[replica.name][0]
            return None if lag is None else now - lag
        return replica.fresh_as_of

    def _lag_event(self, replica: _Replica, now: float) -> str:
        if replica.lag_ok:
            return f"{replica.name} back in rotation: lag {replica.lag or 0.0:.2f}s"
        fresh = self._fresh(replica, now)
        if fresh is None:
            why = "lag unknown or replication stopped"
        else:
            why = f"lag up to {now - fresh:.2f}s"
        return f"{replica.name} left out: {why} (max {self.max_lag_seconds}s)"

    def _log_lag_events(self, events: list[str]) -> None:
        for event in events:
            level = logging.INFO if "back in rotation" in event else logging.WARNING
            log.log(level, "%s: replica %s", self.database, event)

    def choose(self, exclude: Collection[str] = ()) -> str | None:
        """The replica the next read goes to, or None when none is usable.

        A replica is usable when it is in rotation (see the class docstring)
        and not in ``exclude``.
        """
        now = self._clock()
        events: list[str] = []
        lag_checked = self.max_lag_seconds is not None
        with self._lock:
            # _usable inline (a loop, not a comprehension): this runs for every session.
            usable = []
            for r in self._replicas.values():
                if (
                    r.weight > 0
                    and r.down_until <= now
                    and r.answering
                    and (not lag_checked or self._lag_ok(r, now, events))
                    and (not exclude or r.name not in exclude)
                ):
                    usable.append(r)
            if not usable:
                chosen = None
            elif len(usable) == 1:
                chosen = usable[0]
            else:
                chosen = self._policy.choose(usable)  # type: ignore[assignment]
            if chosen is not None:
                chosen.sessions += 1
        if events:
            self._log_lag_events(events)
        if chosen is None:
            return None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: read -> %s (%s among %s)",
                self.database,
                chosen.name,
                type(self._policy).__name__,
                ", ".join(r.name for r in usable),
            )
        return chosen.name

    def peek(self, exclude: Collection[str] = ()) -> tuple[str, str] | None:
        """What :meth:`choose` would answer now, and why, without counting or moving on.

        For ``dbs.explain()``: ``(replica, "POLICY among A, B")``, or None.
        """
        now = self._clock()
        with self._lock:
            usable = [
                r
                for r in self._replicas.values()
                if self._usable(r, now, []) and r.name not in exclude
            ]
            if not usable:
                return None
            policy = copy.deepcopy(self._policy)  # the real one must not move on
            picked = usable[0] if len(usable) == 1 else policy.choose(usable)
        among = ", ".join(r.name for r in usable)
        return picked.name, f"{type(self._policy).__name__} among {among}"

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
                elif not r.answering:
                    reasons.append(f"{r.name} does not answer its health probe")
                elif not self._usable(r, now, []):
                    fresh = self._fresh(r, now)
                    lag = "unknown" if fresh is None else f"up to {now - fresh:.1f}s"
                    reasons.append(f"{r.name} lag {lag} (max {self.max_lag_seconds}s)")
                else:
                    reasons.append(f"{r.name} already failed in this session")
        return "; ".join(reasons) or "it has no replicas"

    def note_fallback(self, reason: str) -> None:
        """Count a read that went to the primary because no replica was usable."""
        with self._lock:
            self._fallbacks += 1
            self._sessions[self.primary] += 1
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

    def note_session(self, name: str) -> None:
        """Count a session that the router did not choose (write, pinned) on engine ``name``."""
        with self._lock:
            self._sessions[name] += 1

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
            one_line(error),
        )

    def report_unreachable(self, name: str, reason: str) -> None:
        """Leave replica ``name`` out until a probe gets an answer from it again."""
        with self._lock:
            replica = self._replicas[name]
            was_answering, replica.answering = replica.answering, False
            if was_answering:
                replica.error_ejections += 1
        if was_answering:
            log.warning(
                "%s: replica %s left out until it answers again: %s", self.database, name, reason
            )

    def report_lag(
        self,
        name: str,
        lag: float | None,
        applied: str | None = None,
        *,
        measured_at: float | None = None,
    ) -> None:
        """Record a probe's answer: the replica answers, with ``lag`` seconds of lag.

        ``lag`` is None when unknown or replication is stopped; ``measured_at``
        is the router clock's time of the measurement (default: now);
        ``applied`` is the replica's applied position as the server writes it
        (PostgreSQL replay LSN, MariaDB ``gtid_slave_pos``).
        """
        now = self._clock()
        at = now if measured_at is None else measured_at
        events: list[str] = []
        with self._lock:
            replica = self._replicas[name]
            was_answering, replica.answering = replica.answering, True
            replica.lag_probes += 1
            if name not in self._forced:
                replica.lag = lag
                replica.fresh_as_of = None if lag is None else at - max(lag, 0.0)
            if applied is not None:
                replica.applied = applied
            self._usable(replica, now, events)
        if not was_answering:
            log.warning("%s: replica %s answers again", self.database, name)
        if events:
            self._log_lag_events(events)

    def force_lag(self, name: str, lag: float | None) -> None:
        """Treat replica ``name`` as ``lag`` seconds behind (None: unknown) until released.

        The hook behind ``dbs.testing.lag()``: the lag stays what was forced,
        however old, and probes do not change it (they still count).
        """
        now = self._clock()
        events: list[str] = []
        with self._lock:
            replica = self._replicas[name]
            before = self._forced.get(name, (None, (replica.lag, replica.fresh_as_of)))[1]
            self._forced[name] = (lag, before)
            replica.lag = lag
            self._usable(replica, now, events)
        if events:
            self._log_lag_events(events)

    def release_lag(self, name: str) -> None:
        """Undo :meth:`force_lag`: the lag measured before it counts again, until the next probe."""
        with self._lock:
            forced = self._forced.pop(name, None)
            if forced is not None:
                replica = self._replicas[name]
                replica.lag, replica.fresh_as_of = forced[1]

    def lag(self, name: str) -> float | None:
        """The last measured lag of replica ``name``, None when unknown."""
        with self._lock:
            return self._replicas[name].lag

    def lag_bound(self, name: str) -> float | None:
        """How stale replica ``name`` may be now: last measured lag plus its age."""
        now = self._clock()
        with self._lock:
            fresh = self._replicas[name].fresh_as_of
        return None if fresh is None else max(now - fresh, 0.0)

    def applied(self, name: str) -> str | None:
        """The position replica ``name`` had applied when last asked, as the server wrote it.

        Asked by a health probe (each round) or a causal check; None before either.
        """
        return self._replicas[name].applied

    def stats(self) -> list[EngineStats]:
        """A snapshot of the counters of this database's engines, primary first."""
        now = self._clock()
        events: list[str] = []
        with self._lock:
            rows = [
                EngineStats(
                    self.primary,
                    self._sessions[self.primary],
                    self._fallbacks,
                    0,
                    0,
                    0,
                    0,
                    self._causal_fallbacks,
                    True,
                )
            ]
            rows += [
                EngineStats(
                    r.name,
                    r.sessions + self._sessions[r.name],
                    0,
                    r.error_ejections,
                    r.lag_ejections,
                    r.lag_probes,
                    r.causal_waits,
                    0,
                    self._usable(r, now, events),
                )
                for r in self._replicas.values()
            ]
        if events:
            self._log_lag_events(events)
        return rows
