"""Statement kinds: what routing treats as a read, a write, or neither."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, delete, insert, select, text, update
from sqlalchemy.schema import CreateTable, DropTable

from multidb.statements import Kind, classify, classify_text, read_refusal, resets_state

t = Table("t", MetaData(), Column("id", Integer, primary_key=True))


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", Kind.READ),
        ("  select * from t", Kind.READ),
        ("-- leading comment\nSELECT 1", Kind.READ),
        ("/* block\n comment */ /* two */ Select 1", Kind.READ),
        ("SELECT * FROM t FOR UPDATE", Kind.WRITE),
        ("select * from t for no key update", Kind.WRITE),
        ("SELECT * FROM t FOR SHARE", Kind.WRITE),
        ("SELECT * FROM t LOCK IN SHARE MODE", Kind.WRITE),
        ("INSERT INTO t VALUES (1)", Kind.WRITE),
        ("update t set id = 2", Kind.WRITE),
        ("DELETE FROM t", Kind.WRITE),
        ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", Kind.WRITE),
        ("REPLACE INTO t VALUES (1)", Kind.WRITE),
        ("UPSERT INTO t VALUES (1)", Kind.WRITE),
        ("CREATE TABLE x (id int)", Kind.WRITE),
        ("ALTER TABLE t ADD c int", Kind.WRITE),
        ("DROP TABLE t", Kind.WRITE),
        ("TRUNCATE t", Kind.WRITE),
        ("GRANT SELECT ON t TO u", Kind.WRITE),
        ("REVOKE SELECT ON t FROM u", Kind.WRITE),
        ("WITH x AS (SELECT 1) SELECT * FROM x", Kind.OTHER),
        ("SHOW TABLES", Kind.OTHER),
        ("", Kind.OTHER),
        ("-- only a comment", Kind.OTHER),
    ],
)
def test_textual_sql_is_classified_by_its_first_keyword(sql: str, kind: Kind) -> None:
    assert classify_text(sql) is kind
    assert classify(text(sql)) is kind


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        (select(t), Kind.READ),
        (select(t).union(select(t)), Kind.READ),
        (select(t).with_for_update(), Kind.WRITE),
        (select(t).with_for_update(read=True), Kind.WRITE),
        (insert(t), Kind.WRITE),
        (update(t), Kind.WRITE),
        (delete(t), Kind.WRITE),
        (CreateTable(t), Kind.WRITE),
        (DropTable(t), Kind.WRITE),
        (text("INSERT INTO t VALUES (1) RETURNING id").columns(t.c.id), Kind.WRITE),
        (text("SELECT id FROM t").columns(t.c.id), Kind.READ),
    ],
)
def test_core_constructs_are_classified_by_type(statement: Any, kind: Kind) -> None:
    assert classify(statement) is kind


def test_pinned_private_attribute_for_update_arg() -> None:
    """multidb reads Select._for_update_arg: fail loudly if SQLAlchemy renames it."""
    assert select(t)._for_update_arg is None
    assert select(t).with_for_update()._for_update_arg is not None


def test_pinned_private_method_generate_cache_key_is_memoized() -> None:
    """classify() caches SELECTs by the cache key SQLAlchemy memoizes on the statement."""
    statement = select(t).where(t.c.id == 1)
    key = statement._generate_cache_key()
    assert key is not None
    assert statement._generate_cache_key() is key
    other = select(t).where(t.c.id == 2)._generate_cache_key()
    assert other is not None
    assert hash(key.key) == hash(other.key)


def test_selects_that_write_are_writes() -> None:
    """A data-modifying CTE or SELECT ... INTO shown by the statement object is a write."""
    cte = insert(t).values(id=1).returning(t.c.id).cte("w")
    assert classify(select(cte.c.id)) is Kind.WRITE
    assert classify(select(t).where(t.c.id.in_(select(cte.c.id)))) is Kind.WRITE
    assert classify(select(t.c.id).suffix_with("INTO t2")) is Kind.WRITE
    assert classify(select(t).where(t.c.id == 3)) is Kind.READ
    assert classify_text("WITH w AS (DELETE FROM t RETURNING id) SELECT * FROM w") is Kind.WRITE
    assert classify_text("SELECT * INTO t2 FROM t") is Kind.WRITE


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT 1", ""),
        ("select * from t where id = %(id)s", "postgresql"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", ""),
        ("SELECT data #>> '{a,b}' FROM t", "postgresql"),
        ("SHOW transaction_read_only", "postgresql"),
        ("SAVEPOINT sa_savepoint_1", ""),
        ("ROLLBACK TO SAVEPOINT sa_savepoint_1", ""),
        ('PRAGMA main.table_info("t")', "sqlite"),
        ("PRAGMA query_only", "sqlite"),
        ("SELECT `id` FROM `t`", "mysql"),
        ("SELECT 1;", ""),
    ],
)
def test_read_only_connections_allow_reads(sql: str, dialect: str) -> None:
    assert read_refusal(sql, dialect) is None


@pytest.mark.parametrize(
    ("sql", "dialect", "reason"),
    [
        ("SELECT 1; COMMIT", "", "several statements"),
        ("COMMIT", "", "COMMIT does not begin"),
        ("SET TRANSACTION READ WRITE", "postgresql", "SET does not begin"),
        ("SELECT set_config('transaction_read_only', 'off', true)", "", "set_config()"),
        ('SELECT "pg_advisory_lock"(1)', "postgresql", "pg_advisory_lock()"),
        ("SELECT GET_LOCK('x', 0)", "mysql", "get_lock()"),
        ("/*! INSERT INTO t VALUES (1) */", "mysql", "executable comment"),
        ("SELECT 1 # '\n; INSERT INTO t VALUES (1) -- '", "mysql", "several statements"),
        ("SELECT 1 --1 ; INSERT INTO t VALUES (1)", "mysql", "several statements"),
        ("SELECT '\\'; INSERT INTO t VALUES (1) -- '", "mysql", "backslash"),
        ("SELECT $$ a $$; INSERT INTO t VALUES (1)", "postgresql", "several statements"),
        ("/* /* */ SELECT 1 */ ; INSERT INTO t VALUES (1)", "postgresql", "nested comment"),
        ("PRAGMA query_only = OFF", "sqlite", "PRAGMA"),
        ("ATTACH 'x.db' AS x", "sqlite", "ATTACH does not begin"),
        ("RENAME TABLE t TO u", "mysql", "RENAME does not begin"),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "postgresql", "LOCK does not begin"),
        ("SELECT * FROM t FOR SHARE", "postgresql", "locking"),
        ("SELECT * FROM t LOCK IN SHARE MODE", "mysql", "LOCK"),
        ("SELECT NEXT VALUE FOR s", "mysql", "NEXT VALUE FOR"),
        ("SELECT 'unterminated", "", "unterminated"),
        ("SELECT pg_advisory_lock(%(key)s)", "postgresql", "pg_advisory_lock()"),
        ("SELECT %(a)s, GET_LOCK(%(b)s, 0)", "mysql", "get_lock()"),
        ("SELECT %(x)s; COMMIT", "postgresql", "several statements"),
    ],
)
def test_read_only_connections_refuse_what_is_not_a_read(
    sql: str, dialect: str, reason: str
) -> None:
    refusal = read_refusal(sql, dialect)
    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT t.a FROM t WHERE t.id = %(pk_1)s", "postgresql"),
        ("SELECT t.a FROM t WHERE t.id IN (%(id_1)s, %(id_2)s)", "mysql"),
        ("SELECT t.a FROM t WHERE t.id = $1::INTEGER", "postgresql"),
        ("SELECT t.a FROM t WHERE t.id = (SELECT max(u.id) FROM u)", ""),
        ("SELECT ((1))", ""),
        ("SELECT count(*), lower(t.a) FROM t WHERE t.id = ?", "sqlite"),
    ],
)
def test_placeholders_and_subqueries_are_not_calls_that_need_a_reset(
    sql: str, dialect: str
) -> None:
    assert resets_state(sql, dialect) is False


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT app_fn(%(a)s)", "postgresql"),
        ("SELECT t.a FROM t WHERE t.id = app_fn(%(a)s)", "mysql"),
        ('SELECT "app_fn"(1)', "postgresql"),
        ("SELECT pg_backend_pid()", "postgresql"),
    ],
)
def test_unknown_functions_need_a_reset(sql: str, dialect: str) -> None:
    assert resets_state(sql, dialect) is True
