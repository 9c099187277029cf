"""Statement kinds: what routing treats as a read, a write, or neither."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, delete, insert, select, text, update
from sqlalchemy.schema import CreateTable, DropTable

from multidb.statements import Kind, classify, classify_text

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
