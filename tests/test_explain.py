"""dbs.explain() (SPEC 2): where a session would send a statement, and why; nothing is sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import PostgresCluster
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text

from multidb import (
    Explanation,
    NoReplicaAvailableError,
    Registry,
    RoutingError,
    UnknownNameError,
)

metadata = MetaData()
things = Table("things", metadata, Column("id", Integer, primary_key=True))


def config(tmp_path: Path, **routing: Any) -> dict[str, Any]:
    main = tmp_path / "main.db"
    replica = f"sqlite:///file:{main}?mode=ro&uri=true"
    return {
        "databases": {
            "main": {
                "primary": f"sqlite:///{main}",
                "replicas": {"a": replica, "b": replica},
                "routing": routing,
            },
            "local": f"sqlite:///{tmp_path / 'local.db'}",
        }
    }


@pytest.fixture
def dbs(tmp_path: Path) -> Iterator[Registry]:
    with Registry.from_dict(config(tmp_path)) as registry:
        metadata.create_all(registry.engine("main"))
        yield registry


def test_explain_follows_each_role(dbs: Registry) -> None:
    read = select(things)
    write = insert(things).values(id=1)
    assert dbs.explain("main", write, role="write") == Explanation(
        "main.primary", "write: the primary"
    )
    assert dbs.explain("main", read) == Explanation("main.primary", "write: the primary")
    assert dbs.explain("main", read, role="read").engine in ("main.a", "main.b")
    assert dbs.explain("main", read, role="auto").reason.startswith("SmoothWeightedRoundRobin")
    assert dbs.explain("main", write, role="auto") == Explanation(
        "main.primary", "auto: a statement that is not a read goes to the primary"
    )
    forced = read.execution_options(multidb_role="write")
    assert dbs.explain("main", forced, role="auto").engine == "main.primary"
    assert dbs.explain("local", read, role="read") == Explanation("local.primary", "no replicas")
    assert dbs.explain("main.b", read) == Explanation("main.b", "pinned to main.b (read-only)")


def test_explain_names_the_replica_the_next_read_session_uses_and_does_not_count(
    dbs: Registry,
) -> None:
    before = dbs.stats()
    for _ in range(4):
        explained = dbs.explain("main", select(things), role="read")
        assert explained == dbs.explain("main", select(things), role="read")  # nothing moved
        with dbs.testing.record() as statements, dbs.session("main", role="read") as s:
            s.execute(select(things)).all()
        assert statements.engines == [explained.engine]
    after = dbs.stats()
    assert (
        sum(after[n].sessions for n in ("main.a", "main.b"))
        == sum(before[n].sessions for n in ("main.a", "main.b")) + 4
    )


def test_explain_sends_nothing(dbs: Registry) -> None:
    with dbs.testing.record() as statements:
        dbs.explain("main", text("SELECT 1"), role="read")
        dbs.explain("main", select(things), role="auto")
        dbs.explain("local", None, role="write")
    assert list(statements) == []


def test_explain_reports_fallback_and_its_refusal(tmp_path: Path) -> None:
    with (
        Registry.from_dict(config(tmp_path, max_lag_seconds=5)) as dbs,
        dbs.testing.lag("main.a", 30),
        dbs.testing.lag("main.b", None),
    ):
        assert dbs.explain("main", select(things), role="read") == Explanation(
            "main.primary",
            "fallback: main.a lag up to 30.0s (max 5.0s); main.b lag unknown (max 5.0s)",
        )
    strict = config(tmp_path, max_lag_seconds=5, fallback_to_primary=False)
    with (
        Registry.from_dict(strict) as dbs,
        dbs.testing.lag("main.a", 9),
        dbs.testing.lag("main.b", 9),
        pytest.raises(NoReplicaAvailableError, match=r"routing\.fallback_to_primary is false"),
    ):
        dbs.explain("main", select(things), role="read")


def test_explain_of_none_routes_the_statement_first(dbs: Registry) -> None:
    dbs.route(things, "main")
    assert dbs.explain(None, insert(things).values(id=1), role="write").engine == "main.primary"
    other = Table("other", MetaData(), Column("id", Integer, primary_key=True))
    with pytest.raises(RoutingError, match="no route names the database"):
        dbs.explain(None, select(other), role="read")


def test_explain_refuses_what_session_refuses(dbs: Registry) -> None:
    with pytest.raises(RoutingError, match="unknown role 'reader'"):
        dbs.explain("main", None, role="reader")  # type: ignore[arg-type]
    with pytest.raises(RoutingError, match=r"main\.a is a replica"):
        dbs.explain("main.a", None, role="write")
    with pytest.raises(UnknownNameError, match="did you mean 'main'"):
        dbs.explain("mian", None)


@pytest.mark.postgresql
def test_explain_in_a_causal_scope_names_the_position_a_read_must_see(
    pg_cluster: PostgresCluster,
) -> None:
    standbys = {f"db.{s.name.replace('-', '_')}": s.url() for s in pg_cluster.standbys}
    setup = {
        "databases": {
            "db": {
                "primary": pg_cluster.primary.url(),
                "replicas": {name.split(".")[1]: url for name, url in standbys.items()},
            }
        }
    }
    with Registry.from_dict(setup) as dbs, dbs.causal():
        metadata.create_all(dbs.engine("db"))
        with dbs.session("db", role="write") as s:
            s.execute(text("SELECT 1"))
            s.execute(insert(things).values(id=abs(hash(s)) % 1_000_000))
        with dbs.testing.record() as statements:
            explained = dbs.explain("db", select(things), role="read")
        assert list(statements) == []
        assert explained.engine in standbys
        assert "; causal: " in explained.reason
        assert explained.reason.split()[-1].count("/") == 1  # a WAL position, as 0/3000120
