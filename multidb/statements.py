"""What a statement does: read, write, or something the server must judge.

Routing looks at the statement object, never at compiled SQL, except for
textual SQL (``text()``, ``exec_driver_sql``), which is classified by its
first keyword after whitespace and comments.
"""

from __future__ import annotations

import enum
import functools
import re
from typing import Any

from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql.expression import TextClause, TextualSelect

__all__ = ["Kind", "classify", "classify_text"]


class Kind(enum.Enum):
    """How routing treats a statement."""

    READ = "read"  # a SELECT without a locking clause: a replica may run it
    WRITE = "write"  # DML, DDL, a locking SELECT or textual SQL that writes: refused when read-only
    OTHER = (
        "other"  # anything else (SHOW, SET, CALL ...): the primary, or the server's read-only mode
    )


# Keywords that make textual SQL a write, refused in a read session (SPEC section 2).
_WRITE_KEYWORDS = frozenset(
    [
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "REPLACE",
        "UPSERT",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "GRANT",
        "REVOKE",
    ]
)
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_LOCKING = re.compile(
    r"\bFOR\s+(?:NO\s+KEY\s+)?UPDATE\b|\bFOR\s+(?:KEY\s+)?SHARE\b|\bLOCK\s+IN\s+SHARE\s+MODE\b",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1024)
def classify_text(sql: str) -> Kind:
    """Classify textual SQL by its first keyword after whitespace and comments.

    >>> classify_text("/* hint */ select 1")
    <Kind.READ: 'read'>
    """
    start = _LEADING_NOISE.match(sql)
    word = _FIRST_WORD.match(sql, start.end() if start else 0)
    keyword = word.group(0).upper() if word else ""
    if keyword == "SELECT":
        return Kind.WRITE if _LOCKING.search(sql) else Kind.READ
    if keyword in _WRITE_KEYWORDS:
        return Kind.WRITE
    return Kind.OTHER


def classify(statement: Any) -> Kind:
    """Classify a Core or ORM statement object, or a SQL string."""
    if isinstance(statement, str):
        return classify_text(statement)
    if isinstance(statement, TextClause):
        return classify_text(statement.text)
    if isinstance(statement, TextualSelect):  # text(...).columns(...)
        return classify_text(str(getattr(statement.element, "text", "")))
    if getattr(statement, "is_select", False):
        # No public accessor says whether a SELECT locks rows; tests pin this attribute.
        if getattr(statement, "_for_update_arg", None) is not None:
            return Kind.WRITE
        return Kind.READ
    if getattr(statement, "is_dml", False) or isinstance(statement, ExecutableDDLElement):
        return Kind.WRITE
    return Kind.OTHER
