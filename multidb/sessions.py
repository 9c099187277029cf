"""The session classes behind ``role="read"`` and ``role="auto"``.

A write session is a plain :class:`sqlalchemy.orm.Session` bound to the
primary: it needs nothing from multidb. The two classes here read from a
replica that a :class:`ReadSource` picks once per session:

- :class:`ReadSession` sends everything to that one engine and refuses to
  write: a flush with changes, a write statement, or an explicit ``bind``
  raises before any SQL is sent.
- :class:`AutoSession` sends each statement where :meth:`AutoSession.get_bind`
  says, and stays on the primary once it has used it.

The replica is chosen, and its connection checked out, when the session
first needs it (``execute``, ``scalars``, ``get``, ``connection()`` alike),
before any statement runs: a connection that cannot be opened leaves that
replica out for ``cooldown_seconds`` and the next one is tried, then the
primary when ``fallback_to_primary`` allows. When the current causal scope
holds a position for the database (:mod:`multidb.causal`), only a replica
that has applied it is used. A pooled connection found dead by the session's
first statement is replaced the same way and the statement run once more;
nothing else is ever retried, so no work is repeated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm import UOWTransaction as _UOWTransaction

from . import causal, positions
from .causal import Position
from .errors import NoReplicaAvailableError, ReadOnlyError, RoutingError
from .readonly import READ_ONLY_OPTION, begin_read_only
from .router import Router
from .routes import DatabaseRouter, RouteTable
from .statements import Kind, classify

__all__ = ["AutoSession", "ReadSession", "ReadSource", "RoutedSession", "finish"]

log = logging.getLogger("multidb.routing")
causal_log = logging.getLogger("multidb.causal")


class ReadSource:
    """Where one session's reads go: a pinned engine, or a database's router."""

    def __init__(
        self,
        *,
        database: str,
        primary: str,
        engine: Any,
        router: Router | None = None,
        pinned: str | None = None,
        read_your_writes: bool = False,
        causal_wait_seconds: float = 0.0,
        causal_ttl_seconds: float = 60.0,
    ) -> None:
        if (router is None) == (pinned is None):
            raise ValueError("a ReadSource needs exactly one of router and pinned")
        self.database = database
        self.primary = primary
        self.engine = engine  # name -> the sync Engine to read from
        self.router = router
        self.pinned = pinned
        # A pinned session reads exactly where it was told: no causal routing.
        self.read_your_writes = read_your_writes and router is not None
        self.causal_wait_seconds = causal_wait_seconds
        self.causal_ttl_seconds = causal_ttl_seconds
        self._kind: str | None = None  # the kind of position this database's primary writes
        self._read_only_view: tuple[Any, Any] = (None, None)  # (primary engine, its view)

    def required(self) -> Position | None:
        """The position the current causal scope holds for this database, if any.

        A position of a kind this database's primary cannot write (a WAL
        position for a MariaDB database, say) came from elsewhere: it is ignored.
        """
        if not self.read_your_writes:
            return None
        scope = causal.current()
        if scope is None:
            return None
        position = scope.position(self.database, self.causal_ttl_seconds)
        if position is None or position.kind == "primary":
            return position
        kind = self._kind
        if kind is None:
            engine = self.engine(self.primary)
            if engine.dialect.server_version_info is None:  # not connected yet: cannot tell
                return position
            backend = positions.backend(engine)
            kind = self._kind = {"postgresql": "lsn", "mariadb": "gtid"}.get(backend or "", "")
        return position if position.kind == kind else None

    def pick(
        self,
        failed: frozenset[str],
        behind: frozenset[str] = frozenset(),
        required: Position | None = None,
    ) -> str:
        """The engine a session reads from, first that applies:

        1. the pinned engine, when the session named one;
        2. a usable replica, as the router chooses (weight, cooldown, lag),
           leaving out those that already ``failed`` in this session and
           those found ``behind`` the scope's ``required`` position;
        3. the primary, when the database has no replicas;
        4. the primary, when ``routing.fallback_to_primary`` is true (counted
           in ``causal_fallbacks`` when replicas were only behind);
        5. otherwise :class:`~multidb.NoReplicaAvailableError`.
        """
        if self.pinned is not None:
            return self.pinned
        router = self.router
        assert router is not None
        name: str | None = None
        if required is None:
            name = router.choose(failed)
        elif required.kind != "primary":
            name = router.choose(failed | behind)
        if name is not None:
            return name
        if not router.replica_names:
            log.debug("%s: read -> %s (no replicas)", self.database, self.primary)
            return self.primary
        if required is not None and (behind or required.kind == "primary"):
            reason = (
                f"causal: no replica caught up within {self.causal_wait_seconds}s"
                if behind
                else "causal: the position of the last write is unknown"
            )
            if router.fallback_to_primary and self.primary not in failed:
                router.note_causal_fallback(f"{reason} -> {self.primary}")
                causal_log.debug("%s: %s -> %s", self.database, reason, self.primary)
                return self.primary
            raise NoReplicaAvailableError(
                f"{self.database}: no replica has applied this scope's last write "
                f"({reason}) and routing.fallback_to_primary is false; raise "
                "routing.causal_wait_seconds, or allow falling back to the primary"
            )
        reason = router.why_none()
        if router.fallback_to_primary and self.primary not in failed:
            router.note_fallback(reason)
            return self.primary
        raise NoReplicaAvailableError(
            f"{self.database}: no replica can serve reads ({reason}) and "
            "routing.fallback_to_primary is false; wait for one to recover, "
            "or allow falling back to the primary"
        )

    def read_only_primary(self) -> Engine | Connection:
        """The primary, as read sessions use it: every transaction begins read-only.

        A view of the same engine (``Engine.execution_options``: same pool,
        same dialect) whose connections carry ``multidb_read_only``, which
        the read session's ``after_begin`` hook and the write guard look for.
        """
        engine = self.engine(self.primary)
        base, view = self._read_only_view
        if base is not engine:
            # multidb.testing.mirror() lends a Connection: its own hooks keep it read-only.
            view = engine
            if isinstance(engine, Engine):
                view = engine.execution_options(**{READ_ONLY_OPTION: True})
            self._read_only_view = (engine, view)
        return view  # type: ignore[no-any-return]

    def may_retry(self, name: str) -> bool:
        """Whether a read that failed on ``name`` may move to another engine."""
        return self.pinned is None and name != self.primary

    def failed(self, name: str, error: BaseException) -> None:
        assert self.router is not None
        self.router.eject(name, error)

    def known_applied(self, name: str, required: Position) -> bool:
        """Whether the router already knows replica ``name`` has applied ``required``."""
        assert self.router is not None
        return bool(_covering(required)(self.router.applied(name)))

    def check_applied(self, connection: Connection, name: str, required: Position) -> bool:
        """Ask replica ``name`` (waiting up to ``causal_wait_seconds``) whether it has applied."""
        assert self.router is not None
        ok, applied = positions.applied(connection, required, self.causal_wait_seconds)
        self.router.note_causal_wait(name, applied)
        if causal_log.isEnabledFor(logging.DEBUG):
            verdict = "has applied" if ok else "has not applied"
            causal_log.debug(
                "causal: %s %s %s (at %s)", name, verdict, required.text(), applied or "?"
            )
        return ok


def _covering(required: Position) -> Any:
    """A test of a replica's applied position (as the server wrote it) against ``required``."""

    def covers(applied: str | None) -> bool:
        return applied is not None and causal.covers(causal.parse_position(applied), required)

    return covers


class _Reader:
    """One database's reads in one session: the engine chosen for them, kept until it closes."""

    __slots__ = ("bind", "failed", "name", "on_primary", "read_only", "source", "used_in")

    def __init__(self, source: ReadSource, read_only: bool) -> None:
        self.source = source
        self.name: str | None = None  # the engine this session reads from, once chosen
        self.bind: Engine | Connection | None = None  # what get_bind returns for it
        self.failed: frozenset[str] = frozenset()
        self.on_primary = False  # auto sessions: once true, every statement goes to the primary
        self.read_only = read_only  # read sessions: reads on a primary use its read-only view
        self.used_in: object = None  # several-database sessions: the transaction it last served

    def engine(self, settle: bool, probe: bool = False) -> Engine | Connection:
        """The engine to read from: the one chosen for this session, or a new choice.

        SQLAlchemy checks the connection out of it (and gives it back) as it
        does for any bound engine. A connection that cannot be opened, or a
        dead pooled one, is found by the transaction's first statement, which
        :meth:`_ReplicaReads._execute_internal` then runs on the next engine.
        ``settle`` (the transaction's first use of this database) chooses
        again if need be and applies the causal scope; only two cases open a
        connection here first: a scope position the router does not know the
        replica has applied, and ``probe`` (a statement of another database
        already ran in this transaction, so a failure later could not be moved).
        """
        bind = self.bind
        if bind is not None and not settle:
            return bind
        source = self.source
        name = self._settle(probe) if settle or self.name is None else self.name
        if self.read_only and name == source.primary:
            bind = source.read_only_primary()
        else:
            bind = source.engine(name)
        self.bind = bind
        return bind

    def _settle(self, probe: bool) -> str:
        """Choose the engine, testing it first where the docstring of :meth:`engine` says."""
        source = self.source
        required = source.required()
        behind: frozenset[str] = frozenset()
        while True:
            name = self.name
            if name is None or name in self.failed or name in behind:
                name = source.pick(self.failed, behind, required)
            check = required
            if check is not None and (name == source.primary or source.known_applied(name, check)):
                check = None
            if check is not None or (probe and source.may_retry(name)):
                try:
                    with source.engine(name).connect() as connection:
                        if check is not None and not source.check_applied(connection, name, check):
                            behind |= {name}
                            continue
                except Exception as exc:
                    if not source.may_retry(name) or not _connection_lost(exc):
                        raise
                    self.failed_on(name, exc)
                    continue
            self.name = name
            return name

    def failed_on(self, name: str, exc: BaseException) -> None:
        """Leave replica ``name`` out: for the router's cooldown, and for this session."""
        self.source.failed(name, exc)
        self.failed |= {name}

    def reset(self) -> None:
        self.name = None
        self.bind = None
        self.failed = frozenset()
        self.on_primary = False
        self.used_in = None


class _ReplicaReads(Session):
    """Reads from replicas: one :class:`_Reader` per database the session uses.

    A session for one database gets ``multidb_reads``; a session for every
    routed model (``dbs.session(None, ...)``) gets ``multidb_databases`` and
    ``multidb_routes`` and picks the database of each statement first.
    """

    _read_only = False  # ReadSession: reads on a primary use its read-only view

    def __init__(
        self,
        bind: Any = None,
        *,
        multidb_reads: ReadSource | None = None,
        multidb_databases: Mapping[str, ReadSource] | None = None,
        multidb_routes: DatabaseRouter | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(bind=bind, **kwargs)
        self.multidb_reads = multidb_reads
        self._single = None if multidb_reads is None else _Reader(multidb_reads, self._read_only)
        self._sources = multidb_databases or {}
        self._routes = multidb_routes
        self._readers: dict[str, _Reader] = {}
        self._ran_in: object = None  # the transaction a statement has completed in: no retries
        self._first = True  # the statement being run is its transaction's first
        self._bound: _Reader | None = None  # whose replica the statement being run went to

    @property
    def reader(self) -> str | None:
        """The engine this session reads from, once chosen (one-database sessions)."""
        return None if self._single is None else self._single.name

    @property
    def on_primary(self) -> bool:
        """Auto sessions: whether everything goes to the primary now (one-database sessions)."""
        return self._single is not None and self._single.on_primary

    def _reader_for(self, mapper: Any, clause: Any, database: str | None) -> _Reader:
        single = self._single
        if single is not None:
            return single
        name = database or _route(self._routes, self._sources, mapper, clause)
        reader = self._readers.get(name)
        if reader is None:
            source = self._sources.get(name)
            if source is None:
                raise RoutingError(
                    f"bind_arguments names database {name!r}, which this registry does not "
                    f"have (databases: {', '.join(self._sources)})"
                )
            reader = self._readers[name] = _Reader(source, self._read_only)
        return reader

    def _read_bind(self, reader: _Reader) -> Engine | Connection:
        """The bind for a read of ``reader``'s database in this transaction."""
        self._bound = reader
        if reader is self._single:
            return reader.engine(self._first)
        # Several databases: this one's first statement may follow another database's.
        transaction = self.get_transaction()
        if reader.used_in is transaction:
            return reader.engine(False)
        reader.used_in = transaction
        return reader.engine(True, probe=self._ran_in is transaction)

    def _all_readers(self) -> list[_Reader]:
        return [self._single] if self._single is not None else list(self._readers.values())

    def _nothing_to_commit(self) -> bool:
        """Whether the session's transaction only read: see :func:`finish`."""
        return False

    def _execute_internal(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a statement; the transaction's first one moves on if its replica is unreachable.

        Nothing of the transaction has run before it, so rolling back loses
        no work, and the statement itself did not reach the server. A read
        session first refuses a write (:func:`_refuse_write`).
        """
        if self._read_only:
            _refuse_write(self, statement, kwargs)
        transaction = self.get_transaction()
        if (transaction is not None and transaction is self._ran_in) or kwargs.get(
            "_parent_execute_state"
        ) is not None:
            return super()._execute_internal(statement, *args, **kwargs)
        while True:
            self._bound = None
            self._first = True
            try:
                result = super()._execute_internal(statement, *args, **kwargs)
            except Exception as exc:
                if not self._move_on(exc):
                    raise
                continue
            finally:
                self._first = False
            self._ran_in = self.get_transaction()
            return result

    def _move_on(self, exc: BaseException) -> bool:
        """After a failed first statement: leave its replica out and roll back, if that helps."""
        reader = self._bound
        if reader is None or reader.name is None or not reader.source.may_retry(reader.name):
            return False
        if not _connection_lost(exc):
            return False
        reader.failed_on(reader.name, exc)
        self.rollback()
        return True

    def connection(self, bind_arguments: Any = None, execution_options: Any = None) -> Connection:
        """The transaction's connection; a replica's is tested before it is handed out."""
        transaction = self.get_transaction()
        first = transaction is None or transaction is not self._ran_in
        while True:
            self._bound = None
            self._first = first
            try:
                connection = super().connection(bind_arguments, execution_options)
            finally:
                self._first = False
            if first and self._bound is not None:
                try:
                    raw = connection.connection.dbapi_connection
                    connection.dialect.do_ping(raw)
                except Exception as exc:
                    connection.invalidate()
                    if self._move_on(exc):
                        continue
                    raise
            # What runs on it is out of sight: never retry after this.
            self._ran_in = self.get_transaction()
            return connection

    def commit(self) -> None:
        """Commit; a transaction that only read ends without error even if its server died."""
        try:
            super().commit()
        except DBAPIError as exc:
            if any(r.on_primary for r in self._all_readers()) or isinstance(self, RoutedSession):
                raise
            self._discard(exc, "commit")

    def close(self) -> None:
        try:
            super().close()
        except DBAPIError as exc:
            self._discard(exc, "closing")
        if self._single is not None:
            self._single.reset()
        else:
            for reader in self._readers.values():
                reader.reset()
        self._ran_in = None

    def _discard(self, exc: DBAPIError, what: str) -> None:
        """A read-only transaction has nothing to keep: log the failure, drop the connection."""
        log.warning(
            "%s: %s of a read-only transaction failed, connection discarded: %s",
            ", ".join(f"{r.source.database} on {r.name}" for r in self._all_readers()),
            what,
            str(exc).splitlines()[0],
        )
        self.invalidate()


def finish(session: Session) -> None:
    """End a session's block that raised nothing: commit, unless it only read replicas.

    A read session, or an auto session whose statements all went to
    replicas, has nothing to commit: its pending changes are flushed (a read
    session refuses them; an auto session sends them to the primary, and then
    commits) and its transaction is left for ``close()`` to end, without
    expiring what it loaded. Replicas are read-only, so nothing is lost; an
    auto session's read that went to a primary (no replicas, or a fallback)
    is committed, in case a function it called wrote.
    """
    if isinstance(session, _ReplicaReads) and session._nothing_to_commit():
        session.flush()
        if session._read_only or session._nothing_to_commit():
            return
    session.commit()


def _route(
    routes: DatabaseRouter | None, sources: Mapping[str, ReadSource], mapper: Any, clause: Any
) -> str:
    """The database a statement of a several-database session goes to, or RoutingError."""
    name = None if routes is None else routes.database_for(mapper, clause)
    if name is None:
        table = routes.describe() if isinstance(routes, RouteTable) else type(routes).__name__
        raise RoutingError(
            f"no route names the database of {_describe(clause) if clause is not None else mapper}"
            f" (routes: {table}); route its model with dbs.route(Model, DATABASE), or pass "
            "bind_arguments={'database': DATABASE}"
        )
    if name not in sources:
        raise RoutingError(
            f"the router sent a statement to {name!r}, which this registry does not have "
            f"(databases: {', '.join(sources)})"
        )
    return name


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached (not a mistake in the SQL)."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or exc.statement is None or _is_operational(exc.orig)
    # asyncio drivers (asyncpg) let socket errors out of connect() as they are, not as
    # DBAPI errors: ConnectionResetError, ConnectionRefusedError, TimeoutError are OSErrors.
    return isinstance(exc, (OSError, asyncio.TimeoutError)) or _is_operational(exc)


def _is_operational(exc: BaseException | None) -> bool:
    # PEP 249: OperationalError and InterfaceError are the connection-level errors.
    return exc is not None and type(exc).__name__ in ("OperationalError", "InterfaceError")


class ReadSession(_ReplicaReads):
    """A read-only session on one engine per database, picked when the session first needs one.

    A flush with pending changes, or a write statement (INSERT, UPDATE,
    DELETE, DDL, a locking SELECT, textual SQL that begins with a write
    keyword), raises :class:`~multidb.ReadOnlyError` before any SQL is sent;
    so does an explicit ``bind``, which would bypass routing. A SELECT that
    writes from inside (a data-modifying CTE, ``INTO``, ``nextval()``) is
    refused the same way by the read-only guard, as its compiled SQL is about
    to be sent. Its connection is in the backend's read-only mode too, also
    on a primary.
    """

    _read_only = True

    def _nothing_to_commit(self) -> bool:
        return True

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        database: str | None = None,
        **kwargs: Any,
    ) -> Engine | Connection:
        single = self._single
        if single is not None and not self._first and single.bind is not None:
            return single.bind  # a later statement of this session: the chosen engine
        return self._read_bind(single or self._reader_for(mapper, clause, database))

    def connection(self, bind_arguments: Any = None, execution_options: Any = None) -> Connection:
        _refuse_bind(self, bind_arguments)
        return super().connection(bind_arguments, execution_options)


def _databases(session: _ReplicaReads) -> str:
    """The database(s) a session serves, for messages."""
    if session.multidb_reads is not None:
        return session.multidb_reads.database
    return ", ".join(session._sources) or "no database"


def _refuse_write(session: _ReplicaReads, statement: Any, kwargs: dict[str, Any]) -> None:
    """A read session's check of a statement, before anything is sent: a write, or an
    explicit bind, raises :class:`~multidb.ReadOnlyError`."""
    bind_arguments = kwargs.get("bind_arguments")
    if bind_arguments:
        _refuse_bind(session, bind_arguments)
    if (
        classify(statement, inner=False) is Kind.WRITE
        or _role_option(statement, kwargs.get("execution_options")) == "write"
    ):
        raise ReadOnlyError(
            f"{_databases(session)}: a read session cannot run "
            f"{_describe(statement)}; nothing was sent: run it in a session "
            "with role='write' or 'auto'"
        )


def _refuse_bind(session: _ReplicaReads, bind_arguments: Any) -> None:
    if bind_arguments and bind_arguments.get("bind") is not None:
        raise ReadOnlyError(
            f"{_databases(session)}: a read session chooses its own engine; "
            "an explicit bind would bypass its read-only setup, nothing was sent: use "
            "dbs.session(ENGINE_NAME, role='read') to read from one engine"
        )


@event.listens_for(ReadSession, "before_flush", propagate=True)
def _refuse_flush(session: Session, flush_context: _UOWTransaction, instances: Any) -> None:
    if session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
        assert isinstance(session, ReadSession)
        raise ReadOnlyError(
            f"{_databases(session)}: a read session cannot flush changes "
            f"({len(session.new)} new, {len(session.dirty)} changed, {len(session.deleted)} "
            "deleted); nothing was sent: make them in a session with role='write' or 'auto'"
        )


@event.listens_for(ReadSession, "after_begin", propagate=True)
def _read_only_on_primary(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    # Replica connections are read-only from the moment they connect; a primary's
    # read-only view (ReadSource.read_only_primary) marks the transactions to make so.
    if connection.get_execution_options().get(READ_ONLY_OPTION) is True:
        begin_read_only(connection)


class AutoSession(_ReplicaReads):
    """A session that reads from a replica until its first write, then stays on the primary."""

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        database: str | None = None,
        multidb_kind: Kind | None = None,
        **kwargs: Any,
    ) -> Engine | Connection:
        """The engine for one statement, by the first rule that applies:

        1. once the session has sent anything to the database's primary: that
           primary, until the session closes (commits included);
        2. ``execution_options(multidb_role="read" | "write")`` on the
           statement or the ``execute()`` call: a replica, or the primary;
        3. no statement (a flush, ``Session.connection()``): the primary;
        4. a SELECT without FOR UPDATE/SHARE, Core, ORM or textual: the
           session's replica (see :meth:`ReadSource.pick`; a database without
           replicas reads from its primary); one whose SQL the replica's
           read-only guard refuses (a data-modifying CTE, ``INTO``,
           ``nextval()``) goes to the primary instead, nothing having been sent;
        5. anything else: the primary.

        A session of several databases (``dbs.session(None, role="auto")``)
        first finds the statement's database, and applies the rules per database.
        """
        reader = self._single or self._reader_for(mapper, clause, database)
        source = reader.source
        if not reader.on_primary:
            if multidb_kind is None:
                multidb_kind = _kind(clause, None)
            if multidb_kind is Kind.READ:
                if reader.bind is not None and not self._first and reader is self._single:
                    return reader.bind  # a later statement of this session: the chosen engine
                return self._read_bind(reader)
            reader.on_primary = True
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s: %s -> %s (auto: first statement that is not a read)",
                    source.database,
                    _describe(clause),
                    source.primary,
                )
        self._bound = None
        return source.engine(source.primary)  # type: ignore[no-any-return]

    def _nothing_to_commit(self) -> bool:
        """Whether every statement went to a replica (read-only): nothing to commit."""
        for reader in self._all_readers():
            if reader.on_primary or reader.name == reader.source.primary:
                return False
        return True

    def _execute_internal(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        """Pass rule 2's option of the ``execute()`` call on to :meth:`get_bind`, which
        sees only the statement; send a SELECT its replica refused to the primary."""
        options = kwargs.get("execution_options")
        if options and "multidb_role" in options:
            bind_arguments = kwargs.get("bind_arguments") or {}
            kwargs["bind_arguments"] = {**bind_arguments, "multidb_kind": _kind(statement, options)}
        try:
            return super()._execute_internal(statement, *args, **kwargs)
        except ReadOnlyError as exc:
            if not self._to_primary(statement, options, exc):
                raise
        return super()._execute_internal(statement, *args, **kwargs)

    def _to_primary(self, statement: Any, options: Any, exc: ReadOnlyError) -> bool:
        """Whether a statement the read-only guard refused on a replica goes to the primary.

        Rule 4 reads a SELECT by its shape; what it holds inside (a
        data-modifying CTE, ``INTO``, ``nextval()``) is left to the guard,
        which refuses it before it is sent. Such a SELECT is not a read: like
        any other statement (rule 5) it goes to the primary, and so does the
        rest of the session. One that ``multidb_role="read"`` sent to the
        replica is refused.
        """
        reader = self._single or self._bound
        if reader is None or reader.on_primary or _role_option(statement, options) is not None:
            return False
        reader.on_primary = True
        log.debug(
            "%s: %s -> %s (auto: it writes: %s)",
            reader.source.database,
            _describe(statement),
            reader.source.primary,
            exc,
        )
        return True


class RoutedSession(_ReplicaReads):
    """A write session of several databases: each statement on its database's primary.

    ``dbs.session(None, role="write")``: the database comes from
    ``bind_arguments={"database": NAME}``, else the registry's routes
    (:meth:`~multidb.Registry.route`). A commit commits each primary in turn,
    or two-phase with ``twophase=True`` in the databases' ``session:`` options.
    """

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        database: str | None = None,
        **kwargs: Any,
    ) -> Engine | Connection:
        source = self._reader_for(mapper, clause, database).source
        return source.engine(source.primary)  # type: ignore[no-any-return]


def _kind(statement: Any, execution_options: Any) -> Kind:
    """Where an auto session sends ``statement``: its ``multidb_role`` option, else what it is."""
    if statement is None:  # a flush, or Session.connection()
        return Kind.WRITE
    role = _role_option(statement, execution_options)
    if role is None:
        return classify(statement, inner=False)  # a SELECT that writes inside: _to_primary
    return Kind.READ if role == "read" else Kind.WRITE


def _role_option(statement: Any, execution_options: Any) -> Any:
    """``multidb_role`` from the ``execute()`` call, else from the statement; checked."""
    role = execution_options.get("multidb_role") if execution_options else None
    if role is None:
        options = getattr(statement, "get_execution_options", None)
        role = options().get("multidb_role") if options is not None else None
    if role is not None and role not in ("read", "write"):
        raise RoutingError(
            f"execution option multidb_role={role!r} is not a role a statement can take: "
            "use 'read' or 'write'"
        )
    return role


def _describe(statement: Any) -> str:
    if statement is None:
        return "a flush"
    text = getattr(statement, "text", None)
    if isinstance(text, str):
        return repr(" ".join(text.split())[:60])
    return f"a {type(statement).__name__} statement"
