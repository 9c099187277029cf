"""The lag monitor: one background thread that measures replicas' lag off the query path.

Each database with ``routing.max_lag_seconds`` has its replicas probed at
most once per ``check_interval_seconds``, however many reads there are; the
results go to its :class:`~multidb.router.Router`. A replica that cannot be
reached, or whose replication is stopped or paused, reports unknown lag and
is left out until a later probe finds it caught up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from .probes import probe
from .router import Router

__all__ = ["LagMonitor", "Watched"]

log = logging.getLogger("multidb.routing")


@dataclass(frozen=True, slots=True)
class Watched:
    """One database whose replicas' lag is checked."""

    router: Router
    interval: float


class LagMonitor:
    """Probes the replicas of ``watched`` databases on a daemon thread until stopped."""

    def __init__(
        self,
        watched: Sequence[Watched],
        engine: Callable[[str], Engine],
        run: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self._watched = tuple(watched)
        self._engine = engine
        self._stop = threading.Event()
        self._first_round = threading.Event()
        # ``run`` wraps the thread's work: multidb.aio.run_blocking for async-only drivers.
        target = self._run if run is None else lambda: run(self._run)
        self._thread = threading.Thread(target=target, name="multidb-lag-monitor", daemon=True)

    def start(self, wait: float) -> None:
        """Start probing; wait up to ``wait`` seconds for the first round of measurements."""
        self._thread.start()
        self._first_round.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        due = [0.0] * len(self._watched)
        while not self._stop.is_set():
            now = time.monotonic()
            for i, watched in enumerate(self._watched):
                if due[i] <= now:
                    due[i] = now + watched.interval
                    self._probe(watched.router)
            self._first_round.set()
            self._stop.wait(max(0.0, min(due) - time.monotonic()))

    def _probe(self, router: Router) -> None:
        try:
            with self._engine(router.primary).connect() as connection:
                position = probe(connection, "primary").position
        except Exception as exc:  # the replicas are still measured, less precisely
            log.debug("%s: probe of primary %s failed: %s", router.database, router.primary, exc)
            position = None
        for name in router.replica_names:
            if self._stop.is_set():
                return
            try:
                with self._engine(name).connect() as connection:
                    lag = probe(connection, "replica", position).lag_seconds
            except Exception as exc:  # any failure means the lag is unknown
                log.debug("%s: lag probe of %s failed: %s", router.database, name, exc)
                lag = None
            router.report_lag(name, lag)
