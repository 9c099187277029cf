"""Metrics and traces: a Prometheus collector and OpenTelemetry span attributes.

Both are optional (``pip install 'multidb[prometheus]'``, ``'multidb[otel]'``)
and imported only from here::

    from prometheus_client import REGISTRY
    from multidb.metrics import PrometheusCollector, trace

    REGISTRY.register(PrometheusCollector(dbs))   # scraped with the app's /metrics
    trace(dbs)                                    # spans get db.multidb.* attributes

:class:`PrometheusCollector` reads :meth:`~multidb.Registry.stats` and each
replica's last measured lag at each scrape (no connection is opened):

- ``multidb_sessions_total``, ``multidb_fallbacks_total``,
  ``multidb_error_ejections_total``, ``multidb_lag_ejections_total``,
  ``multidb_lag_probes_total``, ``multidb_causal_waits_total``,
  ``multidb_causal_fallbacks_total``: counters, labels ``database``, ``engine``;
- ``multidb_in_rotation``: 1 when reads may go to the engine now, else 0;
- ``multidb_replica_lag_seconds``: each replica's last measured lag (NaN
  when unknown or never measured).

:func:`trace` sets, on the current span of each statement a routed engine
sends, ``db.multidb.engine``, ``db.multidb.role`` and ``db.multidb.reason``
(see :mod:`multidb.observe`). Nothing is installed until it is called.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .observe import Observer, Routed

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .registry import Registry

__all__ = ["PrometheusCollector", "trace"]

_COUNTERS = (
    ("sessions", "Sessions that used the engine (reads routed to it, writes, pinned)."),
    ("fallbacks", "Reads that went to this primary because no replica was usable."),
    ("error_ejections", "Times the engine was left out after a connection failure."),
    ("lag_ejections", "Times the engine was left out for lag or stopped replication."),
    ("lag_probes", "Lag measurements taken of the engine."),
    ("causal_waits", "Reads that asked this replica whether it had applied a position."),
    ("causal_fallbacks", "Reads that went to this primary because no replica had applied."),
)


class PrometheusCollector:
    """A ``prometheus_client`` custom collector of one registry's routing state."""

    def __init__(self, dbs: Registry) -> None:
        self._dbs = dbs
        self._database = {e.name: e.database for e in dbs.config.engines()}
        self._replicas = [e.name for e in dbs.config.engines() if e.role == "replica"]

    def describe(self) -> list[Metric]:
        """Nothing, so that registering does not make prometheus_client call collect()."""
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._dbs.stats()
        labels = ["database", "engine"]
        for field, documentation in _COUNTERS:
            family = CounterMetricFamily(f"multidb_{field}", documentation, labels=labels)
            for name, row in stats.items():
                family.add_metric([self._database[name], name], getattr(row, field))
            yield family
        rotation = GaugeMetricFamily(
            "multidb_in_rotation", "1 when reads may go to the engine now, else 0.", labels=labels
        )
        for name, row in stats.items():
            rotation.add_metric([self._database[name], name], 1.0 if row.in_rotation else 0.0)
        yield rotation
        lag = GaugeMetricFamily(
            "multidb_replica_lag_seconds",
            "The replica's last measured replication lag; NaN when unknown.",
            labels=labels,
        )
        for name in self._replicas:
            seconds = self._dbs._routers[self._database[name]].lag(name)
            lag.add_metric([self._database[name], name], math.nan if seconds is None else seconds)
        yield lag


def trace(dbs: Registry) -> Observer:
    """Put ``db.multidb.engine``, ``.role`` and ``.reason`` on each routed statement's span.

    The attributes go on the span current when the statement is sent (an
    OpenTelemetry SQLAlchemy instrumentation's statement span, or the
    request's). Returns the :class:`~multidb.observe.Observer`; its
    ``remove()`` stops tracing.
    """
    from opentelemetry import trace as otel

    def annotate(routed: Routed) -> None:
        span = otel.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "db.multidb.engine": routed.engine,
                    "db.multidb.role": routed.role,
                    "db.multidb.reason": routed.reason,
                }
            )

    observer = Observer(dbs, annotate)
    observer.install()
    return observer
