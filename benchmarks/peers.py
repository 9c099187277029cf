"""multidb's read and auto sessions next to other libraries' replica routing, on W1 (SQLite).

    python benchmarks/peers.py [--rounds 7] [--n 1000] [--icount-n 300] [--layouts 3]
                               [--measure wall,instructions] [--contenders NAME,...]

W1 of ``overhead.py``: open a session, ``execute(select(1)).scalar()``, end the
block. Each contender gets its session the way its library documents, with a
primary and one read replica (the SQLite file opened ``mode=ro``) configured:

- ``multidb-read`` / ``multidb-auto``: ``registry.session("main", role=...)``.
- ``routing``: SQLAlchemy's documented ``RoutingSession`` recipe (``overhead.py``).
- ``flask-sqlalchemy``: ``SQLALCHEMY_BINDS = {"replica": ...}``; binds route by a
  model's bind key and ``select(1)`` has none, so the statement names its bind as
  the Flask-SQLAlchemy docs show (``bind_arguments={"bind": db.engines["replica"]}``),
  in an app context pushed per operation (its teardown removes ``db.session``).
  ``flask-appctx`` is the Flask floor: a plain session in the same app context.
- ``advanced-alchemy``: ``SQLAlchemySyncConfig(routing_config=RoutingConfig(...))``
  and ``config.get_session()``; its ``RoutingSyncSession`` sends reads to the
  ``read`` group.
- ``sqlalchemy-bind-manager``: no routing, named binds: ``get_session("replica")``,
  ``begin()``, close (its repositories read so: autobegin is off, no commit).
- ``falcon-sqla``: ``Manager`` with the replica added as ``EngineRole.READ``
  (``read_from_rw_engines = False``) and ``session_scope(req, resp)`` with a GET
  request built once by ``falcon.testing.create_req`` (no HTTP server, no app:
  the manager routes by ``req.method``).

Each ratio is against the plain session (``overhead.Scope``: commit, close) on
the engine the contender's statement ran on, which is checked: ``floor-read``
for all of them. ``floor-read-close`` is the same session closed without a
commit, as a block that only read ends in multidb, advanced-alchemy,
sqlalchemy-bind-manager and Flask-SQLAlchemy: the floor those compare with.
Two measures: wall-clock (interleaved rounds, median, as ``overhead.run``) and
CPU instructions of the main thread under callgrind (``BASE`` and ``BASE + n``
operations, as ``instructions.py``; median of ``--layouts``). Instruction counts
do not drift with machine load; wall-clock does. Peers that are not installed
are listed and skipped.
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
overhead = importlib.import_module("overhead")
instructions_script = importlib.import_module("instructions")

__all__ = ["CONTENDERS", "main"]

BASE: int = instructions_script.BASE
Batch = Callable[[int], float]  # runs n W1 operations, returns the seconds they took
Backend = Any  # overhead.Backend


@dataclass(frozen=True)
class Contender:
    """One way of getting a session; a peer names the PyPI package it needs."""

    name: str
    floor: str
    build: Callable[[Backend], Any]  # a context manager yielding the contender's Batch
    package: str | None = None  # PyPI distribution
    module: str | None = None  # what it imports
    peer: bool = True  # counted when asking whether multidb is ahead of every peer


def _w1(open_session: Any, backend: Backend) -> Batch:
    """``overhead.w1`` on an opener."""
    return lambda n: float(overhead.w1(open_session, n, backend.ids))


def _engines(backend: Backend) -> tuple[Engine, Engine]:
    write, read = create_engine(backend.primary_url), create_engine(backend.replica_url)
    backend.connect_hook(write)
    backend.connect_hook(read)
    return write, read


@contextmanager
def _floor(backend: Backend, read: bool) -> Iterator[Batch]:
    write_engine, read_engine = _engines(backend)
    try:
        yield _w1(
            overhead.Scope.opener(sessionmaker(bind=read_engine if read else write_engine)), backend
        )
    finally:
        write_engine.dispose()
        read_engine.dispose()


@contextmanager
def _floor_close(backend: Backend) -> Iterator[Batch]:
    """The replica floor's session, closed at the end of the block without a commit."""
    write_engine, read_engine = _engines(backend)
    try:
        yield _w1(sessionmaker(bind=read_engine), backend)  # Session.__exit__: close()
    finally:
        write_engine.dispose()
        read_engine.dispose()


@contextmanager
def _multidb(backend: Backend, role: str) -> Iterator[Batch]:
    # Under callgrind the health monitor sleeps after its first round (see instructions.py).
    interval = {"check_interval_seconds": 3600} if os.environ.get("PEERS_CHILD") else {}
    registry = overhead.make_registry(backend, lag=False, **interval)
    try:
        yield _w1(overhead.multidb_opener(registry, role), backend)
    finally:
        registry.dispose()


@contextmanager
def _routing(backend: Backend) -> Iterator[Batch]:
    write, read = _engines(backend)
    maker = sessionmaker(class_=overhead.RoutingSession, leader=write, followers=[read])
    try:
        yield _w1(overhead.Scope.opener(maker), backend)
    finally:
        write.dispose()
        read.dispose()


def _flask_app(backend: Backend) -> tuple[Any, Any]:
    """A Flask app whose Flask-SQLAlchemy has the primary and a ``replica`` bind."""
    flask = importlib.import_module("flask")
    flask_sqlalchemy = importlib.import_module("flask_sqlalchemy")
    app = flask.Flask("peers")
    app.config["SQLALCHEMY_DATABASE_URI"] = backend.primary_url
    app.config["SQLALCHEMY_BINDS"] = {"replica": backend.replica_url}
    db = flask_sqlalchemy.SQLAlchemy(app)
    with app.app_context():
        for engine in db.engines.values():
            backend.connect_hook(engine)
    return app, db


def _dispose_flask(app: Any, db: Any) -> None:
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@contextmanager
def _flask_sqlalchemy(backend: Backend) -> Iterator[Batch]:
    app, db = _flask_app(backend)

    def batch(n: int) -> float:
        statement = select(1)
        start = time.perf_counter()
        for _ in range(n):
            with app.app_context():  # its teardown calls db.session.remove(): close
                db.session.execute(
                    statement, bind_arguments={"bind": db.engines["replica"]}
                ).scalar()
        return time.perf_counter() - start

    try:
        yield batch
    finally:
        _dispose_flask(app, db)


class _AppScope:
    """``overhead.Scope`` inside a Flask app context: the Flask floor."""

    __slots__ = ("_app", "_context", "_scope")

    def __init__(self, app: Any, maker: sessionmaker[Any]) -> None:
        self._app = app
        self._scope = overhead.Scope(maker)

    def __enter__(self) -> Session:
        self._context = self._app.app_context()
        self._context.push()
        session: Session = self._scope.__enter__()
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._scope.__exit__(exc_type, exc, tb)
        finally:
            self._context.pop()


@contextmanager
def _flask_appctx(backend: Backend) -> Iterator[Batch]:
    app, db = _flask_app(backend)
    write, read = _engines(backend)
    maker = sessionmaker(bind=read)
    try:
        yield _w1(lambda: _AppScope(app, maker), backend)
    finally:
        _dispose_flask(app, db)
        write.dispose()
        read.dispose()


@contextmanager
def _advanced_alchemy(backend: Backend) -> Iterator[Batch]:
    config_module = importlib.import_module("advanced_alchemy.config")
    routing = importlib.import_module("advanced_alchemy.config.routing")
    config = config_module.SQLAlchemySyncConfig(
        routing_config=routing.RoutingConfig(
            primary_connection_string=backend.primary_url,
            read_replicas=[backend.replica_url],
        )
    )
    maker = config.create_session_maker()  # a RoutingSyncSessionMaker
    for engine in (maker.primary_engine, *maker.replica_engines):
        backend.connect_hook(engine)
    try:
        yield _w1(config.get_session, backend)  # closes; no commit
    finally:
        maker.close_all()


@contextmanager
def _bind_manager(backend: Backend) -> Iterator[Batch]:
    sbm = importlib.import_module("sqlalchemy_bind_manager")
    manager = sbm.SQLAlchemyBindManager(
        {
            "default": sbm.SQLAlchemyConfig(engine_url=backend.primary_url),
            "replica": sbm.SQLAlchemyConfig(engine_url=backend.replica_url),
        }
    )
    for name in ("default", "replica"):
        backend.connect_hook(manager.get_bind(name).engine)

    def batch(n: int) -> float:
        statement = select(1)
        start = time.perf_counter()
        for _ in range(n):
            with manager.get_session("replica") as session:
                session.begin()  # autobegin is off; reads do not commit
                session.execute(statement).scalar()
        return time.perf_counter() - start

    try:
        yield batch
    finally:
        manager.dispose_engines()


@contextmanager
def _falcon_sqla(backend: Backend) -> Iterator[Batch]:
    falcon = importlib.import_module("falcon")
    falcon_testing = importlib.import_module("falcon.testing")
    falcon_sqla = importlib.import_module("falcon_sqla")
    write, read = _engines(backend)
    manager = falcon_sqla.Manager(write)
    manager.session_options.read_from_rw_engines = False  # before add_engine: it filters then
    manager.add_engine(read, falcon_sqla.EngineRole.READ)
    req, resp = falcon_testing.create_req(method="GET"), falcon.Response()

    def batch(n: int) -> float:
        statement = select(1)
        start = time.perf_counter()
        for _ in range(n):
            with manager.session_scope(req, resp) as session:  # commits on success, closes
                session.execute(statement).scalar()
        return time.perf_counter() - start

    try:
        yield batch
    finally:
        write.dispose()
        read.dispose()


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("floor-write", "floor-write", lambda b: _floor(b, read=False), peer=False),
        Contender("floor-read", "floor-read", lambda b: _floor(b, read=True), peer=False),
        Contender("floor-read-close", "floor-read", _floor_close, peer=False),
        Contender("multidb-read", "floor-read", lambda b: _multidb(b, "read"), peer=False),
        Contender("multidb-auto", "floor-read", lambda b: _multidb(b, "auto"), peer=False),
        Contender("routing", "floor-read", _routing),
        Contender(
            "flask-sqlalchemy",
            "floor-read",
            _flask_sqlalchemy,
            "flask-sqlalchemy",
            "flask_sqlalchemy",
        ),
        Contender(
            "flask-appctx",
            "floor-read",
            _flask_appctx,
            "flask-sqlalchemy",
            "flask_sqlalchemy",
            False,
        ),
        Contender(
            "advanced-alchemy",
            "floor-read",
            _advanced_alchemy,
            "advanced-alchemy",
            "advanced_alchemy",
        ),
        Contender(
            "sqlalchemy-bind-manager",
            "floor-read",
            _bind_manager,
            "sqlalchemy-bind-manager",
            "sqlalchemy_bind_manager",
        ),
        Contender("falcon-sqla", "floor-read", _falcon_sqla, "falcon-sqla", "falcon_sqla"),
    )
}
PACKAGES = {  # distribution: the framework it comes with, or a note
    "flask-sqlalchemy": "Flask",
    "advanced-alchemy": None,
    "sqlalchemy-bind-manager": None,
    "falcon-sqla": "falcon",
}
WIDTH = 25


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unavailable(contender: Contender) -> str | None:
    """Why ``contender`` cannot run here (its package is missing or fails to import), or None."""
    if contender.module is None or contender.package is None:
        return None
    if importlib.util.find_spec(contender.module) is None:
        return f"not installed (pip install {contender.package})"
    try:
        importlib.import_module(contender.module)
    except Exception as exc:  # any import failure: say which
        return f"fails to import: {type(exc).__name__}: {exc}"
    return None


def peers_line() -> str:
    """The peers' versions, or how to install them."""
    parts = []
    for distribution, framework in PACKAGES.items():
        version = _version(distribution)
        if version is None:
            parts.append(f"{distribution} not installed")
            continue
        extra = f" ({framework} {_version(framework)})" if framework else ""
        parts.append(f"{distribution} {version}{extra}")
    return "peers: " + ", ".join(parts)


def machine() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


# -- which engine a contender's statement ran on ------------------------------------------


def ran_on(batch: Batch) -> str:
    """``floor-read`` or ``floor-write``: the engine one operation's statements went to.

    A listener on every ``Engine`` (this thread's statements only): run it after the
    timing, as it stays in the dispatch.
    """
    urls: list[str] = []
    thread = threading.get_ident()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.get_ident() == thread:  # not a health monitor's probe
            urls.append(
                "floor-read" if conn.engine.url.query.get("mode") == "ro" else "floor-write"
            )

    event.listen(Engine, "before_cursor_execute", record)
    try:
        batch(1)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    kinds = set(urls)
    if len(kinds) != 1:
        raise RuntimeError(f"statements went to {sorted(kinds) or 'no engine'}")
    return kinds.pop()


def preflight(names: Sequence[str]) -> dict[str, str]:
    """Contenders that fail to build or to run W1 here, with the error."""
    failed = {}
    for name in names:
        try:
            with overhead.sqlite_backend() as backend, CONTENDERS[name].build(backend) as batch:
                batch(2)
        except Exception as exc:  # a peer that cannot run: say why
            failed[name] = f"fails: {type(exc).__name__}: {exc}".splitlines()[0]
    return failed


def check_routing(names: Sequence[str], built: dict[str, Batch]) -> None:
    """Raise if a contender's W1 did not run on the engine of its floor."""
    for name in names:
        try:
            where = ran_on(built[name])
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}") from None
        if where != CONTENDERS[name].floor:
            raise RuntimeError(f"{name}: W1 ran on {where}, not {CONTENDERS[name].floor}")


# -- wall-clock ----------------------------------------------------------------------------


def wall_clock(names: Sequence[str], rounds: int, n: int) -> dict[str, float]:
    """Median seconds per operation of each contender, interleaved rounds (as overhead.run)."""
    times: dict[str, list[float]] = {name: [] for name in names}
    with overhead.sqlite_backend() as backend, ExitStack() as stack:
        built = {name: stack.enter_context(CONTENDERS[name].build(backend)) for name in names}
        warmup = max(1, min(n, 100))
        for round_ in range(-1, rounds):  # round -1 warms up and is not kept
            shift = round_ % len(names)
            for name in [*names[shift:], *names[:shift]]:
                count = warmup if round_ < 0 else n
                gc.collect()
                gc.disable()
                try:
                    seconds = contextvars.Context().run(built[name], count)
                finally:
                    gc.enable()
                if round_ >= 0:
                    times[name].append(seconds / count)
        check_routing(names, built)
    return {name: statistics.median(values) for name, values in times.items()}


# -- instructions --------------------------------------------------------------------------


def child(name: str, count: int, layout: int) -> None:
    """Run ``count`` W1 operations of one contender after a warm-up (inside callgrind)."""
    shift = [object() for _ in range(1000 * layout)]  # noqa: F841 (kept alive: a layout)
    with overhead.sqlite_backend() as backend, CONTENDERS[name].build(backend) as batch:
        gc.collect()
        gc.disable()
        batch(20)  # warm: caches, the pool, the replica choice
        batch(count)


def count_instructions(name: str, count: int, layout: int) -> int:
    """Instructions of the main thread of a child process running ``count`` operations."""
    return int(
        instructions_script.main_thread_instructions(
            [__file__, "--child", name, str(count), str(layout)], layout, {"PEERS_CHILD": "1"}
        )
    )


def instructions(names: Sequence[str], n: int, layouts: int) -> dict[str, float]:
    """Instructions per operation of each contender: median over layouts of (BASE+n - BASE)/n."""
    runs = [
        (name, count, layout)
        for name in names
        for layout in range(layouts)
        for count in (BASE, BASE + n)
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one child per core
        counts = dict(zip(runs, pool.map(lambda run: count_instructions(*run), runs), strict=True))
    return {
        name: float(
            statistics.median(
                (counts[name, BASE + n, k] - counts[name, BASE, k]) / n for k in range(layouts)
            )
        )
        for name in names
    }


# -- output --------------------------------------------------------------------------------


def table(
    title: str, unit: str, scale: float, figures: dict[str, float], skipped: dict[str, str]
) -> list[str]:
    """The lines of one table: a row per contender, then whether multidb is ahead."""
    lines = [title, f"{'workload':<9}{'contender':<{WIDTH}}{unit:>11}  {'ratio':>7}  vs"]
    for name, contender in CONTENDERS.items():
        if name in skipped:
            lines.append(f"{'W1':<9}{name:<{WIDTH}}{skipped[name]}")
        elif name in figures:
            mine, floor = figures[name], figures[contender.floor]
            lines.append(
                f"{'W1':<9}{name:<{WIDTH}}{mine * scale:>11.1f}  {mine / floor:>6.3f}x  "
                f"{contender.floor}"
            )
    peers = {name: figures[name] for name in figures if CONTENDERS[name].peer}
    ours = {name: figures[name] for name in ("multidb-read", "multidb-auto") if name in figures}
    if peers and ours:
        best = min(peers, key=peers.__getitem__)
        ahead = all(mine < peers[best] for mine in ours.values())
        lines.append(
            f"multidb ahead of every peer run: {'yes' if ahead else 'no'} "
            f"(slower of multidb-read/auto {max(ours.values()) * scale:.1f}, "
            f"fastest peer {best} {peers[best] * scale:.1f})"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, measure, print the tables; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="wall-clock rounds; default 7")
    parser.add_argument(
        "--n", type=int, default=1000, help="wall-clock ops per batch; default 1000"
    )
    parser.add_argument(
        "--icount-n", type=int, default=300, help="operations counted under callgrind; default 300"
    )
    parser.add_argument("--layouts", type=int, default=3, help="memory layouts; default 3")
    parser.add_argument(
        "--measure", default="instructions,wall", help="instructions, wall or both (default)"
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="default all")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, count, layout = args.child
        child(name, int(count), int(layout))
        return 0
    measures = set(args.measure.split(","))
    chosen = args.contenders.split(",")
    unknown = (set(chosen) - CONTENDERS.keys()) | (measures - {"instructions", "wall"})
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if min(args.rounds, args.n, args.icount_n, args.layouts) < 1:
        parser.error("--rounds, --n, --icount-n and --layouts must be at least 1")
    if "instructions" in measures and shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (or pass --measure wall)")
    needed = set(chosen) | {CONTENDERS[c].floor for c in chosen}
    skipped = {
        name: reason
        for name in CONTENDERS
        if name in needed and (reason := unavailable(CONTENDERS[name])) is not None
    }
    names = [name for name in CONTENDERS if name in needed and name not in skipped]

    skipped.update(preflight(names))
    names = [name for name in names if name not in skipped]

    print(overhead.environment())
    print(f"machine: {machine()}")
    print(peers_line())
    arguments = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: python benchmarks/peers.py {arguments}".rstrip(), flush=True)
    walls = wall_clock(names, args.rounds, args.n) if "wall" in measures else None
    if walls is None:  # the wall-clock run checks the routing after its timing; else here
        with overhead.sqlite_backend() as backend, ExitStack() as stack:
            check_routing(
                names, {n: stack.enter_context(CONTENDERS[n].build(backend)) for n in names}
            )
    if "instructions" in measures:
        title = (
            f"backend sqlite, W1: instructions per operation, main thread "
            f"({BASE + args.icount_n} - {BASE} ops), median of {args.layouts} layouts"
        )
        figures = instructions(names, args.icount_n, args.layouts)
        print("\n" + "\n".join(table(title, "k instr/op", 1e-3, figures, skipped)))
    if walls is not None:
        title = (
            f"backend sqlite, W1: wall-clock, median of {args.rounds} interleaved rounds "
            f"x {args.n} ops"
        )
        print("\n" + "\n".join(table(title, "us/op", 1e6, walls, skipped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
