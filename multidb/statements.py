"""What a statement does: read, write, or something the server must judge.

Routing looks at the statement object, never at compiled SQL, except for
textual SQL (``text()``, ``exec_driver_sql``), which is classified by its
first keyword after whitespace and comments.

:func:`read_refusal` is the stricter test a read-only connection applies to
every SQL string it is about to send: an allow-list, not a deny-list. A
string passes only if it is one statement whose first keyword reads
(SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN, DESCRIBE, savepoints, a few
SQLite pragmas that only report) and nothing in it writes, locks, ends the
transaction or changes the session: no INSERT/UPDATE/DELETE/MERGE/INTO
anywhere (data-modifying CTEs, ``SELECT ... INTO``), no locking clause, no
``set_config()``, session advisory locks, sequences or ``dblink``. What the
scanner cannot read the way the server would (a backslash in a literal, an
unterminated literal, a nested or executable ``/*!`` comment) is refused too.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql import visitors
from sqlalchemy.sql.expression import Select, TextClause, TextualSelect

__all__ = ["Kind", "classify", "classify_text", "read_refusal", "resets_state"]


def _words(text: str) -> list[str]:
    return text.split()


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
        "RENAME",
    ]
)
# Words that write, lock or end a transaction wherever they stand in one statement
# (a data-modifying CTE, SELECT ... INTO, FOR UPDATE, LOCK IN SHARE MODE, EXPLAIN ANALYZE ...).
_WRITES_ANYWHERE = frozenset(
    [
        *(_WRITE_KEYWORDS - {"REPLACE"}),  # replace() is also a string function
        "INTO",
        "LOCK",
        "COMMIT",
        "ROLLBACK",
        "CALL",
        "COPY",
        "EXECUTE",
        "HANDLER",
    ]
)
# First keywords of statements that only read (the allow-list).
_READ_FIRST = frozenset(
    ["SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "DESCRIBE", "DESC"]
)
# Savepoints stay inside the read-only transaction; they never end it.
_SAVEPOINT_FIRST = frozenset(["SAVEPOINT", "RELEASE", "ROLLBACK"])
# Functions that write, lock past the transaction or change the session.
_REFUSED_FUNCTIONS = frozenset(
    [
        "SET_CONFIG",
        "PG_ADVISORY_LOCK",
        "PG_ADVISORY_LOCK_SHARED",
        "PG_TRY_ADVISORY_LOCK",
        "PG_TRY_ADVISORY_LOCK_SHARED",
        "GET_LOCK",
        "NEXTVAL",
        "SETVAL",
        "DBLINK",
        "DBLINK_EXEC",
        "DBLINK_SEND_QUERY",
        "PG_PROMOTE",
        "PG_RELOAD_CONF",
        "PG_SWITCH_WAL",
        "PG_WAL_REPLAY_PAUSE",
        "PG_WAL_REPLAY_RESUME",
        "PG_CREATE_RESTORE_POINT",
        "PG_LOGICAL_EMIT_MESSAGE",
        "PG_CREATE_PHYSICAL_REPLICATION_SLOT",
        "PG_CREATE_LOGICAL_REPLICATION_SLOT",
        "PG_DROP_REPLICATION_SLOT",
        "PG_FILE_WRITE",
        "LO_IMPORT",
        "LO_EXPORT",
        "LO_CREATE",
        "LO_CREAT",
        "LO_UNLINK",
        "LO_PUT",
        "LO_FROM_BYTEA",
        "LO_TRUNCATE",
        "LOWRITE",
        "TXID_CURRENT",
        "PG_CURRENT_XACT_ID",
        "LOAD_EXTENSION",
    ]
)
# Words before "(" that are not function calls, and functions known to leave no session
# state behind: a statement that calls nothing else needs no reset of its connection.
_STATELESS_CALLS = frozenset(
    _words(
        """
        IN EXISTS VALUES AS FROM JOIN ON AND OR NOT ANY ALL SOME OVER FILTER WITHIN USING
        WHEN THEN ELSE CASE SELECT WHERE BY UNION INTERSECT EXCEPT LATERAL ROW ARRAY TABLE
        WITH RECURSIVE IS LIKE ILIKE BETWEEN HAVING LIMIT OFFSET ORDER GROUP PARTITION
        DISTINCT COUNT SUM MIN MAX AVG COALESCE NULLIF LOWER UPPER LENGTH CHAR_LENGTH
        OCTET_LENGTH SUBSTR SUBSTRING TRIM LTRIM RTRIM REPLACE CONCAT CONCAT_WS ABS ROUND
        FLOOR CEIL CEILING NOW CURRENT_TIMESTAMP DATE DATETIME TIME JULIANDAY STRFTIME
        DATE_TRUNC EXTRACT CAST CONVERT TO_CHAR TO_DATE TO_TIMESTAMP JSON_EXTRACT JSON_AGG
        JSONB_AGG JSON_BUILD_OBJECT JSONB_BUILD_OBJECT ARRAY_AGG STRING_AGG GROUP_CONCAT
        ROW_NUMBER RANK DENSE_RANK LAG LEAD FIRST_VALUE LAST_VALUE GREATEST LEAST IFNULL IF
        IIF VERSION CURRENT_SCHEMA CURRENT_SETTING CURRENT_DATABASE DATABASE
        PG_IS_IN_RECOVERY INET_SERVER_PORT TYPEOF UNNEST GENERATE_SERIES PG_SLEEP SLEEP MD5
        HEX POSITION INSTR LEFT RIGHT MOD POWER SQRT PG_CURRENT_WAL_LSN
        PG_LAST_WAL_REPLAY_LSN PG_LAST_WAL_RECEIVE_LSN PG_IS_WAL_REPLAY_PAUSED
        PG_LAST_XACT_REPLAY_TIMESTAMP PG_CURRENT_WAL_FLUSH_LSN CLOCK_TIMESTAMP MASTER_GTID_WAIT
        SQLITE_VERSION CHAR VARCHAR NUMERIC
        DECIMAL INTEGER INT BIGINT TIMESTAMP INTERVAL PG_LSN TEXT
        """
    )
)
_READ_PRAGMAS = frozenset(
    [
        "TABLE_INFO",
        "TABLE_XINFO",
        "TABLE_LIST",
        "INDEX_LIST",
        "INDEX_INFO",
        "INDEX_XINFO",
        "FOREIGN_KEY_LIST",
        "DATABASE_LIST",
        "COLLATION_LIST",
        "COMPILE_OPTIONS",
        "FUNCTION_LIST",
        "MODULE_LIST",
        "PRAGMA_LIST",
    ]
)
# Settings a bare ``PRAGMA name`` (no argument, no ``=``) only reports.
_PRAGMA_SETTINGS = frozenset(
    _words(
        """
        QUERY_ONLY USER_VERSION SCHEMA_VERSION APPLICATION_ID JOURNAL_MODE FOREIGN_KEYS
        PAGE_SIZE PAGE_COUNT ENCODING BUSY_TIMEOUT CACHE_SIZE SYNCHRONOUS READ_UNCOMMITTED
        DATA_VERSION FREELIST_COUNT MAX_PAGE_COUNT AUTO_VACUUM RECURSIVE_TRIGGERS
        CASE_SENSITIVE_LIKE
        """
    )
)
_LOCKING = (("FOR", "UPDATE"), ("FOR", "SHARE"), ("FOR", "KEY", "SHARE"), ("FOR", "NO", "KEY"))

_WORD = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
# A number, or a driver's named placeholder (psycopg's, PyMySQL's ``%(name)s``): a value.
_VALUE = re.compile(r"[0-9][A-Za-z0-9_.]*|%\(\w+\)s")
# Tokens before "(" that do not name a function: "x = (SELECT ...)", "((a))", "'a' (".
_NOT_CALLED = frozenset(("'", '"', "(", ")", "=", ";"))
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")


@dataclass(frozen=True, slots=True)
class _Scan:
    """The code of one SQL string as the server reads it, less literals, comments, placeholders.

    ``tokens`` are upper-cased words, ``"'"`` for a quoted literal, ``'"'`` for a
    quoted identifier (its text in ``quoted``) and the punctuation ``; ( ) =``.
    ``problem`` says why the string cannot be read safely, when it cannot.
    """

    tokens: tuple[str, ...]
    problem: str | None


@functools.lru_cache(maxsize=4096)
def _scan(sql: str, dialect: str) -> _Scan:
    """Split ``sql`` as ``dialect`` reads it: ``postgresql``, ``mysql``, ``sqlite`` or other."""
    mysql = dialect in ("mysql", "mariadb")
    tokens: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char.isspace():
            i += 1
        elif (
            sql.startswith("--", i)
            and (not mysql or i + 2 >= n or sql[i + 2].isspace() or ord(sql[i + 2]) < 32)
        ) or (char == "#" and mysql):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                return _Scan((), "an unterminated comment")
            body = sql[i + 2 : end]
            if body.startswith(("!", "M!")):
                return _Scan((), "an executable comment (/*! ... */)")
            if "/*" in body:
                return _Scan((), "a nested comment")
            i = end + 2
        elif char in "'\"" or (char == "`" and mysql) or (char in "`[" and dialect == "sqlite"):
            close = "]" if char == "[" else char
            j = i + 1
            while True:
                j = sql.find(close, j)
                if j < 0:
                    return _Scan((), "an unterminated quoted literal")
                if close != "]" and sql.startswith(close * 2, j):
                    j += 2
                    continue
                break
            body = sql[i + 1 : j]
            if "\\" in body:
                # Backslashes escape on MySQL and in PostgreSQL E'' strings, not elsewhere:
                # read wrongly, they would hide code. Values belong in bound parameters.
                return _Scan((), "a backslash inside a quoted literal")
            if char == "'":
                tokens.append("'")
            else:
                tokens += ['"', body.upper()]
            i = j + 1
        elif char == "$" and dialect == "postgresql" and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag.group(0), tag.end())
            if end < 0:
                return _Scan((), "an unterminated dollar-quoted literal")
            tokens.append("'")
            i = end + len(tag.group(0))
        elif word := _WORD.match(sql, i):
            tokens.append(word.group(0).upper())
            i = word.end()
        elif value := _VALUE.match(sql, i):
            i = value.end()
        else:
            if char in ";()=":
                tokens.append(char)
            i += 1
    return _Scan(tuple(tokens), None)


@functools.lru_cache(maxsize=4096)
def read_refusal(sql: str, dialect: str = "") -> str | None:
    """Why a read-only connection must not send ``sql``, or None when it only reads.

    >>> read_refusal("SELECT 1; COMMIT")
    'several statements in one string'
    """
    scan = _scan(sql, dialect)
    if scan.problem is not None:
        return scan.problem
    tokens = scan.tokens
    if ";" in tokens:
        if any(token != ";" for token in tokens[tokens.index(";") :]):
            return "several statements in one string"
        tokens = tokens[: tokens.index(";")]
    words = [token for token in tokens if token != "("]
    if not words:
        return "no statement"
    first = words[0]
    if first in _SAVEPOINT_FIRST:
        if first != "ROLLBACK" or (len(words) > 1 and words[1] == "TO"):
            return None if len(words) <= 4 else "a savepoint statement with extra words"
        return "transaction control (ROLLBACK)"
    if first == "PRAGMA" and dialect == "sqlite":
        # PRAGMA [schema.]name[(argument)]: '.' is not a token, so the name is word 1 or 2.
        if "=" not in words and any(word in _READ_PRAGMAS for word in words[1:3]):
            return None
        if len(words) in (2, 3) and words[-1] in _PRAGMA_SETTINGS and "(" not in tokens:
            return None
        return "a PRAGMA that does not only report (" + " ".join(words[1:3]).lower() + ")"
    if first not in _READ_FIRST:
        shown = first if first[:1].isalpha() or first[:1] == "_" else "a literal"
        return f"{shown} does not begin a statement that only reads"
    for index, word in enumerate(words):
        if word in _WRITES_ANYWHERE:
            if word in ("COMMIT", "ROLLBACK"):
                return f"transaction control ({word})"
            return f"{word} (it writes, locks or ends the transaction)"
        if word == "FOR" and any(tuple(words[index : index + len(p)]) == p for p in _LOCKING):
            return "a locking clause (FOR UPDATE / FOR SHARE)"
        if word == "NEXT" and words[index + 1 : index + 3] == ["VALUE", "FOR"]:
            return "NEXT VALUE FOR (a sequence write)"
    for index, token in enumerate(tokens[:-1]):
        name = tokens[index + 1] if token == '"' else token
        after = tokens[index + 2] if token == '"' and index + 2 < len(tokens) else tokens[index + 1]
        if after == "(" and name in _REFUSED_FUNCTIONS:
            return f"{name.lower()}() (it writes, locks or changes the session)"
    return None


@functools.lru_cache(maxsize=4096)
def resets_state(sql: str, dialect: str = "") -> bool:
    """Whether running ``sql`` may leave session state (a lock, a setting) on its connection.

    True when it calls a function multidb does not know to be harmless: such a
    function may take an advisory lock, so the connection is reset before reuse.
    """
    tokens = _scan(sql, dialect).tokens
    return any(
        tokens[i + 1] == "(" and token not in _STATELESS_CALLS and token not in _NOT_CALLED
        for i, token in enumerate(tokens[:-1])
    )


@functools.lru_cache(maxsize=1024)
def classify_text(sql: str) -> Kind:
    """Classify textual SQL by its first keyword after whitespace and comments.

    A SELECT is a read only when nothing in it writes or locks (no data-modifying
    CTE, no ``INTO``, no FOR UPDATE/SHARE, one statement).

    >>> classify_text("/* hint */ select 1")
    <Kind.READ: 'read'>
    """
    scan = _scan(sql, "")
    words = [token for token in scan.tokens if token not in ("(", "'", '"', "=")]
    keyword = words[0] if words else ""
    if keyword in _WRITE_KEYWORDS:
        return Kind.WRITE
    if scan.problem is not None:
        return Kind.OTHER
    refusal = read_refusal(sql)
    if keyword in ("SELECT", "WITH") and refusal is not None and refusal != "no statement":
        return Kind.WRITE
    if keyword == "SELECT" and refusal is None:
        return Kind.READ
    return Kind.OTHER


def classify(statement: Any, *, inner: bool = True) -> Kind:
    """Classify a Core or ORM statement object, or a SQL string.

    ``inner=False`` leaves unread what a SELECT holds inside (a data-modifying
    CTE, SQL text that writes, a function that does): sessions pass it, since
    the read-only guard reads the compiled SQL of every statement a read-only
    connection runs and refuses those before they are sent (:mod:`multidb.readonly`).
    """
    if type(statement) is Select:  # the common case, first
        if statement._for_update_arg is not None:
            return Kind.WRITE
        return Kind.WRITE if inner and _select_writes(statement) else Kind.READ
    if isinstance(statement, str):
        return classify_text(statement)
    if isinstance(statement, TextClause):
        return classify_text(statement.text)
    if isinstance(statement, TextualSelect):  # text(...).columns(...)
        return classify_text(str(getattr(statement.element, "text", "")))
    element = getattr(statement, "element", None)  # ORM select().from_statement(text(...))
    if isinstance(element, TextClause) and not getattr(statement, "is_dml", False):
        return classify_text(element.text)
    if getattr(statement, "is_select", False):
        # No public accessor says whether a SELECT locks rows; tests pin this attribute.
        if getattr(statement, "_for_update_arg", None) is not None:
            return Kind.WRITE
        return Kind.WRITE if inner and _select_writes(statement) else Kind.READ
    if getattr(statement, "is_dml", False) or isinstance(statement, ExecutableDDLElement):
        return Kind.WRITE
    return Kind.OTHER


# Cache key -> whether that SELECT shape writes. SQLAlchemy computes (and memoizes on the
# statement) the same cache key to look up its compiled form, so this costs one dict lookup.
_SELECT_WRITES: dict[Any, bool] = {}


def _select_writes(select: Any) -> bool:
    cache_key = select._generate_cache_key()  # memoized; tests pin it
    if cache_key is None:  # not cacheable: look every time
        return _writes_inside(select)
    writes = _SELECT_WRITES.get(cache_key.key)
    if writes is None:
        if len(_SELECT_WRITES) >= 4096:
            _SELECT_WRITES.clear()
        writes = _SELECT_WRITES[cache_key.key] = _writes_inside(select)
    return writes


def _writes_inside(select: Any) -> bool:
    """Whether a SELECT holds a write: a data-modifying CTE, or SQL text that writes
    (``prefix_with``/``suffix_with`` such as ``INTO new_table``, a ``text()`` fragment)."""
    for clause in (*getattr(select, "_prefixes", ()), *getattr(select, "_suffixes", ())):
        if read_refusal(f"SELECT {getattr(clause[0], 'text', '')}") is not None:
            return True
    for element in visitors.iterate(select):
        if element is select:
            continue
        if getattr(element, "is_dml", False) or getattr(element, "_for_update_arg", None):
            return True
        if isinstance(element, TextClause) and _has_write_word(element.text):
            return True
    return False


def _has_write_word(fragment: str) -> bool:
    scan = _scan(fragment, "")
    return scan.problem is not None or any(
        token in _WRITES_ANYWHERE or token in _WRITE_KEYWORDS for token in scan.tokens
    )
