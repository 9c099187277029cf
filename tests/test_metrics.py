"""Metrics (SPEC 8): a real prometheus_client registry scraped, OpenTelemetry spans exported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import PostgresCluster, wait_until
from sqlalchemy import text

from multidb import Registry
from multidb.metrics import PrometheusCollector, trace


def sqlite_config(tmp_path: Path, **routing: Any) -> dict[str, Any]:
    main = tmp_path / "main.db"
    return {
        "databases": {
            "main": {
                "primary": f"sqlite:///{main}",
                "replicas": {"a": f"sqlite:///file:{main}?mode=ro&uri=true"},
                "routing": routing,
            },
            "local": f"sqlite:///{tmp_path / 'local.db'}",
        }
    }


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[Registry]:
    with Registry.from_dict(sqlite_config(tmp_path)) as registry:
        with registry.session("main", role="write") as s:  # creates the file the replica opens
            s.execute(text("CREATE TABLE t (id INTEGER)"))
        yield registry


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(sample name, engine) -> value, from the exposition text a Prometheus server reads."""
    text_format = generate_latest(registry).decode()
    return {
        (sample.name, sample.labels["engine"]): sample.value
        for family in text_string_to_metric_families(text_format)
        for sample in family.samples
    }


def test_prometheus_collector_counters_move_with_the_reads_routed(dbs: Registry) -> None:
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(dbs))
    before = scrape(registry)
    for _ in range(3):
        with dbs.session("main", role="read") as s:
            s.execute(text("SELECT 1"))
    after = scrape(registry)

    sessions = ("multidb_sessions_total", "main.a")
    assert after[sessions] == before[sessions] + 3
    assert after["multidb_in_rotation", "main.a"] == 1.0
    assert after["multidb_in_rotation", "local.primary"] == 1.0
    assert after["multidb_replica_lag_seconds", "main.a"] == 0.0  # health probes measure it
    names = {name for name, _ in after}
    for counter in (
        "sessions",
        "fallbacks",
        "error_ejections",
        "lag_ejections",
        "lag_probes",
        "causal_waits",
        "causal_fallbacks",
    ):
        assert f"multidb_{counter}_total" in names


def test_prometheus_collector_shows_a_lagging_replica_out_of_rotation_and_the_fallbacks(
    tmp_path: Path,
) -> None:
    with Registry.from_dict(sqlite_config(tmp_path, max_lag_seconds=5)) as dbs:
        registry = CollectorRegistry()
        registry.register(PrometheusCollector(dbs))
        # The replica opens the primary's file: it must exist before the first probe,
        # which races the primary's probe (that would create it) otherwise.
        with dbs.session("main", role="write") as s:
            s.execute(text("CREATE TABLE t (id INTEGER)"))
        with dbs.session("main", role="read") as s:  # starts the health monitor
            s.execute(text("SELECT 1"))
        wait_until(
            lambda: scrape(registry)["multidb_replica_lag_seconds", "main.a"] == 0.0,
            timeout=10,
            message="main.a's lag never scraped as 0",
        )

        before = scrape(registry)
        with dbs.testing.lag("main.a", 30):
            with dbs.session("main", role="read") as s:
                s.execute(text("SELECT 1"))
            during = scrape(registry)

        def moved(sample: str, engine: str) -> float:
            return during[sample, engine] - before[sample, engine]

        assert during["multidb_replica_lag_seconds", "main.a"] == 30.0
        assert during["multidb_in_rotation", "main.a"] == 0.0
        assert moved("multidb_lag_ejections_total", "main.a") == 1.0
        assert moved("multidb_fallbacks_total", "main.primary") == 1.0
        assert scrape(registry)["multidb_in_rotation", "main.a"] == 1.0  # restored


@pytest.mark.postgresql
def test_prometheus_lag_gauge_reads_the_lag_measured_on_real_standbys(
    pg_cluster: PostgresCluster,
) -> None:
    config = {
        "databases": {
            "db": {
                "primary": pg_cluster.primary.url(),
                "replicas": {s.name.replace("-", "_"): s.url() for s in pg_cluster.standbys},
                "routing": {"max_lag_seconds": 5, "check_interval_seconds": 0.2},
            }
        }
    }
    with Registry.from_dict(config) as dbs:
        registry = CollectorRegistry()
        registry.register(PrometheusCollector(dbs))
        with dbs.session("db", role="read") as s:
            assert s.execute(text("SELECT pg_is_in_recovery()")).scalar() is True
        wait_until(
            lambda: all(
                scrape(registry)["multidb_replica_lag_seconds", f"db.{s.name.replace('-', '_')}"]
                == 0.0
                for s in pg_cluster.standbys
            ),
            timeout=10,
            message="standbys' lag never scraped as 0",
        )
        samples = scrape(registry)
        assert samples["multidb_lag_probes_total", "db.pg_standby1"] >= 1
        assert samples["multidb_in_rotation", "db.pg_standby1"] == 1.0


def test_trace_puts_engine_role_and_reason_on_each_statements_span(dbs: Registry) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    observer = trace(dbs)
    try:
        with tracer.start_as_current_span("read"), dbs.session("main", role="read") as s:
            s.execute(text("SELECT 1"))
        with tracer.start_as_current_span("write"), dbs.session("main", role="write") as s:
            s.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        observer.remove()
    with tracer.start_as_current_span("after"), dbs.session("main", role="read") as s:
        s.execute(text("SELECT 1"))

    spans = {span.name: dict(span.attributes or {}) for span in exporter.get_finished_spans()}
    assert spans["read"] == {
        "db.multidb.engine": "main.a",
        "db.multidb.role": "read",
        "db.multidb.reason": "SmoothWeightedRoundRobin among main.a",
    }
    assert spans["write"] == {
        "db.multidb.engine": "main.primary",
        "db.multidb.role": "write",
        "db.multidb.reason": "write: the primary",
    }
    assert spans["after"] == {}, "trace() left something installed after remove()"
    engine = dbs.engine("main.a")
    assert not engine.dispatch.before_cursor_execute


def test_nothing_is_imported_or_installed_unless_asked_for(tmp_path: Path) -> None:
    """A registry in use imports neither prometheus_client nor opentelemetry, and adds no
    engine listener."""
    code = f"""
import sys, multidb
from sqlalchemy import text
dbs = multidb.Registry.from_dict({sqlite_config(tmp_path)!r})
with dbs.session("local") as s:
    s.execute(text("SELECT 1"))
assert not dbs.engine("local").dispatch.before_cursor_execute
bad = [m for m in sys.modules if m.startswith(("prometheus_client", "opentelemetry"))]
assert not bad, bad
"""
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
