"""A read session cannot write: hostile write attempts on every engine a read session lands on.

Each scenario runs at least 50 attempts (textual SQL crafted to end or switch
off the read-only mode, functions that write or lock, and API paths:
``connection()``, ``exec_driver_sql``, execution options, explicit binds,
``commit()``). After each one the primary is read for the attempt's marker
(0 writes), a write session on the same pool must still work, the read pool's
connection must still be read-only, and the server must show no lock left held.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servers import MariaDBCluster, PostgresCluster
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from multidb import ReadOnlyError, Registry

Step = str | Callable[[Session, "Scenario", str], Any]
Attack = tuple[str, list[Step]]

# -- the attacks ------------------------------------------------------------------------------

INS = "INSERT INTO {t} (marker) VALUES ('{m}')"

COMMON: list[Attack] = [
    ("insert", [INS]),
    ("insert-lower", ["insert into {t} (marker) values ('{m}')"]),
    ("insert-comment", ["/* read */ " + INS]),
    ("insert-line-comment", ["-- read\n" + INS]),
    ("select-then-insert", ["SELECT 1; " + INS]),
    ("select-commit-insert", ["SELECT 1; COMMIT; " + INS]),
    ("commit-then-insert", ["COMMIT", INS]),
    ("rollback-then-insert", ["ROLLBACK", INS]),
    ("begin-then-insert", ["BEGIN", INS]),
    ("start-transaction", ["START TRANSACTION", INS]),
    ("set-transaction-rw", ["SET TRANSACTION READ WRITE", INS]),
    ("commit-set-rw", ["COMMIT", "SET TRANSACTION READ WRITE", INS]),
    ("cte-insert", ["WITH x AS (SELECT 1 AS one) " + INS + " "]),
    ("update", ["UPDATE {t} SET marker = '{m}'"]),
    ("delete", ["DELETE FROM {t}"]),
    ("for-update", ["SELECT * FROM {t} FOR UPDATE"]),
    ("create-table", ["CREATE TABLE {t}_x (id int)"]),
    ("drop-table", ["DROP TABLE {t}"]),
    ("alter-table", ["ALTER TABLE {t} ADD COLUMN z int"]),
    ("rename-table", ["ALTER TABLE {t} RENAME TO {t}_r"]),
    ("truncate", ["TRUNCATE TABLE {t}"]),
    ("replace-into", ["REPLACE INTO {t} (marker) VALUES ('{m}')"]),
    ("select-into", ["SELECT * INTO {t}_copy FROM {t}"]),
    ("executable-comment", ["/*! " + INS + " */"]),
    ("mariadb-executable-comment", ["/*M!100000 " + INS + " */"]),
    ("nested-comment", ["/* /* */ SELECT 1 */ ; " + INS]),
    ("backslash-literal", ["SELECT '\\'; " + INS + " -- '"]),
    ("savepoint-commit", ["SAVEPOINT s1", "COMMIT", INS]),
    ("release-commit", ["SAVEPOINT s1", "RELEASE SAVEPOINT s1", "COMMIT", INS]),
    ("prepare-execute", ["PREPARE p1 AS " + INS, "EXECUTE p1"]),
    ("call-procedure", ["CALL {t}_proc('{m}')"]),
    ("empty-then-insert", [";" + INS]),
    ("lock-table", ["LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE"]),
    ("set-autocommit", ["SET autocommit = 1", INS]),
    (
        "merge",
        [
            "MERGE INTO {t} USING {t} s ON false WHEN NOT MATCHED THEN INSERT (marker) "
            "VALUES ('{m}')"
        ],
    ),
]


def _core_insert(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(insert(sc.table).values(marker=m))


def _core_update(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(update(sc.table).values(marker=m))


def _core_delete(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(delete(sc.table))


def _core_executemany(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(insert(sc.table), [{"marker": m}, {"marker": m}])


def _core_cte(s: Session, sc: Scenario, m: str) -> Any:
    cte = insert(sc.table).values(marker=m).returning(sc.table.c.id).cte("w")
    return s.execute(select(cte.c.id))


def _core_suffix_into(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(select(sc.table.c.id).suffix_with(f"INTO {sc.table.name}_into"))


def _driver_sql(s: Session, sc: Scenario, m: str) -> Any:
    return s.connection().exec_driver_sql(sc.sql(INS, m))


def _commit_then_insert(s: Session, sc: Scenario, m: str) -> Any:
    s.execute(text("SELECT 1"))
    s.commit()
    return s.execute(text(sc.sql(INS, m)))


def _option_off(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(text(sc.sql(INS, m)), execution_options={"multidb_read_only": False})


def _connection_option_off(s: Session, sc: Scenario, m: str) -> Any:
    connection = s.connection().execution_options(multidb_read_only=False)
    return connection.exec_driver_sql(sc.sql(INS, m))


def _autocommit_function(s: Session, sc: Scenario, m: str) -> Any:
    connection = s.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    return connection.exec_driver_sql(sc.sql("SELECT {t}_fn('{m}')", m))


def _read_role_option(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(text(sc.sql(INS, m)).execution_options(multidb_role="read"))


def _bind_connection(s: Session, sc: Scenario, m: str) -> Any:
    connection = s.connection(bind_arguments={"bind": sc.primary_engine})
    return connection.exec_driver_sql(sc.sql(INS, m))


def _bind_execute(s: Session, sc: Scenario, m: str) -> Any:
    return s.execute(text(sc.sql(INS, m)), bind_arguments={"bind": sc.primary_engine})


def _rollback_then_insert(s: Session, sc: Scenario, m: str) -> Any:
    s.execute(text("SELECT 1"))
    s.rollback()
    return s.connection().exec_driver_sql(sc.sql(INS, m))


API: list[Attack] = [
    ("core-insert", [_core_insert]),
    ("core-update", [_core_update]),
    ("core-delete", [_core_delete]),
    ("core-executemany", [_core_executemany]),
    ("core-cte-insert", [_core_cte]),
    ("core-suffix-into", [_core_suffix_into]),
    ("exec-driver-sql", [_driver_sql]),
    ("commit-api-then-insert", [_commit_then_insert]),
    ("rollback-api-then-insert", [_rollback_then_insert]),
    ("execution-option-off", [_option_off]),
    ("connection-option-off", [_connection_option_off]),
    ("autocommit-function", [_autocommit_function]),
    ("read-role-option", [_read_role_option]),
    ("explicit-bind-connection", [_bind_connection]),
    ("explicit-bind-execute", [_bind_execute]),
]

POSTGRESQL: list[Attack] = [
    ("end-then-insert", ["END", INS]),
    ("abort-then-insert", ["ABORT", INS]),
    (
        "session-characteristics-rw",
        ["SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "COMMIT", INS],
    ),
    ("default-ro-off", ["SET default_transaction_read_only = off", "COMMIT", INS]),
    ("set-local-rw", ["SET LOCAL transaction_read_only = off", INS]),
    (
        "set-config-default",
        ["SELECT set_config('default_transaction_read_only', 'off', false)", "COMMIT", INS],
    ),
    ("set-config-quoted", ["SELECT \"set_config\"('transaction_read_only', 'off', true)", INS]),
    (
        "set-config-qualified",
        ["SELECT pg_catalog.set_config('transaction_read_only', 'off', true)", INS],
    ),
    ("reset-all", ["RESET ALL", "COMMIT", INS]),
    ("cte-data-modifying", ["WITH w AS (" + INS + " RETURNING id) SELECT * FROM w"]),
    ("cte-update", ["WITH w AS (UPDATE {t} SET marker = '{m}' RETURNING id) SELECT 1"]),
    ("function-write", ["SELECT {t}_fn('{m}')"]),
    ("commit-function-write", ["COMMIT", "SELECT {t}_fn('{m}')"]),
    ("do-block", ["DO $$ BEGIN " + INS + "; END $$"]),
    ("dollar-quote-hide", ["SELECT $$ a $$; " + INS]),
    ("escape-string", ["SELECT E'\\''; " + INS + " -- '"]),
    ("advisory-lock", ["SELECT pg_advisory_lock(4242)"]),
    ("advisory-lock-quoted", ['SELECT "pg_advisory_lock"(4242)']),
    ("advisory-lock-qualified", ["SELECT pg_catalog.pg_try_advisory_lock(4242)"]),
    ("advisory-lock-in-function", ["SELECT {t}_lock()"]),
    ("function-unsets-read-only", ["SELECT {t}_unset()", "COMMIT", INS]),
    ("function-unsets-then-function", ["SELECT {t}_unset()", "COMMIT", "SELECT {t}_fn('{m}')"]),
    ("nextval", ["SELECT nextval('{t}_id_seq')"]),
    ("insert-on-conflict", [INS + " ON CONFLICT DO NOTHING"]),
    ("explain-analyze", ["EXPLAIN ANALYZE " + INS]),
    ("copy", ["COPY {t} (marker) FROM PROGRAM 'echo {m}'"]),
    ("prepare-transaction", ["PREPARE TRANSACTION 'x'", INS]),
    ("discard-all", ["DISCARD ALL", INS]),
    ("listen", ["LISTEN {t}"]),
    ("set-role", ["SET ROLE NONE", INS]),
    ("session-authorization", ["SET SESSION AUTHORIZATION DEFAULT", INS]),
]

MARIADB: list[Attack] = [
    ("rename-table-mysql", ["RENAME TABLE {t} TO {t}_r"]),
    ("session-rw", ["SET SESSION TRANSACTION READ WRITE", "COMMIT", INS]),
    ("tx-read-only-var", ["SET @@session.tx_read_only = 0", "COMMIT", INS]),
    ("tx-read-only-set", ["SET SESSION tx_read_only = 0", INS]),
    ("set-statement", ["SET STATEMENT tx_read_only = 0 FOR " + INS]),
    ("start-rw", ["START TRANSACTION READ WRITE", INS]),
    ("commit-call", ["COMMIT", "CALL {t}_proc('{m}')"]),
    ("rollback-exec-comment", ["ROLLBACK", "/*! " + INS + " */"]),
    ("start-exec-comment", ["START TRANSACTION", "/*!50000 " + INS + " */"]),
    ("versioned-comment", ["SELECT 1 /*!50000 , (SELECT {t}_fn('{m}')) */"]),
    ("hash-comment", ["SELECT 1 # '\n; " + INS + " -- '"]),
    ("dash-no-space", ["SELECT 1 --1 ; " + INS]),
    ("function-write", ["SELECT {t}_fn('{m}')"]),
    ("do-function", ["DO {t}_fn('{m}')"]),
    ("get-lock", ["SELECT GET_LOCK('{t}', 0)"]),
    ("get-lock-in-function", ["SELECT {t}_lock()"]),
    ("lock-tables", ["LOCK TABLES {t} WRITE"]),
    ("handler", ["HANDLER {t} OPEN"]),
    ("insert-ignore", ["INSERT IGNORE INTO {t} (marker) VALUES ('{m}')"]),
    ("select-into-outfile", ["SELECT marker INTO OUTFILE '/tmp/{m}' FROM {t}"]),
    ("select-into-var", ["SELECT 1 INTO @x"]),
    ("prepare-from", ["PREPARE p2 FROM 'INSERT INTO {t} (marker) VALUES (1)'", "EXECUTE p2"]),
    ("xa-start", ["XA START 'x'", INS]),
    ("flush-tables", ["FLUSH TABLES WITH READ LOCK"]),
    ("use-database", ["USE mysql"]),
    ("commit-and-chain", ["COMMIT AND CHAIN", INS]),
    ("begin-work", ["BEGIN WORK", INS]),
    ("lock-in-share-mode", ["SELECT * FROM {t} LOCK IN SHARE MODE"]),
    ("on-duplicate", [INS + " ON DUPLICATE KEY UPDATE marker = '{m}'"]),
    ("load-data", ["LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {t} (marker)"]),
]

SQLITE: list[Attack] = [
    ("query-only-off", ["PRAGMA query_only = OFF", INS]),
    ("query-only-call", ["PRAGMA query_only(0)", INS]),
    ("query-only-schema", ["PRAGMA main.query_only = 0", INS]),
    (
        "query-only-cte",
        ["PRAGMA query_only = OFF", "WITH x AS (SELECT 1) INSERT INTO {t} (marker) VALUES ('{m}')"],
    ),
    ("attach-rw", ["ATTACH 'file:{db}?mode=rw' AS w", "INSERT INTO w.{t} (marker) VALUES ('{m}')"]),
    ("attach-plain", ["ATTACH '{db}' AS w2", "INSERT INTO w2.{t} (marker) VALUES ('{m}')"]),
    ("begin-immediate", ["BEGIN IMMEDIATE", INS]),
    ("end-transaction", ["END TRANSACTION", INS]),
    ("insert-or-replace", ["INSERT OR REPLACE INTO {t} (marker) VALUES ('{m}')"]),
    ("vacuum-into", ["VACUUM INTO '{db}.copy'"]),
    ("vacuum", ["VACUUM"]),
    ("reindex", ["REINDEX"]),
    ("analyze", ["ANALYZE"]),
    ("temp-table", ["CREATE TEMP TABLE {t}_tmp (x)", "INSERT INTO {t}_tmp VALUES (1)"]),
    ("writable-schema", ["PRAGMA writable_schema = ON"]),
    ("user-version", ["PRAGMA user_version = 7"]),
    ("journal-mode", ["PRAGMA journal_mode = DELETE"]),
    ("detach-main", ["DETACH main"]),
    ("upsert", [INS + " ON CONFLICT DO NOTHING"]),
]


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class Scenario:
    """Where read sessions land, and how to check the primary and the server afterwards."""

    name: str
    registry: Registry
    read_name: str  # what dbs.session(read_name, role="read") means here
    write_name: str  # the database whose write session shares the attacked primary pool
    table: Table
    dialect: str
    count: Callable[[str], int]  # rows with a marker, read on the primary
    locks_held: Callable[[], int]  # locks the read server shows held (advisory, table)
    read_only_now: Callable[[Session], bool]  # a later read session's connection is read-only
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def primary_engine(self) -> Any:
        return self.registry.engine(self.write_name)

    def sql(self, template: str, marker: str) -> str:
        return template.format(t=self.table.name, m=marker, **self.extra)


metadata = MetaData()


def _table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("marker", String(64)),
        extend_existing=True,
    )


def _pool(url: str) -> dict[str, Any]:
    return {"url": url, "options": {"pool_size": 1, "max_overflow": 0}}


def _pg_setup(cluster: PostgresCluster, table: str) -> None:
    p = cluster.primary
    for sql in [
        f"DROP TABLE IF EXISTS {table} CASCADE",
        f"CREATE TABLE {table} (id serial PRIMARY KEY, marker varchar(64))",
        f"CREATE OR REPLACE FUNCTION {table}_fn(m text) RETURNS int LANGUAGE plpgsql AS "
        f"$$ BEGIN INSERT INTO {table} (marker) VALUES (m); RETURN 1; END $$",
        f"CREATE OR REPLACE FUNCTION {table}_lock() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_advisory_lock(4343); RETURN 1; END $$",
        f"CREATE OR REPLACE FUNCTION {table}_unset() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); "
        "RETURN 1; END $$",
        f"CREATE OR REPLACE PROCEDURE {table}_proc(m text) LANGUAGE sql AS "
        f"$$ INSERT INTO {table} (marker) VALUES (m) $$",
    ]:
        p.query(sql, admin=False)
    cluster.wait_caught_up()


def _pg_scenario(cluster: PostgresCluster, name: str, where: str) -> Scenario:
    table = f"atk_{name}"
    _pg_setup(cluster, table)
    primary = cluster.primary
    replicas: dict[str, Any] = {}
    read_name = "db"
    database: dict[str, Any] = {"primary": _pool(primary.url())}
    if where == "standby":
        replicas = {"s1": _pool(cluster.standbys[0].url())}
        server = cluster.standbys[0]
    elif where == "fallback":
        replicas = {"s1": {**_pool(cluster.standbys[0].url()), "weight": 0}}
        server = primary
    elif where == "pinned":
        read_name = "db.primary"
        server = primary
    else:  # a "replica" URL that points at the writable primary
        replicas = {"w": _pool(primary.url())}
        server = primary
    if replicas:
        database["replicas"] = replicas
    registry = Registry.from_dict({"databases": {"db": database}})

    def count(marker: str) -> int:
        return int(
            primary.query(f"SELECT count(*) FROM {table} WHERE marker = %s", [marker], admin=False)[
                0
            ][0]
        )

    def locks() -> int:
        return int(
            server.query(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " OR (locktype = 'relation'"
                f" AND relation = to_regclass('{table}') AND mode <> 'AccessShareLock')",
                dbname="app",
            )[0][0]
        )

    def read_only(s: Session) -> bool:
        return s.execute(text("SHOW transaction_read_only")).scalar() == "on"

    return Scenario(
        f"pg-{name}",
        registry,
        read_name,
        "db",
        _table(table),
        "postgresql",
        count,
        locks,
        read_only,
    )


def _maria_scenario(cluster: MariaDBCluster, name: str, where: str) -> Scenario:
    table = f"atk_{name}"
    primary = cluster.primary
    for sql in [
        f"DROP TABLE IF EXISTS app.{table}",
        f"CREATE TABLE app.{table} (id int AUTO_INCREMENT PRIMARY KEY, marker varchar(64))",
        f"DROP FUNCTION IF EXISTS app.{table}_fn",
        f"CREATE DEFINER=CURRENT_USER FUNCTION app.{table}_fn(m varchar(64)) RETURNS int "
        "DETERMINISTIC MODIFIES SQL DATA SQL SECURITY INVOKER BEGIN "
        f"INSERT INTO app.{table} (marker) VALUES (m); RETURN 1; END",
        f"DROP FUNCTION IF EXISTS app.{table}_lock",
        f"CREATE DEFINER=CURRENT_USER FUNCTION app.{table}_lock() RETURNS int DETERMINISTIC NO SQL "
        f"SQL SECURITY INVOKER RETURN GET_LOCK('{table}_f', 0)",
        f"DROP PROCEDURE IF EXISTS app.{table}_proc",
        f"CREATE DEFINER=CURRENT_USER PROCEDURE app.{table}_proc(m varchar(64)) "
        f"SQL SECURITY INVOKER INSERT INTO app.{table} (marker) VALUES (m)",
    ]:
        primary.query(sql)
    cluster.wait_caught_up()
    database: dict[str, Any] = {"primary": _pool(primary.url())}
    read_name = "db"
    if where == "replica":
        database["replicas"] = {"r1": _pool(cluster.replicas[0].url())}
        server = cluster.replicas[0]
    elif where == "pinned":
        read_name = "db.primary"
        server = primary
    else:  # a "replica" URL that points at the writable primary
        database["replicas"] = {"w": _pool(primary.url())}
        server = primary
    registry = Registry.from_dict({"databases": {"db": database}})

    def count(marker: str) -> int:
        return int(
            primary.query(f"SELECT count(*) FROM app.{table} WHERE marker = %s", [marker])[0][0]
        )

    def locks() -> int:
        rows = server.query(f"SELECT IS_USED_LOCK('{table}'), IS_USED_LOCK('{table}_f')")
        return sum(1 for value in rows[0] if value is not None)

    def read_only(s: Session) -> bool:
        # A READ ONLY transaction shows in no variable: ask the server to write and expect a no.
        cursor = s.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(f"INSERT INTO {table} (marker) VALUES ('probe')")
        except Exception as exc:
            return "READ ONLY" in str(exc) or "read-only" in str(exc)
        finally:
            cursor.close()
        return False

    return Scenario(
        f"maria-{name}", registry, read_name, "db", _table(table), "mysql", count, locks, read_only
    )


def _sqlite_scenario(tmp: Path, database: str) -> Scenario:
    root = Path(__file__).resolve().parent.parent / "config"
    shutil.copy(root / "databases.yaml", tmp / "databases.yaml")
    registry = Registry.from_yaml(tmp / "databases.yaml")
    table = _table(f"atk_sqlite_{database}")
    primary_file = tmp / "var" / ("main.db" if database == "main" else "local.db")
    table.create(registry.engine(database), checkfirst=True)
    with registry.session(database, role="write") as s:  # the file now exists
        s.execute(text("SELECT 1"))

    def count(marker: str) -> int:
        import sqlite3

        with sqlite3.connect(primary_file) as raw:
            return int(
                raw.execute(
                    f"SELECT count(*) FROM {table.name} WHERE marker = ?", (marker,)
                ).fetchone()[0]
            )

    def read_only(s: Session) -> bool:
        return bool(s.execute(text("PRAGMA query_only")).scalar())

    return Scenario(
        f"sqlite-{database}",
        registry,
        database,
        database,
        table,
        "sqlite",
        count,
        lambda: 0,
        read_only,
        {"db": str(primary_file)},
    )


def _attacks(dialect: str) -> list[Attack]:
    own = {"postgresql": POSTGRESQL, "mysql": MARIADB, "sqlite": SQLITE}[dialect]
    return COMMON + API + own


SCENARIOS = [
    pytest.param("pg-standby", marks=pytest.mark.postgresql),
    pytest.param("pg-fallback", marks=pytest.mark.postgresql),
    pytest.param("pg-pinned", marks=pytest.mark.postgresql),
    pytest.param("pg-writable-replica", marks=pytest.mark.postgresql),
    pytest.param("maria-replica", marks=pytest.mark.mariadb),
    pytest.param("maria-pinned", marks=pytest.mark.mariadb),
    pytest.param("maria-writable-replica", marks=pytest.mark.mariadb),
    pytest.param("sqlite-main"),
    pytest.param("sqlite-local"),
]


@pytest.fixture(params=SCENARIOS)
def scenario(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scenario]:
    name: str = request.param
    kind, _, where = name.partition("-")
    if kind == "pg":
        built = _pg_scenario(request.getfixturevalue("pg_cluster"), where.replace("-", "_"), where)
    elif kind == "maria":
        cluster = request.getfixturevalue("mariadb_cluster")
        built = _maria_scenario(cluster, where.replace("-", "_"), where)
    else:
        built = _sqlite_scenario(tmp_path, where)
    with built.registry:
        yield built


FIGURES: dict[str, tuple[int, int, int]] = {}  # scenario -> (attempts, writes, refused up front)


def test_no_write_attempt_writes_through_a_read_session(scenario: Scenario) -> None:
    attacks = _attacks(scenario.dialect)
    assert len(attacks) >= 50
    writes: list[str] = []
    refused = 0
    for index, (label, steps) in enumerate(attacks):
        marker = f"attack-{index}"
        try:
            with scenario.registry.session(scenario.read_name, role="read") as s:
                for step in steps:
                    try:
                        if isinstance(step, str):
                            s.execute(text(scenario.sql(step, marker)))
                        else:
                            step(s, scenario, marker)
                    except ReadOnlyError:
                        refused += 1  # nothing was sent; the attacker goes on
                    except Exception:
                        s.rollback()  # the server refused; the attacker goes on
        except Exception:
            pass
        if scenario.count(marker):
            writes.append(label)
        # A write session on the same primary pool still works ...
        with scenario.registry.session(scenario.write_name, role="write") as w:
            w.execute(insert(scenario.table).values(marker=f"control-{index}"))
        # ... the read pool's connection is still read-only, and no lock is left held.
        with scenario.registry.session(scenario.read_name, role="read") as s:
            assert scenario.read_only_now(s), label
            assert s.execute(select(scenario.table.c.id).limit(1)).all() is not None
        assert scenario.locks_held() == 0, label
    FIGURES[scenario.name] = (len(attacks), len(writes), refused)
    print(
        f"{scenario.name}: {len(attacks)} attempts, {len(writes)} writes, "
        f"{refused} steps refused before sending"
    )
    assert writes == []
    for index in range(len(attacks)):
        assert scenario.count(f"control-{index}") == 1


@pytest.mark.parametrize(
    ("kind", "pid_sql"),
    [
        pytest.param("pg", "SELECT pg_backend_pid()", marks=pytest.mark.postgresql),
        pytest.param("maria", "SELECT CONNECTION_ID()", marks=pytest.mark.mariadb),
    ],
)
@pytest.mark.parametrize("name", ["db", "db.primary"])
def test_reset_after_an_unknown_function_keeps_the_connection(
    kind: str, pid_sql: str, name: str, request: pytest.FixtureRequest
) -> None:
    """One round trip releases what a function may have locked; the connection stays pooled."""
    cluster = request.getfixturevalue("pg_cluster" if kind == "pg" else "mariadb_cluster")
    database = {
        "primary": _pool(cluster.primary.url()),
        "replicas": {"r": _pool(cluster.replicas[0].url())},
    }
    with Registry.from_dict({"databases": {"db": database}}) as dbs:
        pids = []
        for _ in range(3):
            with dbs.session(name, role="read") as s:
                pids.append(s.execute(text(pid_sql)).scalar())  # an unknown function: reset
        assert len(set(pids)) == 1


def _statements(kind: str, cluster: Any, pid: int) -> str:
    """What the replica ran on connection ``pid``, as the server saw it: PostgreSQL shows the
    last statement; MariaDB's general log (switched on by the test) all of them."""
    server = cluster.replicas[0]
    if kind == "pg":
        rows = server.query("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
    else:
        rows = server.query("SELECT argument FROM mysql.general_log WHERE thread_id = %s", [pid])
    return "\n".join(str(row[0]) for row in rows)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("pg", marks=pytest.mark.postgresql),
        pytest.param("maria", marks=pytest.mark.mariadb),
    ],
)
def test_a_read_with_bound_parameters_is_not_followed_by_a_reset(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A placeholder (psycopg's and PyMySQL's ``%(name)s``) or a subquery is not a function
    call: the session ends with its rollback, no reset round trip; an unknown function does
    cost one. Read on the replica, from the statements its connection ran."""
    cluster = request.getfixturevalue("pg_cluster" if kind == "pg" else "mariadb_cluster")
    database = {
        "primary": _pool(cluster.primary.url()),
        "replicas": {"r": _pool(cluster.replicas[0].url())},
    }
    if kind == "maria":
        cluster.replicas[0].query("SET GLOBAL log_output = 'TABLE'")
        cluster.replicas[0].query("SET GLOBAL general_log = ON")
    try:
        with Registry.from_dict({"databases": {"db": database}}) as dbs:
            seen = {}
            for sql in ["SELECT :a + (SELECT 1) + abs(:b)", "SELECT 1 FROM (SELECT :a AS a) AS x"]:
                with dbs.session("db", role="read") as s:
                    assert s.execute(text(sql), {"a": 1, "b": 2}).scalar() is not None
                    raw: Any = s.connection().connection.dbapi_connection
                    pid = raw.info.backend_pid if kind == "pg" else raw.thread_id()
                seen[sql] = _statements(kind, cluster, pid)
            with dbs.session("db", role="read") as s:  # pool_size 1: the same connection
                s.execute(
                    text("SELECT initcap(:a)" if kind == "pg" else "SELECT soundex(:a)"), {"a": "x"}
                )
            seen["unknown function"] = _statements(kind, cluster, pid)
    finally:
        if kind == "maria":
            cluster.replicas[0].query("SET GLOBAL general_log = OFF")
    reset = "pg_advisory_unlock_all" if kind == "pg" else "RELEASE_ALL_LOCKS"
    first, second, unknown = seen.values()
    assert reset not in first and reset not in second
    assert reset in unknown
    if kind == "pg":
        assert first.strip().upper() == second.strip().upper() == "ROLLBACK"
