"""The session classes behind ``role="read"`` and ``role="auto"``.

A write session is a plain :class:`sqlalchemy.orm.Session` bound to the
primary: it needs nothing from multidb. The two classes here read from a
replica that a :class:`ReadSource` picks once per session:

- :class:`ReadSession` sends everything to that one engine and refuses to
  write: a flush with changes, or a write statement, raises
  :class:`~multidb.ReadOnlyError` before any SQL is sent.
- :class:`AutoSession` sends each statement where :meth:`AutoSession.get_bind`
  says, and stays on the primary once it has used it.

Both survive a dead replica: if the connection fails while the session's
first replica statement is being run (checkout, read-only setup or the
statement itself), the replica is left out for ``cooldown_seconds`` and the
statement is run again on the next one, then on the primary when
``fallback_to_primary`` allows. Nothing else is ever retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.orm import UOWTransaction as _UOWTransaction

from .errors import NoReplicaAvailableError, ReadOnlyError
from .readonly import begin_read_only
from .router import Router
from .statements import Kind, classify

__all__ = ["AutoSession", "ReadSession", "ReadSource"]

log = logging.getLogger("multidb.routing")


class ReadSource:
    """Where one session's reads go: a pinned engine, or a database's router."""

    def __init__(
        self,
        *,
        database: str,
        primary: str,
        engine: Callable[[str], Engine],
        router: Router | None = None,
        pinned: str | None = None,
    ) -> None:
        if (router is None) == (pinned is None):
            raise ValueError("a ReadSource needs exactly one of router and pinned")
        self.database = database
        self.primary = primary
        self.engine = engine
        self.router = router
        self.pinned = pinned

    def pick(self, failed: frozenset[str]) -> str:
        """The engine a session reads from, first that applies:

        1. the pinned engine, when the session named one;
        2. a usable replica, as the router chooses (weight, cooldown, lag),
           leaving out those that already ``failed`` in this session;
        3. the primary, when the database has no replicas;
        4. the primary, when ``routing.fallback_to_primary`` is true;
        5. otherwise :class:`~multidb.NoReplicaAvailableError`.
        """
        if self.pinned is not None:
            return self.pinned
        router = self.router
        assert router is not None
        name = router.choose(failed)
        if name is not None:
            return name
        if not router.replica_names:
            log.debug("%s: read -> %s (no replicas)", self.database, self.primary)
            return self.primary
        reason = router.why_none()
        if router.fallback_to_primary and self.primary not in failed:
            router.note_fallback(reason)
            return self.primary
        raise NoReplicaAvailableError(
            f"{self.database}: no replica can serve reads ({reason}) and "
            "routing.fallback_to_primary is false; wait for one to recover, "
            "or allow falling back to the primary"
        )

    def may_retry(self, name: str) -> bool:
        """Whether a read that failed on ``name`` may move to another engine."""
        return self.pinned is None and name != self.primary

    def failed(self, name: str, error: BaseException) -> None:
        assert self.router is not None
        self.router.eject(name, error)


class _ReplicaReads(Session):
    """The replica a session reads from, chosen once, with failover on first use."""

    def __init__(self, bind: Any = None, *, multidb_reads: ReadSource, **kwargs: Any) -> None:
        super().__init__(bind=bind, **kwargs)
        self.multidb_reads = multidb_reads
        self.reader: str | None = None  # the engine this session reads from, once chosen
        self._failed: frozenset[str] = frozenset()
        self._settled = False  # a statement has run on the reader: no more retries
        self.on_primary = False  # auto sessions: once true, every statement goes to the primary

    def _reader_engine(self) -> Engine:
        name = self.reader
        if name is None:
            name = self.reader = self.multidb_reads.pick(self._failed)
        return self.multidb_reads.engine(name)

    def _first_read(self, state: ORMExecuteState) -> Result[Any]:
        """Run the session's first replica statement, moving on when a connection fails."""
        while True:
            try:
                result = state.invoke_statement()
            except DBAPIError as exc:
                failed = self.reader
                # A statement of None means the connection could not be opened.
                lost = exc.connection_invalidated or exc.statement is None
                if not lost or failed is None or not self.multidb_reads.may_retry(failed):
                    raise
                self.multidb_reads.failed(failed, exc)
                self._failed |= {failed}
                self.reader = None
                # Nothing of this transaction has run: dropping it loses no work.
                self.rollback()
                continue
            self._settled = True
            return result

    def commit(self) -> None:
        """Commit; a transaction that only read ends without error even if its server died."""
        try:
            super().commit()
        except DBAPIError as exc:
            if self.on_primary:
                raise
            self._discard(exc, "commit")

    def close(self) -> None:
        try:
            super().close()
        except DBAPIError as exc:
            self._discard(exc, "closing")
        self.reader = None
        self._failed = frozenset()
        self._settled = False
        self.on_primary = False

    def _discard(self, exc: DBAPIError, what: str) -> None:
        """A read-only transaction has nothing to keep: log the failure, drop the connection."""
        log.warning(
            "%s: %s of a read-only transaction on %s failed, connection discarded: %s",
            self.multidb_reads.database,
            what,
            self.reader,
            str(exc).splitlines()[0],
        )
        self.invalidate()


class ReadSession(_ReplicaReads):
    """A read-only session on one engine, picked when the session first needs one.

    A flush with pending changes, or a write statement (INSERT, UPDATE,
    DELETE, DDL, a locking SELECT, textual SQL that begins with a write
    keyword), raises :class:`~multidb.ReadOnlyError` before any SQL is sent.
    Its connection is in the backend's read-only mode too, also on a primary.
    """

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        **kwargs: Any,
    ) -> Engine:
        return self._reader_engine()


@event.listens_for(ReadSession, "before_flush")
def _refuse_flush(session: Session, flush_context: _UOWTransaction, instances: Any) -> None:
    if session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
        assert isinstance(session, ReadSession)
        raise ReadOnlyError(
            f"{session.multidb_reads.database}: a read session cannot flush changes "
            f"({len(session.new)} new, {len(session.dirty)} changed, {len(session.deleted)} "
            "deleted); nothing was sent: make them in a session with role='write' or 'auto'"
        )


@event.listens_for(ReadSession, "do_orm_execute")
def _read_execute(state: ORMExecuteState) -> Result[Any] | None:
    session = state.session
    assert isinstance(session, ReadSession)
    if _role_option(state) == "write" or classify(state.statement) is Kind.WRITE:
        raise ReadOnlyError(
            f"{session.multidb_reads.database}: a read session cannot run "
            f"{_describe(state.statement)}; nothing was sent: run it in a session "
            "with role='write' or 'auto'"
        )
    if not session._settled:
        return session._first_read(state)
    return None


@event.listens_for(ReadSession, "after_begin")
def _read_only_on_primary(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    assert isinstance(session, ReadSession)
    # Replica connections are read-only from the moment they connect.
    if session.reader == session.multidb_reads.primary:
        begin_read_only(connection)


class AutoSession(_ReplicaReads):
    """A session that reads from a replica until its first write, then stays on the primary."""

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        multidb_kind: Kind | None = None,
        **kwargs: Any,
    ) -> Engine:
        """The engine for one statement, by the first rule that applies:

        1. once the session has sent anything to the primary: the primary,
           until the session closes (commits included);
        2. ``execution_options(multidb_role="read" | "write")`` on the
           statement or the ``execute()`` call: a replica, or the primary;
        3. no statement (a flush, ``Session.connection()``): the primary;
        4. a SELECT without FOR UPDATE/SHARE, Core, ORM or textual: the
           session's replica (see :meth:`ReadSource.pick`; a database without
           replicas reads from its primary);
        5. anything else: the primary.
        """
        source = self.multidb_reads
        if not self.on_primary:
            if multidb_kind is None:
                multidb_kind = Kind.WRITE if clause is None else classify(clause)
            if multidb_kind is Kind.READ:
                return self._reader_engine()
            self.on_primary = True
            log.debug(
                "%s: %s -> %s (auto: first statement that is not a read)",
                source.database,
                _describe(clause),
                source.primary,
            )
        return source.engine(source.primary)


@event.listens_for(AutoSession, "do_orm_execute")
def _auto_execute(state: ORMExecuteState) -> Result[Any] | None:
    session = state.session
    assert isinstance(session, AutoSession)
    if session.on_primary:
        return None
    role = _role_option(state)
    if role == "read":
        kind = Kind.READ
    elif role == "write":
        kind = Kind.WRITE
    else:
        kind = classify(state.statement)
    state.bind_arguments["multidb_kind"] = kind
    if kind is Kind.READ and not session._settled:
        return session._first_read(state)
    return None


def _role_option(state: ORMExecuteState) -> Any:
    """``multidb_role`` from the ``execute()`` call, else from the statement."""
    role = state.local_execution_options.get("multidb_role")
    return role if role is not None else state.statement.get_execution_options().get("multidb_role")


def _describe(statement: Any) -> str:
    if statement is None:
        return "a flush"
    text = getattr(statement, "text", None)
    if isinstance(text, str):
        return repr(" ".join(text.split())[:60])
    return f"a {type(statement).__name__} statement"
