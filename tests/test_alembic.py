"""Alembic on primaries (SPEC 7): the real ``alembic`` command, run as a user runs it.

Each test writes a project with ``multidb alembic-init`` and runs ``alembic``
in a subprocess; what changed is asked of the servers themselves.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import PostgresCluster, PostgresServer, wait_until

ROOT = Path(__file__).resolve().parent.parent

HEADER = '''"""create widgets

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade(engine_name: str) -> None:
    globals().get("upgrade_" + engine_name, lambda: None)()


def downgrade(engine_name: str) -> None:
    globals().get("downgrade_" + engine_name, lambda: None)()
'''

FUNCTIONS = """

def upgrade_{database}() -> None:
    op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))


def downgrade_{database}() -> None:
    op.drop_table("widgets")
"""


def revision(*databases: str) -> str:
    """A revision script that creates table ``widgets`` in each of ``databases``."""
    return HEADER + "".join(FUNCTIONS.format(database=d) for d in databases)


def run(*argv: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *argv], check=False, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}:\n{result.stderr}")
    return result


def alembic(project: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ini = str(project / "alembic.ini")
    return run("-m", "alembic", "-c", ini, *argv, cwd=project.parent, check=check)


def init_project(tmp_path: Path, config: Path, *databases: str) -> Path:
    """``multidb alembic-init`` a project, with a revision creating widgets in ``databases``."""
    run("-m", "multidb", "alembic-init", "migrations", str(config), cwd=tmp_path)
    project = tmp_path / "migrations"
    if databases:
        (project / "versions" / "0001_widgets.py").write_text(revision(*databases))
    return project


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


@pytest.fixture
def bundled(tmp_path: Path) -> Path:
    """A copy of the bundled SQLite config (main with a read-only replica, local)."""
    shutil.copy(ROOT / "config" / "databases.yaml", tmp_path / "databases.yaml")
    return tmp_path / "databases.yaml"


# -- SQLite ---------------------------------------------------------------------------------


def test_alembic_init_writes_a_project_whose_revisions_upgrade_each_database(
    tmp_path: Path, bundled: Path
) -> None:
    """alembic-init's project: `alembic revision` renders one function pair per database,
    and `upgrade head` runs each database's own function on its primary."""
    project = init_project(tmp_path, bundled)
    assert sorted(p.name for p in project.iterdir()) == [
        "alembic.ini",
        "env.py",
        "script.py.mako",
        "versions",
    ]
    alembic(project, "revision", "-m", "create widgets")
    (script,) = (project / "versions").glob("*.py")
    text = script.read_text()
    for name in ("upgrade_main", "downgrade_main", "upgrade_local", "downgrade_local"):
        assert f"def {name}() -> None:" in text
    script.write_text(
        text.replace(
            "def upgrade_main() -> None:\n    pass",
            "def upgrade_main() -> None:\n"
            '    op.create_table("widgets", sa.Column("id", sa.Integer))',
        )
    )

    alembic(project, "upgrade", "head")

    var = tmp_path / "var"
    assert tables(var / "main.db") == {"alembic_version", "widgets"}
    assert tables(var / "local.db") == {"alembic_version"}


def test_x_database_migrates_only_the_named_database(tmp_path: Path, bundled: Path) -> None:
    project = init_project(tmp_path, bundled, "local")
    alembic(project, "-x", "database=local", "upgrade", "head")
    assert tables(tmp_path / "var" / "local.db") == {"alembic_version", "widgets"}
    assert not (tmp_path / "var" / "main.db").exists()


def test_x_database_with_an_unknown_name_is_refused_naming_the_databases(
    tmp_path: Path, bundled: Path
) -> None:
    project = init_project(tmp_path, bundled, "main")
    result = alembic(project, "-x", "database=mian", "upgrade", "head", check=False)
    assert result.returncode != 0
    assert "unknown database 'mian'; did you mean 'main'? (known: main, local)" in result.stderr
    assert not (tmp_path / "var").exists()


def test_offline_sql_goes_to_stdout_for_one_database_and_to_files_for_several(
    tmp_path: Path, bundled: Path
) -> None:
    project = init_project(tmp_path, bundled, "main")

    one = alembic(project, "-x", "database=main", "upgrade", "head", "--sql")
    assert "CREATE TABLE widgets" in one.stdout
    assert "INSERT INTO alembic_version" in one.stdout

    alembic(project, "upgrade", "head", "--sql")
    assert "CREATE TABLE widgets" in (tmp_path / "main.sql").read_text()
    local = (tmp_path / "local.sql").read_text()
    assert "CREATE TABLE alembic_version" in local
    assert "widgets" not in local
    assert not (tmp_path / "var").exists(), "offline mode connected to a database"


def test_alembic_init_refuses_a_directory_that_is_not_empty(tmp_path: Path, bundled: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "env.py").write_text("# mine\n")
    result = run(
        "-m", "multidb", "alembic-init", "migrations", str(bundled), cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert "migrations: exists and is not an empty directory" in result.stderr
    assert (tmp_path / "migrations" / "env.py").read_text() == "# mine\n"


def test_alembic_init_with_a_broken_config_exits_2_with_its_location(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("databases:\n  main: {primry: sqlite://}\n")
    result = run("-m", "multidb", "alembic-init", "m", "bad.yaml", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("bad.yaml:2:")
    assert not (tmp_path / "m").exists()


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database on the cluster (replicated to the standbys), dropped after."""
    name = f"mig_{uuid.uuid4().hex[:8]}"
    pg_cluster.primary.query(f"CREATE DATABASE {name} OWNER app")
    pg_cluster.wait_caught_up()
    yield name
    pg_cluster.primary.query(f"DROP DATABASE {name} WITH (FORCE)")


def pg_url(server: PostgresServer, database: str, driver: str = "psycopg2") -> str:
    return (
        server.url().replace("postgresql+psycopg2", f"postgresql+{driver}").rsplit("/", 1)[0]
        + f"/{database}"
    )


def write_config(tmp_path: Path, databases: dict[str, Any]) -> Path:
    path = tmp_path / "databases.yaml"
    path.write_text(yaml.safe_dump({"databases": databases}))
    return path


def user_tables(server: PostgresServer, database: str) -> set[str]:
    rows = server.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", admin=False, dbname=database
    )
    return {name for (name,) in rows}


@pytest.mark.postgresql
@pytest.mark.parametrize("driver", ["psycopg2", "asyncpg"])
def test_upgrade_head_creates_the_table_on_the_primary_and_standbys_replay_it(
    tmp_path: Path, pg_cluster: PostgresCluster, pg_database: str, driver: str
) -> None:
    """Sync and async URLs: DDL runs on the primary only; the standbys get it by replication."""
    primary, standbys = pg_cluster.primary, pg_cluster.standbys
    config = write_config(
        tmp_path,
        {
            "app": {
                "primary": pg_url(primary, pg_database, driver),
                "replicas": {
                    s.name.replace("-", "_"): pg_url(s, pg_database, driver) for s in standbys
                },
            }
        },
    )
    project = init_project(tmp_path, config, "app")

    alembic(project, "upgrade", "head")

    assert primary.query("SELECT pg_is_in_recovery()")[0][0] is False
    assert user_tables(primary, pg_database) == {"alembic_version", "widgets"}
    for standby in standbys:
        assert standby.query("SELECT pg_is_in_recovery()")[0][0] is True
        wait_until(
            lambda s=standby: "widgets" in user_tables(s, pg_database),  # type: ignore[misc]
            timeout=10,
            message=f"{standby.name} did not replay CREATE TABLE widgets",
        )


@pytest.mark.postgresql
def test_a_database_whose_primary_url_is_a_standby_refuses_the_run_before_any_ddl(
    tmp_path: Path, pg_cluster: PostgresCluster, pg_database: str
) -> None:
    """`good` comes first and is a real primary: it gets no DDL either, because `bad`'s
    "primary" answers pg_is_in_recovery() = true and the check runs on every target first."""
    primary, standby = pg_cluster.primary, pg_cluster.standbys[0]
    config = write_config(
        tmp_path,
        {"good": pg_url(primary, pg_database), "bad": pg_url(standby, pg_database)},
    )
    project = init_project(tmp_path, config, "good", "bad")

    result = alembic(project, "upgrade", "head", check=False)

    assert result.returncode != 0
    assert (
        "bad.primary: configured as primary but the server is in recovery; refused to run "
        "migrations, no DDL was sent to any database" in result.stderr
    )
    assert user_tables(primary, pg_database) == set()
    assert user_tables(standby, pg_database) == set()

    only_bad = alembic(project, "-x", "database=bad", "upgrade", "head", check=False)
    assert only_bad.returncode != 0
    assert "bad.primary: configured as primary but the server is in recovery" in only_bad.stderr
    assert user_tables(primary, pg_database) == set()
