"""The pytest plugin (SPEC 8), used by an inner test project run in a subprocess by pytester.

The inner run loads the plugin through its ``pytest11`` entry point, as an
application's test suite would.
"""

from __future__ import annotations

import pytest
import yaml
from servers import PostgresCluster

pytest_plugins = ["pytester"]

INNER_TESTS = """
import pytest
import contextlib

from sqlalchemy import insert, select, text, Table, Column, Integer, MetaData

notes = Table("plugin_notes", MetaData(), Column("id", Integer, primary_key=True))


@pytest.fixture(scope="session", autouse=True)
def schema(_multidb_session_registry):
    notes.metadata.create_all(_multidb_session_registry.engine("db"))


def test_recorder_sees_the_read_go_to_a_replica(multidb_registry, multidb_recorder):
    with multidb_registry.session("db", role="read") as s:
        s.execute(select(notes)).all()
    (statement,) = multidb_recorder
    assert statement.role == "read"
    assert statement.engine in REPLICAS


def test_lag_sends_reads_to_the_primary(multidb_registry, multidb_recorder):
    with contextlib.ExitStack() as stack:
        for replica in REPLICAS:
            stack.enter_context(multidb_registry.testing.lag(replica, 60))
        with multidb_registry.session("db", role="read") as s:
            s.execute(select(notes)).all()
    assert multidb_recorder.engines == ["db.primary"]
    assert multidb_recorder[0].reason.startswith("fallback: ")


def test_mirrored_write_is_visible_to_reads(multidb_registry):
    with multidb_registry.session("db", role="write") as s:
        s.execute(insert(notes).values(id=1))
    with multidb_registry.session("db", role="read") as s:
        assert s.scalars(select(notes.c.id)).all() == [1]


def test_and_rolled_back_before_the_next_test(multidb_registry):
    with multidb_registry.session("db", role="read") as s:
        assert s.scalars(select(notes.c.id)).all() == []
"""


def run_inner(pytester: pytest.Pytester, config: dict[str, object], replicas: list[str]) -> None:
    (pytester.path / "databases.yaml").write_text(yaml.safe_dump(config))
    pytester.makepyfile(test_inner=f"REPLICAS = {replicas!r}\n" + INNER_TESTS)
    result = pytester.runpytest_subprocess(
        "--multidb-config", "databases.yaml", "--multidb-mirror", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=4)


def test_plugin_on_sqlite(pytester: pytest.Pytester) -> None:
    main = pytester.path / "main.db"
    config: dict[str, object] = {
        "databases": {
            "db": {
                "primary": f"sqlite:///{main}",
                "replicas": {"a": f"sqlite:///file:{main}?mode=ro&uri=true"},
                "routing": {"max_lag_seconds": 5},
            }
        }
    }
    run_inner(pytester, config, ["db.a"])


@pytest.mark.postgresql
def test_plugin_on_postgresql(pytester: pytest.Pytester, pg_cluster: PostgresCluster) -> None:
    replicas = {s.name.replace("-", "_"): s.url() for s in pg_cluster.standbys}
    config: dict[str, object] = {
        "databases": {
            "db": {
                "primary": pg_cluster.primary.url(),
                "replicas": replicas,
                "routing": {"max_lag_seconds": 5},
            }
        }
    }
    run_inner(pytester, config, [f"db.{name}" for name in replicas])


def test_plugin_options_are_listed_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--multidb-config=PATH*", "*--multidb-mirror*"])


def test_config_from_the_ini_file_is_taken_relative_to_it(pytester: pytest.Pytester) -> None:
    (pytester.path / "conf").mkdir()
    (pytester.path / "conf" / "dbs.yaml").write_text("databases:\n  solo: sqlite://\n")
    pytester.makeini("[pytest]\nmultidb_config = conf/dbs.yaml\n")
    pytester.makepyfile(
        test_ini=(
            "def test_it(multidb_registry):\n    assert multidb_registry.databases == ('solo',)\n"
        )
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
