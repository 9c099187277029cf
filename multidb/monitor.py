"""The health monitor: probes every replica off the query path, each probe bounded in time.

Every database with replicas has its engines probed once per
``check_interval_seconds`` (a *round*), however many reads there are, on a
thread of its own; the results go to its :class:`~multidb.router.Router`.
Within a round every engine is probed at once, each on its own daemon
thread, and the round waits at most ``connect_timeout_seconds``: a server that
accepts connections and never answers cannot hold up the probes of the
others, and is reported unreachable when the round ends. At most one probe
per engine is in flight: while one hangs, later rounds report the engine
unreachable without starting another.

Lag is how stale a replica's data may be: each round the primary's position
is sampled (PostgreSQL WAL LSN, MariaDB ``gtid_binlog_pos``) with the time it
was read; a replica that has applied a sampled position has everything the
primary had committed at that time. A caught-up replica therefore has lag 0
however much WAL the primary writes without committing, and when the primary
stops answering, replicas keep the freshness they had, their lag growing from
the last position they are known to have applied. Where no sample is covered
yet, the server's own figure is used (PostgreSQL: age of the last replayed
commit; MariaDB: ``Seconds_Behind_Master``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from .config import DatabaseConfig, EngineConfig
from .errors import one_line
from .probes import ServerState, applied_position, covers, probe
from .router import Router

__all__ = ["Answer", "HealthMonitor", "Prober"]

log = logging.getLogger("multidb.routing")

_CATCH_UP_READS = 10  # re-reads of a replica's applied position, within one probe
_CATCH_UP_PAUSE = 0.01  # seconds between them: a streaming replica is milliseconds behind


@dataclass(frozen=True, slots=True)
class Answer:
    """What one engine's probe found."""

    name: str
    answered: bool  # the server answered the probe (possibly in the wrong role)
    latency_ms: float | None  # connect and first query
    state: ServerState | None
    lag: float | None  # replicas: seconds, None when unknown or replication stopped
    measured_at: float  # monotonic time the lag refers to
    error: str | None  # one line, or None
    hung: bool = False  # no answer at all within the timeout (not a refusal or an error)


class _History:
    """A primary's sampled positions with the monotonic time each was read, oldest first."""

    def __init__(self, dialect: str, keep: int) -> None:
        self.dialect = dialect
        self._samples: deque[tuple[float, str]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, at: float, position: str) -> None:
        with self._lock:
            if self._samples and covers(self.dialect, position, self._samples[-1][1]) is False:
                self._samples.clear()  # went back: a new primary; older samples mean nothing
            self._samples.append((at, position))

    def latest(self) -> tuple[float, str] | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def fresh_as_of(self, applied: str) -> float | None:
        """The time of the latest sample ``applied`` covers, None when it covers none."""
        with self._lock:
            samples = list(self._samples)
        for at, position in reversed(samples):
            if covers(self.dialect, applied, position):
                return at
        return None


class _Slot:
    """One probe's result, filled by its thread."""

    __slots__ = ("answer", "done", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.done = threading.Event()
        self.answer: Answer | None = None


class _Worker:
    """The daemon thread that runs one engine's probes, one at a time, until closed."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[_Slot, Callable[[], Answer]] | None]
        self._queue = queue.SimpleQueue()
        self._name = name
        threading.Thread(target=self._run, name=f"multidb-probe-{name}", daemon=True).start()

    def submit(self, slot: _Slot, work: Callable[[], Answer]) -> None:
        self._queue.put((slot, work))

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            slot, work = item
            try:
                slot.answer = work()
            except Exception as exc:  # any failure is the engine's answer
                slot.answer = Answer(
                    self._name, False, None, None, None, time.monotonic(), one_line(exc)
                )
            finally:
                slot.done.set()


class Prober:
    """Probes engines, each on a daemon thread of its own: at most one probe in flight per engine.

    ``engine`` gives the Engine a probe connects with; ``call(name, work)``, when
    given, runs each probe's work (multidb.aio.run_blocking for async-only drivers).
    :meth:`close` ends the threads (a hung one when its probe returns).
    """

    def __init__(
        self,
        engine: Callable[[str], Engine],
        keep: int = 600,
        call: Callable[[str, Callable[[], Answer]], Answer] | None = None,
    ) -> None:
        self._engine = engine
        self._call = call
        self._keep = keep
        self._lock = threading.Lock()
        self._in_flight: dict[str, _Slot] = {}
        self._workers: dict[str, _Worker] = {}
        self._histories: dict[str, _History] = {}

    def close(self) -> None:
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.close()

    def round(
        self, database: DatabaseConfig, timeout: float, stop: threading.Event | None = None
    ) -> list[Answer]:
        """Probe the primary and every replica of ``database`` at once, waiting up to ``timeout``.

        An engine that gives no answer in time is an answer with ``answered``
        false; its probe keeps running, and until it ends the engine is not
        probed again. Setting ``stop`` ends the wait early.
        """
        deadline = time.monotonic() + timeout
        primary = self._start(database.primary, lambda: self._primary(database))
        slots = [primary]
        for replica in database.replicas:
            slots.append(
                self._start(replica, self._replica_work(database, replica, primary, deadline))
            )
        answers = []
        for engine_config, slot in zip(database.engines, slots, strict=True):
            _wait(slot.done, deadline, stop)
            answer = slot.answer
            if answer is None:
                waited = time.monotonic() - slot.started
                answer = Answer(
                    engine_config.name,
                    False,
                    None,
                    None,
                    None,
                    time.monotonic(),
                    f"no answer within {waited:.1f}s (timeout {timeout:g}s)",
                    hung=True,
                )
            answers.append(answer)
        return answers

    def _replica_work(
        self, database: DatabaseConfig, replica: EngineConfig, primary: _Slot, deadline: float
    ) -> Callable[[], Answer]:
        return lambda: self._replica(database, replica, primary, deadline)

    def _start(self, engine_config: EngineConfig, work: Callable[[], Answer]) -> _Slot:
        name = engine_config.name
        with self._lock:
            running = self._in_flight.get(name)
            if running is not None and not running.done.is_set():
                return running  # still hung: this round reports it again
            slot = self._in_flight[name] = _Slot(time.monotonic())
            worker = self._workers.get(name)
            if worker is None:
                worker = self._workers[name] = _Worker(name)
        call = self._call
        worker.submit(slot, work if call is None else lambda: call(name, work))
        return slot

    def _history(self, database: DatabaseConfig, dialect: str) -> _History:
        with self._lock:
            history = self._histories.get(database.name)
            if history is None:
                history = self._histories[database.name] = _History(dialect, self._keep)
            return history

    def _primary(self, database: DatabaseConfig) -> Answer:
        name = database.primary.name
        started = time.monotonic()
        with self._engine(name).connect() as connection:
            state = probe(connection, "primary")
            latency = (time.monotonic() - started) * 1000
            if state.position is not None:
                # Everything committed before ``started`` is at or before this position.
                self._history(database, connection.dialect.name).add(started, state.position)
        return Answer(name, True, latency, state, None, started, state.role_error)

    def _replica(
        self, database: DatabaseConfig, replica: EngineConfig, primary: _Slot, deadline: float
    ) -> Answer:
        name = replica.name
        started = time.monotonic()
        with self._engine(name).connect() as connection:
            # Connect first, then wait for this round's primary position, then read.
            connection.exec_driver_sql("SELECT 1")
            latency = (time.monotonic() - started) * 1000
            primary.done.wait(max(0.0, deadline - time.monotonic()))
            dialect = connection.dialect.name
            state = probe(connection, "replica")
            measured = time.monotonic()
            if state.role_error is not None:
                return Answer(name, True, latency, state, None, measured, state.role_error)
            if state.never_behind:
                return Answer(name, True, latency, state, 0.0, measured, None)
            if state.stopped:
                return Answer(name, True, latency, state, None, measured, None)
            history = self._history(database, dialect)
            applied = state.applied
            latest = history.latest()
            # A streaming replica is a few milliseconds behind a busy primary:
            # give it those before falling back to older samples.
            for _ in range(_CATCH_UP_READS):
                if applied is None or latest is None or covers(dialect, applied, latest[1]):
                    break
                time.sleep(_CATCH_UP_PAUSE)
                applied = applied_position(connection)
            if applied != state.applied:
                state = ServerState(
                    state.role_error,
                    applied=applied,
                    behind=state.behind,
                    behind_is_bound=state.behind_is_bound,
                    stopped=state.stopped,
                )
        lag, at = _lag(state, history, measured)
        return Answer(name, True, latency, state, lag, at, None)


def _lag(state: ServerState, history: _History, measured: float) -> tuple[float | None, float]:
    """The lag of a replica probed at ``measured``, and the time that lag refers to.

    The later of two freshness times wins where both are upper bounds: the
    latest primary sample the replica has applied, and ``measured`` minus the
    server's own bound. A server estimate (MariaDB's Seconds_Behind_Master)
    is used only when no sample is covered.
    """
    sampled = None if state.applied is None else history.fresh_as_of(state.applied)
    latest = history.latest()
    if sampled is not None and latest is not None and sampled == latest[0]:
        return 0.0, sampled  # caught up with the primary as last sampled
    fresh = sampled
    if state.behind is not None and (state.behind_is_bound or fresh is None):
        own = measured - state.behind
        fresh = own if fresh is None else max(fresh, own)
    if fresh is None:
        return None, measured
    return max(measured - fresh, 0.0), measured


class HealthMonitor:
    """Runs probe rounds for each watched database on its own daemon thread until stopped."""

    def __init__(
        self,
        watched: Sequence[tuple[DatabaseConfig, Router]],
        engine: Callable[[str], Engine],
        on_hung: Callable[[str], None] = lambda name: None,
        call: Callable[[str, Callable[[], Answer]], Answer] | None = None,
    ) -> None:
        self._watched = tuple(watched)
        self._on_hung = on_hung
        self._prober = Prober(engine, call=call)
        self._stop = threading.Event()
        self._pending = len(self._watched)
        self._lock = threading.Lock()
        self.first_round = threading.Event()
        if not self._watched:
            self.first_round.set()
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(database, router),
                name=f"multidb-monitor-{database.name}",
                daemon=True,
            )
            for database, router in self._watched
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop probing; a round in progress stops waiting for hung servers."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join()
        self._prober.close()

    def _run(self, database: DatabaseConfig, router: Router) -> None:
        routing = database.routing
        first = True
        while not self._stop.is_set():
            started = time.monotonic()
            answers = self._prober.round(database, routing.connect_timeout_seconds, self._stop)
            if self._stop.is_set():
                return
            report(router, answers[1:], self._on_hung)
            if first:
                first = False
                with self._lock:
                    self._pending -= 1
                    if self._pending == 0:
                        self.first_round.set()
            self._stop.wait(max(0.0, started + routing.check_interval_seconds - time.monotonic()))


def report(
    router: Router,
    replicas: Sequence[Answer],
    on_hung: Callable[[str], None] = lambda name: None,
) -> None:
    """Tell ``router`` what a round found about its replicas; ``on_hung(name)`` for hung ones."""
    for answer in replicas:
        if not answer.answered:
            router.report_unreachable(answer.name, answer.error or "probe failed")
            log.debug("%s: probe of %s: %s", router.database, answer.name, answer.error)
            if answer.hung:
                on_hung(answer.name)
        else:
            applied = None if answer.state is None else answer.state.applied
            router.report_lag(answer.name, answer.lag, applied, measured_at=answer.measured_at)


def _wait(done: threading.Event, deadline: float, stop: threading.Event | None) -> None:
    """Wait for ``done`` until ``deadline``, or until ``stop`` is set."""
    while not done.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (stop is not None and stop.is_set()):
            return
        done.wait(remaining if stop is None else min(remaining, 0.05))
