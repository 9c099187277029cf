"""Test helpers: ``dbs.testing.record()``, ``dbs.testing.lag()``, ``dbs.testing.mirror()``.

For an application's own tests (the pytest plugin, :mod:`multidb.pytest_plugin`,
hands out a registry and a recorder)::

    def test_listing_reads_from_a_replica(multidb_registry):
        with multidb_registry.testing.record() as statements:
            client.get("/users")
        assert {s.role for s in statements} == {"read"}

    def test_signup_then_profile(multidb_registry):
        with multidb_registry.testing.mirror():     # replicas see the test's rows
            client.post("/signup", data={"name": "ada"})
            assert client.get("/users/ada").status_code == 200
                                                    # and everything is rolled back
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, orm
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction

from .config import Role
from .observe import Observer, Routed
from .sessions import ReadSession, ReadSource

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Recording", "Testing"]

_READ_ONLY = "multidb_read_only"


class Recording(list[Routed]):
    """The statements sent while :meth:`Testing.record` was open, in order."""

    @property
    def engines(self) -> list[str]:
        """The engine of each statement, in order."""
        return [r.engine for r in self]

    def __repr__(self) -> str:
        return f"<Recording of {len(self)} statements: {', '.join(self.engines)}>"


class Testing:
    """Test helpers of one registry: ``dbs.testing``."""

    def __init__(self, dbs: Registry) -> None:
        self._dbs = dbs

    @contextlib.contextmanager
    def record(self) -> Iterator[Recording]:
        """Record every statement sent in the block: engine, role, reason, SQL.

        Statements are observed with SQLAlchemy engine events installed for
        the block only (see :mod:`multidb.observe`); the lag monitor's
        probes are left out.
        """
        recording = Recording()
        observer = Observer(self._dbs, recording.append)
        observer.install()
        try:
            yield recording
        finally:
            observer.remove()

    @contextlib.contextmanager
    def lag(self, name: str, seconds: float | None) -> Iterator[None]:
        """Make the router treat replica ``name`` as ``seconds`` behind (None: unknown).

        Exactly as if the lag monitor had measured it, and kept measuring it,
        for the block: with ``routing.max_lag_seconds`` below it (or None) the
        replica leaves rotation. Real measurements resume after the block.
        """
        router = self._dbs._routers[self._database_of_replica(name)]
        router.force_lag(name, seconds)
        try:
            yield
        finally:
            router.release_lag(name)

    def _database_of_replica(self, name: str) -> str:
        for engine in self._dbs.config.engines():
            if engine.name == name and engine.role == "replica":
                return engine.database
        from .errors import UnknownNameError

        replicas = [e.name for e in self._dbs.config.engines() if e.role == "replica"]
        raise UnknownNameError(name, replicas, kind="replica")

    @contextlib.contextmanager
    def mirror(self) -> Iterator[None]:
        """Serve every session of the block from one test transaction per database.

        Each database's primary gets one connection and one transaction for
        the block; every session (write, read, auto, several databases)
        works in a SAVEPOINT of it, replicas included, so rows a test wrote
        are visible to read sessions, and all of it is rolled back at the
        end (Django's ``TEST: MIRROR``, Rails' shared pool). Read sessions
        stay read-only: besides their own checks, a write sent on the
        connection while a read session holds it is refused before it is
        sent. One thread at a time, as a test runs.
        """
        dbs = self._dbs
        makers = _every_factory(dbs)
        shared: dict[str, _TestConnection] = {}
        saved: list[tuple[orm.sessionmaker[Session], dict[str, Any]]] = []
        try:
            for name, database in dbs.config.databases.items():
                shared[name] = _TestConnection.open(dbs.engine(database.primary.name))
            databases = {dbs.engine(e.name): e.database for e in dbs.config.engines()}
            for maker in makers:
                saved.append((maker, dict(maker.kw)))
                maker.kw.update(_mirrored(maker.kw, shared, databases))
            event.listen(ReadSession, "after_begin", _read_begins, propagate=True)
            event.listen(ReadSession, "after_transaction_end", _read_ends, propagate=True)
            yield
        finally:
            event.remove(ReadSession, "after_begin", _read_begins)
            event.remove(ReadSession, "after_transaction_end", _read_ends)
            for maker, kw in saved:
                maker.kw.clear()
                maker.kw.update(kw)
            for connection in shared.values():
                connection.discard()


def _every_factory(dbs: Registry) -> list[orm.sessionmaker[Session]]:
    """Every session factory the registry hands out, resolved now so each can be mirrored."""
    roles: tuple[Role, ...] = ("write", "read", "auto")
    for name in dbs.databases:
        for role in roles:
            dbs.sessionmaker(name, role)
    for role in roles:
        dbs.sessionmaker(None, role)
    for engine in dbs.config.engines():
        dbs.sessionmaker(engine.name)
        dbs.sessionmaker(engine.name, "read")
    found: dict[int, orm.sessionmaker[Session]] = {}
    for maker in [*dbs._makers.values(), *dbs._routed.values(), *dbs._factories.values()]:
        found[id(maker)] = maker
    return list(found.values())


def _mirrored(
    kw: Mapping[str, Any], shared: Mapping[str, Connection], databases: Mapping[Engine, str]
) -> dict[str, Any]:
    """A factory's keyword arguments, with every engine replaced by its test connection."""
    changes: dict[str, Any] = {"join_transaction_mode": "create_savepoint"}
    bind = kw.get("bind")
    if isinstance(bind, Engine) and bind in databases:
        changes["bind"] = shared[databases[bind]]
    reads = kw.get("multidb_reads")
    if reads is not None:
        changes["multidb_reads"] = _mirrored_source(reads, shared)
    several = kw.get("multidb_databases")
    if several is not None:
        changes["multidb_databases"] = {
            name: _mirrored_source(source, shared) for name, source in several.items()
        }
    return changes


def _mirrored_source(source: ReadSource, shared: Mapping[str, Connection]) -> ReadSource:
    """``source`` with every engine of its database served by the test connection."""
    mirrored = copy.copy(source)
    connection = shared[source.database]
    mirrored.engine = lambda name: connection
    mirrored.read_your_writes = False  # one transaction: every read sees every write
    return mirrored


class _TestConnection(Connection):
    """The one connection of a database in :meth:`Testing.mirror`: sessions borrow it.

    Sessions get it where they would get an engine or a connection of their
    own, so ``connect()`` lends it and ``close()`` gives nothing back; only
    :meth:`discard` ends it, rolling back everything the test did.
    """

    # What multidb.observe looks for, and readonly.begin_read_only: a read session's
    # server-side mode would outlive its savepoint here (SQLite's PRAGMA) or end the
    # test transaction (MySQL's START TRANSACTION); the guard flag does that job.
    multidb_mirror = True

    @classmethod
    def open(cls, engine: Engine) -> _TestConnection:
        connection = cls(engine)
        connection.begin()
        if engine.dialect.name == "sqlite":
            # pysqlite begins lazily and savepoints need a real transaction first.
            connection.exec_driver_sql("BEGIN")
        return connection

    def connect(self) -> _TestConnection:
        return self

    def close(self) -> None:
        """Borrowed: stays open for the test."""

    def discard(self) -> None:
        """Roll back the test transaction and give the connection back to its pool."""
        try:
            self.rollback()
        finally:
            super().close()


def _read_begins(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    """A read session took a test connection: writes on it are refused until it ends."""
    if isinstance(connection, _TestConnection):
        connection.execution_options(**{_READ_ONLY: True})
        session.info.setdefault("multidb_mirrored", []).append(connection)


def _read_ends(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        for connection in session.info.pop("multidb_mirrored", ()):
            connection.execution_options(**{_READ_ONLY: False})
