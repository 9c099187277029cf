"""Throw-away PostgreSQL and MariaDB replication clusters for the test suite.

Everything started here lives in a directory the caller passes in, listens on
127.0.0.1 on a free port, and is stopped by the objects that started it (plus
an ``atexit`` / SIGTERM safety net). Nothing here touches a server it did not
start.

    cluster = start_postgres_cluster(Path(tempfile.mkdtemp()))
    try:
        cluster.primary.query("CREATE TABLE t (id int)", admin=False)
        cluster.wait_caught_up()
    finally:
        cluster.stop()

PostgreSQL refuses to run as root: when the harness runs as root, PostgreSQL
commands run as the ``postgres`` system user (via ``runuser``) and MariaDB as
``mysql`` (``mariadbd --user=mysql``); each server's directory is chowned to
that user. As any other user, everything runs as the current user.

Admin SQL uses psycopg2 / PyMySQL directly (short connect timeouts), never
SQLAlchemy.

API: ``start_postgres_cluster(base, standbys=2)`` / ``start_mariadb_cluster(base,
replicas=1)`` return a cluster with ``primary``, ``replicas`` (PostgreSQL also
``standbys``), ``servers``, ``server(name)``, ``wait_caught_up(timeout=10)`` and
``stop()``. Each server has ``name``, ``host``, ``port``, ``url()``, ``admin_url()``,
``query(sql, params, admin=True)``, ``connect(admin=True)``, ``stop(crash=True)``,
``start()``, ``is_running()``; replicas also ``pause_replay()``, ``resume_replay()``,
``replay_paused`` and ``apply_delay(seconds)`` (a context manager: real apply lag via
``recovery_min_apply_delay`` / ``MASTER_DELAY``). ``frozen()`` (every server) is a
context manager that SIGSTOPs all the server's processes, a hung server whose kernel
still accepts and acknowledges TCP, and SIGCONTs them on exit. ``wait_until(predicate, timeout)``
replaces sleeps in tests; ``*_binaries_missing()`` say why servers cannot run here
(None when they can).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol

__all__ = [
    "APP_DATABASE",
    "APP_PASSWORD",
    "APP_USER",
    "HOST",
    "ClusterStartError",
    "MariaDBCluster",
    "MariaDBServer",
    "PostgresCluster",
    "PostgresServer",
    "mariadb_binaries_missing",
    "postgres_binaries_missing",
    "server_binaries_missing",
    "start_mariadb_cluster",
    "start_postgres_cluster",
    "wait_until",
]

HOST = "127.0.0.1"
APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DATABASE = "app"
MARIADB_REPL_USER = "repl"
MARIADB_REPL_PASSWORD = "repl-secret"

CONNECT_TIMEOUT = 3  # seconds, for every admin / app connection made here
START_TIMEOUT = 60.0  # seconds for one server to accept connections
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; keep a margin


class ClusterStartError(RuntimeError):
    """A server or cluster could not be set up; the message includes log output."""


# --------------------------------------------------------------------------- helpers


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> None:
    """Poll ``predicate`` every ``interval`` s until it is true.

    Raises ``AssertionError(message)`` when it is still false after ``timeout`` s.
    Exceptions raised by ``predicate`` propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition still false after {timeout:g}s")
        time.sleep(interval)


def _succeeds(fn: Callable[[], object]) -> Callable[[], bool]:
    """A predicate that is true when ``fn()`` returns without raising."""

    def predicate() -> bool:
        try:
            fn()
        except Exception:
            return False
        return True

    return predicate


def _quietly(fn: Callable[[], bool]) -> Callable[[], bool]:
    """A predicate that is ``fn()``, or false when ``fn()`` raises."""

    def predicate() -> bool:
        try:
            return fn()
        except Exception:
            return False

    return predicate


_ports_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind port 0)."""
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, 0))
                port: int = sock.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        queue += children.get(current, [])
    return tree


@contextlib.contextmanager
def _frozen(pid: int | None, name: str) -> Iterator[None]:
    """SIGSTOP ``pid`` and its descendants (parent first: it forks no more), SIGCONT on exit."""
    if pid is None:
        raise RuntimeError(f"{name} is not running")
    stopped: list[int] = []
    try:
        for process in _process_tree(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGSTOP)
                stopped.append(process)
        yield
    finally:
        for process in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGCONT)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class _RunAs:
    """Who runs a server's processes: a system user when we are root, else ourselves."""

    user: str | None
    uid: int
    gid: int

    @classmethod
    def for_server(cls, system_user: str) -> _RunAs:
        if os.geteuid() != 0:
            return cls(None, os.getuid(), os.getgid())
        entry = pwd.getpwnam(system_user)
        return cls(system_user, entry.pw_uid, entry.pw_gid)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        if self.user is None:
            return list(argv)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", self.user, "--", *argv]

    def own(self, path: Path) -> None:
        """Give ``path`` (recursively) to the server user."""
        if self.user is None:
            return
        os.chown(path, self.uid, self.gid)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                for entry in (*dirs, *files):
                    os.lchown(os.path.join(root, entry), self.uid, self.gid)

    def make_dir(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        self.own(path)
        return path


def _prepare_base(base: Path, run_as: _RunAs) -> Path:
    """Create ``base`` (mode 0755) and check the server user can reach it."""
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    if run_as.user is not None:
        for parent in base.parents:
            st = parent.stat()
            if not st.st_mode & 0o001 and st.st_uid != run_as.uid:
                raise ClusterStartError(
                    f"{parent} (mode {st.st_mode & 0o777:o}) cannot be traversed by the "
                    f"{run_as.user} user that runs the servers; use a base directory such "
                    f"as tempfile.mkdtemp() under a world-traversable parent"
                )
    return base


def _socket_dir(preferred: Path, run_as: _RunAs, name: str) -> tuple[Path, bool]:
    """``preferred`` if a socket path in it is short enough, else a fresh short temp dir.

    Returns ``(dir, is_private_temp_dir)``; the caller removes a private temp dir.
    """
    if len(str(preferred)) + 24 <= _MAX_SOCKET_PATH:
        return preferred, False
    path = Path(tempfile.mkdtemp(prefix=f"mdb-{name}-", dir="/tmp"))
    path.chmod(0o755)
    run_as.own(path)
    return path, True


def _run(argv: Sequence[str], *, cwd: Path, what: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise ClusterStartError(
            f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return proc.stdout


# --------------------------------------------------------------------------- safety net


class _Stoppable(Protocol):
    name: str

    def stop(self, crash: bool = True) -> None: ...


_live: dict[int, _Stoppable] = {}
_live_lock = threading.RLock()  # re-entrant: the SIGTERM handler may interrupt a holder
_safety_net: set[str] = set()  # which of "atexit" / "sigterm" are installed


def _install_safety_net() -> None:
    """Crash-stop our servers at interpreter exit and on SIGTERM (if nobody handles it).

    On SIGTERM the servers are stopped at once and ``KeyboardInterrupt`` is raised,
    so pytest tears down as after Ctrl-C.
    """
    with _live_lock:
        if "atexit" not in _safety_net:
            _safety_net.add("atexit")
            atexit.register(_stop_all_live)
        if "sigterm" in _safety_net or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        _safety_net.add("sigterm")
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)


def _register(server: _Stoppable) -> None:
    _install_safety_net()
    with _live_lock:
        _live[id(server)] = server


def _unregister(server: _Stoppable) -> None:
    with _live_lock:
        _live.pop(id(server), None)


def _stop_all_live() -> None:
    """Crash-stop every server this process started and did not stop yet."""
    with _live_lock:
        servers = list(_live.values())
    for server in reversed(servers):
        with contextlib.suppress(Exception):
            server.stop(crash=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Stop our servers now, then unwind like Ctrl-C so finalizers (temp dirs) run too."""
    _stop_all_live()
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- binaries


def _pg_bindir() -> Path | None:
    required = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
    if env := os.environ.get("MULTIDB_PG_BINDIR"):  # explicit: only there
        bindir = Path(env)
        return bindir if all((bindir / exe).is_file() for exe in required) else None
    candidates = [Path("/usr/lib/postgresql/15/bin")]
    versioned = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versioned, key=lambda p: int(p.parent.name), reverse=True)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if all((candidate / exe).is_file() for exe in required):
            return candidate
    return None


def _mariadb_binaries() -> tuple[str, str] | None:
    """(mariadbd, mariadb-install-db) or None; ``MULTIDB_MARIADB_BINDIR`` overrides PATH."""
    if env := os.environ.get("MULTIDB_MARIADB_BINDIR"):  # explicit: only there
        server_path, install_path = Path(env) / "mariadbd", Path(env) / "mariadb-install-db"
        if server_path.is_file() and install_path.is_file():
            return str(server_path), str(install_path)
        return None
    server = shutil.which("mariadbd") or next(
        (p for p in ("/usr/sbin/mariadbd", "/usr/libexec/mariadbd") if os.path.isfile(p)), None
    )
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if server is None or install is None:
        return None
    return server, install


def _user_problem(system_user: str) -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(system_user)
    except KeyError:
        return f"running as root but there is no {system_user!r} system user to run the server"
    if system_user == "postgres" and not (shutil.which("runuser") or Path("/usr/sbin/runuser")):
        return "running as root but runuser is missing (needed to run PostgreSQL as postgres)"
    return None


def postgres_binaries_missing() -> str | None:
    """None when PostgreSQL clusters can be started here, else why not."""
    if importlib.util.find_spec("psycopg2") is None:
        return "psycopg2 is not installed"
    if _pg_bindir() is None:
        if env := os.environ.get("MULTIDB_PG_BINDIR"):
            return f"initdb, pg_ctl, postgres or pg_basebackup missing in MULTIDB_PG_BINDIR={env}"
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup) not found "
            "in /usr/lib/postgresql/*/bin, pg_config --bindir or PATH; set MULTIDB_PG_BINDIR"
        )
    return _user_problem("postgres")


def mariadb_binaries_missing() -> str | None:
    """None when MariaDB clusters can be started here, else why not."""
    if importlib.util.find_spec("pymysql") is None:
        return "PyMySQL is not installed"
    if _mariadb_binaries() is None:
        return (
            "MariaDB server binaries (mariadbd, mariadb-install-db) not found on PATH "
            "or in MULTIDB_MARIADB_BINDIR"
        )
    return _user_problem("mysql")


def server_binaries_missing(kind: Literal["postgresql", "mariadb"] | None = None) -> str | None:
    """None when clusters of ``kind`` (default: both kinds) can be started, else why not."""
    if kind == "postgresql":
        return postgres_binaries_missing()
    if kind == "mariadb":
        return mariadb_binaries_missing()
    return postgres_binaries_missing() or mariadb_binaries_missing()


# --------------------------------------------------------------------------- PostgreSQL

_PG_CONF = """
# ---- multidb test harness ----
listen_addresses = '127.0.0.1'
max_connections = 50
shared_buffers = 16MB
work_mem = 4MB
maintenance_work_mem = 16MB
fsync = off
synchronous_commit = on
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
# Concurrent pg_basebackups each force a segment switch + checkpoint before their
# slot (-C) exists; keep recent WAL so one cannot recycle the other's start segment.
wal_keep_size = 64MB
min_wal_size = 32MB
max_wal_size = 128MB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 200ms
jit = off
timezone = 'UTC'
log_line_prefix = '%m [%p] '
log_min_messages = warning
include_if_exists = 'multidb_server.conf'
"""

_PG_HBA = """# multidb test harness: trust on loopback only
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
"""


class PostgresServer:
    """One PostgreSQL server (primary or hot standby) in its own directory."""

    host = HOST

    def __init__(
        self,
        name: str,
        directory: Path,
        port: int,
        *,
        role: Literal["primary", "standby"],
        bindir: Path,
        run_as: _RunAs,
    ) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.role = role
        self.bindir = bindir
        self.run_as = run_as
        self.data_dir = directory / "data"
        self.log_file = directory / "postgres.log"
        self.socket_dir, self._private_socket_dir = _socket_dir(directory, run_as, name)
        self.replay_paused = False

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PostgresServer {self.name} {self.host}:{self.port} {state}>"

    @property
    def is_standby(self) -> bool:
        return self.role == "standby"

    # -- URLs and connections

    def url(self, driver_password: bool = True) -> str:
        """SQLAlchemy URL for the app user (without the password if ``driver_password=False``)."""
        auth = f"{APP_USER}:{APP_PASSWORD}" if driver_password else APP_USER
        return f"postgresql+psycopg2://{auth}@{self.host}:{self.port}/{APP_DATABASE}"

    def admin_url(self) -> str:
        """SQLAlchemy URL for the ``postgres`` superuser (test setup only)."""
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/postgres"

    def connect(self, *, admin: bool = True, dbname: str | None = None) -> Any:
        """An autocommit psycopg2 connection (superuser if ``admin``, else the app user)."""
        import psycopg2

        if admin:
            conn = psycopg2.connect(
                host=self.host,
                port=self.port,
                user="postgres",
                dbname=dbname or "postgres",
                connect_timeout=CONNECT_TIMEOUT,
            )
        else:
            conn = psycopg2.connect(
                host=self.host,
                port=self.port,
                user=APP_USER,
                password=APP_PASSWORD,
                dbname=dbname or APP_DATABASE,
                connect_timeout=CONNECT_TIMEOUT,
            )
        conn.autocommit = True
        return conn

    def query(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        admin: bool = True,
        dbname: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh autocommit connection; the rows (``[]`` if none)."""
        conn = self.connect(admin=admin, dbname=dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    # -- lifecycle

    def _pg(self, exe: str, *args: str) -> list[str]:
        return self.run_as.wrap([str(self.bindir / exe), *args])

    def _write_server_conf(self) -> None:
        socket_dir = str(self.socket_dir).replace("'", "''")
        path = self.data_dir / "multidb_server.conf"
        path.write_text(
            f"port = {self.port}\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            f"cluster_name = '{self.name}'\n"
        )
        self.run_as.own(path)

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return comm.startswith(("postgres", "postmaster"))

    def start(self) -> None:
        """Start on the same port and data dir; wait until it accepts connections."""
        if self.is_running():
            return
        self.replay_paused = False  # a restarted standby replays again
        try:
            _run(
                self._pg(
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT)),
                    "-s",
                    "start",
                ),
                cwd=self.directory,
                what=f"starting {self.name}",
                timeout=START_TIMEOUT + 10,
            )
        except ClusterStartError as exc:
            raise ClusterStartError(
                f"{exc}\n--- {self.log_file}:\n{_tail(self.log_file)}"
            ) from None
        _register(self)
        wait_until(
            _succeeds(lambda: self.query("SELECT 1")),
            timeout=START_TIMEOUT,
            interval=0.05,
            message=f"{self.name} does not accept connections on port {self.port}",
        )

    def stop(self, crash: bool = True) -> None:
        """``pg_ctl stop -m immediate`` (``-m fast`` if not ``crash``); no-op if stopped."""
        if not self.is_running():
            _unregister(self)
            return
        mode = "immediate" if crash else "fast"
        try:
            _run(
                self._pg(
                    "pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "-s", "stop"
                ),
                cwd=self.directory,
                what=f"stopping {self.name}",
                timeout=70,
            )
        except (ClusterStartError, subprocess.TimeoutExpired):
            pid = self._postmaster_pid()
            if pid is not None and self.is_running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                wait_until(
                    lambda: not self.is_running(),
                    timeout=30,
                    message=f"{self.name} (pid {pid}) did not stop",
                )
        _unregister(self)

    def cleanup(self) -> None:
        """Remove a private socket dir (if one was needed)."""
        if self._private_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        """SIGSTOP the postmaster and every backend inside the block: a hung server."""
        return _frozen(self._postmaster_pid() if self.is_running() else None, self.name)

    # -- standby controls

    def _require_standby(self) -> None:
        if not self.is_standby:
            raise TypeError(f"{self.name} is a primary, not a standby")

    def pause_replay(self) -> None:
        """``pg_wal_replay_pause()``: WAL still arrives but is not applied."""
        self._require_standby()
        self.query("SELECT pg_wal_replay_pause()")
        self.replay_paused = True
        # 'pause requested' already stops replay before the next record.
        wait_until(
            lambda: self.query("SELECT pg_get_wal_replay_pause_state()")[0][0] != "not paused",
            timeout=5,
            message=f"{self.name}: replay did not pause",
        )

    def resume_replay(self) -> None:
        """``pg_wal_replay_resume()``."""
        self._require_standby()
        self.query("SELECT pg_wal_replay_resume()")
        self.replay_paused = False

    @contextlib.contextmanager
    def apply_delay(self, seconds: float) -> Iterator[None]:
        """Real apply lag: ``recovery_min_apply_delay`` (reloaded, no restart) inside the block.

        Commits become visible on this standby ``seconds`` after the primary
        committed them; WAL still streams. Restored to 0 when the block ends.
        """
        self._require_standby()
        self.query(f"ALTER SYSTEM SET recovery_min_apply_delay = '{int(seconds * 1000)}ms'")
        self.query("SELECT pg_reload_conf()")
        wait_until(
            lambda: self.query("SHOW recovery_min_apply_delay")[0][0] != "0",
            timeout=5,
            message=f"{self.name}: recovery_min_apply_delay not applied",
        )
        try:
            yield
        finally:
            self.query("ALTER SYSTEM RESET recovery_min_apply_delay")
            self.query("SELECT pg_reload_conf()")
            wait_until(
                lambda: self.query("SHOW recovery_min_apply_delay")[0][0] == "0",
                timeout=5,
                message=f"{self.name}: recovery_min_apply_delay not reset",
            )

    def is_streaming(self) -> bool:
        """Standby: in recovery and its WAL receiver is streaming from the primary."""
        rows = self.query(
            "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver) = 'streaming'"
        )
        return bool(rows[0][0]) and bool(rows[0][1])


@dataclass
class PostgresCluster:
    """A primary and its streaming hot standbys."""

    base: Path
    primary: PostgresServer
    standbys: list[PostgresServer] = field(default_factory=list)

    @property
    def replicas(self) -> list[PostgresServer]:
        """Alias of ``standbys`` (same name as on :class:`MariaDBCluster`)."""
        return self.standbys

    @property
    def servers(self) -> list[PostgresServer]:
        return [self.primary, *self.standbys]

    def server(self, name: str) -> PostgresServer:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def wait_caught_up(self, timeout: float = 10) -> None:
        """Wait until each running, non-paused standby replayed the primary's current LSN."""
        deadline = time.monotonic() + timeout
        target: str = self.primary.query("SELECT pg_current_wal_lsn()::text")[0][0]
        for standby in self.standbys:
            if standby.replay_paused or not standby.is_running():
                continue
            conn = standby.connect()
            try:
                with conn.cursor() as cur:

                    def replayed(cur: Any = cur) -> bool:
                        cur.execute(
                            "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)",
                            (target,),
                        )
                        return bool(cur.fetchone()[0])

                    wait_until(
                        replayed,
                        timeout=max(deadline - time.monotonic(), 0),
                        interval=0.02,
                        message=f"{standby.name} did not replay up to {target} within {timeout}s",
                    )
            finally:
                conn.close()

    def stop(self) -> None:
        """Stop every server (standbys first); idempotent."""
        for server in [*reversed(self.standbys), self.primary]:
            with contextlib.suppress(Exception):
                server.stop(crash=True)
        for server in self.servers:
            server.cleanup()

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _start_first_time(server: PostgresServer | MariaDBServer, attempts: int = 3) -> None:
    """Start a new server; if its port was taken meanwhile, retry on another free port."""
    for attempt in range(attempts):
        try:
            server.start()
            return
        except (ClusterStartError, AssertionError) as exc:
            text = str(exc) + _tail(server.log_file, 50)
            port_taken = re.search(r"[Aa]ddress already in use|Bind on TCP/IP port", text)
            if not port_taken or attempt == attempts - 1:
                raise
            with contextlib.suppress(Exception):
                server.stop(crash=True)
            server.port = _free_port()
            if isinstance(server, PostgresServer):
                server._write_server_conf()


def start_postgres_cluster(base: Path, standbys: int = 2) -> PostgresCluster:
    """A primary with database/role ``app`` plus ``standbys`` streaming hot standbys."""
    reason = postgres_binaries_missing()
    if reason is not None:
        raise ClusterStartError(reason)
    bindir = _pg_bindir()
    assert bindir is not None
    run_as = _RunAs.for_server("postgres")
    base = _prepare_base(base, run_as)
    _install_safety_net()

    primary = PostgresServer(
        "pg-primary",
        run_as.make_dir(base / "pg-primary", 0o700),
        _free_port(),
        role="primary",
        bindir=bindir,
        run_as=run_as,
    )
    cluster = PostgresCluster(base, primary)
    try:
        _run(
            primary._pg(
                "initdb",
                "-D",
                str(primary.data_dir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ),
            cwd=primary.directory,
            what="initdb",
        )
        with (primary.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(_PG_CONF)
        (primary.data_dir / "pg_hba.conf").write_text(_PG_HBA)
        primary._write_server_conf()
        _start_first_time(primary)
        primary.query(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
        primary.query(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}")

        def make_standby(n: int) -> PostgresServer:
            name = f"pg-standby{n}"
            standby = PostgresServer(
                name,
                run_as.make_dir(base / name, 0o700),
                _free_port(),
                role="standby",
                bindir=bindir,
                run_as=run_as,
            )
            cluster.standbys.append(standby)
            _run(
                standby._pg(
                    "pg_basebackup",
                    "-h",
                    HOST,
                    "-p",
                    str(primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(standby.data_dir),
                    "-R",
                    "-C",
                    "-S",
                    f"slot{n}",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ),
                cwd=standby.directory,
                what=f"pg_basebackup for {name}",
            )
            standby._write_server_conf()
            _start_first_time(standby)
            wait_until(
                _quietly(standby.is_streaming),
                timeout=START_TIMEOUT,
                message=f"{name} is not streaming from the primary\n{_tail(standby.log_file)}",
            )
            return standby

        if standbys:
            with ThreadPoolExecutor(max_workers=standbys) as pool:
                started = list(pool.map(make_standby, range(1, standbys + 1)))
            cluster.standbys[:] = started
        cluster.wait_caught_up(timeout=30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --------------------------------------------------------------------------- MariaDB


class MariaDBServer:
    """One MariaDB server (primary or replica) in its own directory."""

    host = HOST

    def __init__(
        self,
        name: str,
        directory: Path,
        port: int,
        *,
        role: Literal["primary", "replica"],
        server_id: int,
        binaries: tuple[str, str],
        run_as: _RunAs,
    ) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.role = role
        self.server_id = server_id
        self.mariadbd, self.install_db = binaries
        self.run_as = run_as
        self.data_dir = directory / "data"
        self.tmp_dir = directory / "tmp"
        self.log_file = directory / "error.log"
        self.pid_file = directory / "mariadbd.pid"
        sock_dir, self._private_socket_dir = _socket_dir(directory, run_as, name)
        self.socket_path = sock_dir / "mariadbd.sock"
        self.replay_paused = False
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<MariaDBServer {self.name} {self.host}:{self.port} {state}>"

    @property
    def is_replica(self) -> bool:
        return self.role == "replica"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- URLs and connections

    def url(self, driver_password: bool = True) -> str:
        """SQLAlchemy URL for the app user (without the password if ``driver_password=False``)."""
        auth = f"{APP_USER}:{APP_PASSWORD}" if driver_password else APP_USER
        return f"mysql+pymysql://{auth}@{self.host}:{self.port}/{APP_DATABASE}"

    def admin_url(self) -> str:
        """SQLAlchemy URL for MariaDB ``root`` (no password; test setup only)."""
        return f"mysql+pymysql://root@{self.host}:{self.port}/"

    def connect(self, *, admin: bool = True, database: str | None = None) -> Any:
        """An autocommit PyMySQL connection: root over the unix socket, or app over TCP."""
        import pymysql

        if admin:
            return pymysql.connect(
                unix_socket=str(self.socket_path),
                user="root",
                password="",
                database=database,
                connect_timeout=CONNECT_TIMEOUT,
                autocommit=True,
                ssl_disabled=True,  # as below
            )
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=APP_USER,
            password=APP_PASSWORD,
            database=database or APP_DATABASE,
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=True,
            # PyMySQL >= 1.2 prefers TLS: without this it builds an SSL context (the
            # system's CA store, 50 ms) for each connection, and these servers have no TLS.
            ssl_disabled=True,
        )

    def query(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        admin: bool = True,
        database: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a fresh autocommit connection; the rows (``[]`` if none)."""
        conn = self.connect(admin=admin, database=database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description is not None else []
        finally:
            conn.close()

    def slave_status(self) -> dict[str, Any]:
        """``SHOW SLAVE STATUS`` as a dict ({} when not a replica)."""
        import pymysql.cursors

        conn = self.connect()
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
                return dict(row) if row else {}
        finally:
            conn.close()

    # -- lifecycle

    def _argv(self) -> list[str]:
        argv = [self.mariadbd, "--no-defaults"]
        if self.run_as.user is not None:
            argv.append(f"--user={self.run_as.user}")
        argv += [
            f"--datadir={self.data_dir}",
            f"--log-basename={self.name}",
            f"--tmpdir={self.tmp_dir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.log_file}",
            f"--port={self.port}",
            f"--bind-address={HOST}",
            "--skip-name-resolve",
            f"--server-id={self.server_id}",
            "--binlog-format=ROW",
            "--gtid-strict-mode=ON",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--max-connections=60",
            "--open-files-limit=2048",
            "--table-open-cache=256",
            "--performance-schema=OFF",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--innodb-use-native-aio=0",
            "--sync-binlog=0",
            "--key-buffer-size=1M",
            "--loose-aria-pagecache-buffer-size=8M",
            "--loose-feedback=OFF",
            "--slave-net-timeout=10",
        ]
        if self.is_replica:
            argv.append("--read-only=ON")
        else:
            argv.append("--log-bin")
        return argv

    def install(self) -> None:
        """``mariadb-install-db`` into a fresh data dir (root without password)."""
        for path in (self.data_dir, self.tmp_dir):
            self.run_as.make_dir(path, 0o750)
        argv = [self.install_db, "--no-defaults"]
        if self.run_as.user is not None:
            argv.append(f"--user={self.run_as.user}")
        argv += [
            f"--datadir={self.data_dir}",
            f"--tmpdir={self.tmp_dir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-log-file-size=16M",
            "--innodb-buffer-pool-size=32M",
            "--innodb-use-native-aio=0",
        ]
        _run(argv, cwd=self.directory, what=f"mariadb-install-db for {self.name}")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start on the same port and data dir; wait until it accepts connections."""
        if self.is_running():
            return
        self.replay_paused = False  # a restarted replica starts its SQL thread again
        self._proc = subprocess.Popen(
            self._argv(),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to us; we stop the server
        )
        _register(self)
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise ClusterStartError(
                    f"{self.name} exited with {proc.returncode} while starting\n"
                    f"--- {self.log_file}:\n{_tail(self.log_file)}"
                )
            return _port_accepts(self.port) and _succeeds(lambda: self.query("SELECT 1"))()

        try:
            wait_until(
                ready,
                timeout=START_TIMEOUT,
                interval=0.05,
                message=f"{self.name} does not accept connections on port {self.port}",
            )
        except AssertionError as exc:
            self.stop(crash=True)
            raise ClusterStartError(
                f"{exc}\n--- {self.log_file}:\n{_tail(self.log_file)}"
            ) from None

    def stop(self, crash: bool = True) -> None:
        """SIGKILL mariadbd (SIGTERM = clean shutdown if not ``crash``) and wait for it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if crash:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        _unregister(self)

    def cleanup(self) -> None:
        """Remove a private socket dir (if one was needed)."""
        if self._private_socket_dir:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def frozen(self) -> contextlib.AbstractContextManager[None]:
        """SIGSTOP mariadbd (every thread) inside the block: a hung server."""
        return _frozen(self.pid if self.is_running() else None, self.name)

    def _create_accounts(self) -> None:
        """Local, unlogged setup: root over TCP, app and repl users, database ``app``."""
        statements = [
            "SET SESSION sql_log_bin = 0",
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
            f"CREATE DATABASE IF NOT EXISTS `{APP_DATABASE}` CHARACTER SET utf8mb4",
            f"CREATE USER IF NOT EXISTS '{MARIADB_REPL_USER}'@'127.0.0.1' "
            f"IDENTIFIED BY '{MARIADB_REPL_PASSWORD}'",
            f"GRANT REPLICATION SLAVE ON *.* TO '{MARIADB_REPL_USER}'@'127.0.0.1'",
        ]
        for host in ("%", "localhost", "127.0.0.1"):
            statements += [
                f"CREATE USER IF NOT EXISTS '{APP_USER}'@'{host}' IDENTIFIED BY '{APP_PASSWORD}'",
                f"GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO '{APP_USER}'@'{host}'",
                # SHOW SLAVE STATUS / SHOW MASTER STATUS, but no SUPER / READ_ONLY ADMIN
                f"GRANT SLAVE MONITOR, BINLOG MONITOR ON *.* TO '{APP_USER}'@'{host}'",
            ]
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    # -- replica controls

    def _require_replica(self) -> None:
        if not self.is_replica:
            raise TypeError(f"{self.name} is a primary, not a replica")

    def replicate_from(self, primary: MariaDBServer) -> None:
        """CHANGE MASTER TO the primary (GTID, slave_pos) and START SLAVE."""
        self._require_replica()
        self.query(
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
            "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, "
            "MASTER_HEARTBEAT_PERIOD=1",
            (HOST, primary.port, MARIADB_REPL_USER, MARIADB_REPL_PASSWORD),
        )
        self.query("START SLAVE")
        self.wait_threads_running()

    def threads_running(self) -> bool:
        status = self.slave_status()
        return status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"

    def wait_threads_running(self, timeout: float = 30) -> None:
        wait_until(
            self.threads_running,
            timeout=timeout,
            interval=0.05,
            message=f"{self.name}: replication threads not running: {self.slave_status()}",
        )

    @contextlib.contextmanager
    def apply_delay(self, seconds: float) -> Iterator[None]:
        """Real apply lag: ``MASTER_DELAY`` inside the block.

        Events still arrive (IO thread); each is applied at least ``seconds``
        (rounded up to whole seconds) after the primary ran it, and at most one
        second more: an event's timestamp is in whole seconds, so ``MASTER_DELAY = n``
        holds back an event committed just before a second ends by n - 1 seconds
        only, and is set one higher. Restored to 0, with the SQL thread running,
        when the block ends.
        """
        self._require_replica()
        self._set_master_delay(max(1, math.ceil(seconds)) + 1)
        try:
            yield
        finally:
            self._set_master_delay(0)

    def _set_master_delay(self, seconds: int) -> None:
        self.query("STOP SLAVE")
        self.query(f"CHANGE MASTER TO MASTER_DELAY = {seconds}")
        self.query("START SLAVE")
        self.wait_threads_running()

    def pause_replay(self) -> None:
        """``STOP SLAVE SQL_THREAD``: events still arrive (IO thread) but are not applied."""
        self._require_replica()
        self.query("STOP SLAVE SQL_THREAD")
        self.replay_paused = True

    def resume_replay(self) -> None:
        """``START SLAVE SQL_THREAD``."""
        self._require_replica()
        self.query("START SLAVE SQL_THREAD")
        self.replay_paused = False
        wait_until(
            lambda: self.slave_status().get("Slave_SQL_Running") == "Yes",
            timeout=10,
            message=f"{self.name}: SQL thread did not start",
        )


@dataclass
class MariaDBCluster:
    """A binlogging primary and its GTID replicas."""

    base: Path
    primary: MariaDBServer
    replicas: list[MariaDBServer] = field(default_factory=list)

    @property
    def servers(self) -> list[MariaDBServer]:
        return [self.primary, *self.replicas]

    def server(self, name: str) -> MariaDBServer:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def wait_caught_up(self, timeout: float = 10) -> None:
        """Wait until each running, non-paused replica applied the primary's GTID position."""
        deadline = time.monotonic() + timeout
        target: str = self.primary.query("SELECT @@GLOBAL.gtid_binlog_pos")[0][0]
        for replica in self.replicas:
            if replica.replay_paused or not replica.is_running():
                continue
            remaining = max(deadline - time.monotonic(), 0.0)
            result = replica.query("SELECT MASTER_GTID_WAIT(%s, %s)", (target, remaining))[0][0]
            if result != 0:
                raise AssertionError(
                    f"{replica.name} did not reach GTID {target!r} within {timeout}s: "
                    f"{replica.slave_status()}"
                )

    def stop(self) -> None:
        """Stop every server (replicas first); idempotent."""
        for server in [*reversed(self.replicas), self.primary]:
            with contextlib.suppress(Exception):
                server.stop(crash=True)
        for server in self.servers:
            server.cleanup()

    def __enter__(self) -> MariaDBCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_mariadb_cluster(base: Path, replicas: int = 1) -> MariaDBCluster:
    """A binlogging primary with database/user ``app`` plus ``replicas`` read-only replicas."""
    reason = mariadb_binaries_missing()
    if reason is not None:
        raise ClusterStartError(reason)
    binaries = _mariadb_binaries()
    assert binaries is not None
    run_as = _RunAs.for_server("mysql")
    base = _prepare_base(base, run_as)
    _install_safety_net()

    def make(name: str, role: Literal["primary", "replica"], server_id: int) -> MariaDBServer:
        return MariaDBServer(
            name,
            run_as.make_dir(base / name, 0o750),
            _free_port(),
            role=role,
            server_id=server_id,
            binaries=binaries,
            run_as=run_as,
        )

    cluster = MariaDBCluster(
        base,
        make("maria-primary", "primary", 1),
        [make(f"maria-replica{n}", "replica", n + 1) for n in range(1, replicas + 1)],
    )

    def bring_up(server: MariaDBServer) -> None:
        server.install()
        _start_first_time(server)
        server._create_accounts()

    try:
        with ThreadPoolExecutor(max_workers=len(cluster.servers)) as pool:
            for future in [pool.submit(bring_up, s) for s in cluster.servers]:
                future.result()
        for replica in cluster.replicas:
            replica.replicate_from(cluster.primary)
        cluster.wait_caught_up(timeout=30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_clusters(base: Path) -> Iterator[tuple[PostgresCluster, MariaDBCluster]]:
    """Start both clusters in parallel under ``base``; stop both on exit."""
    _install_safety_net()
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pg_future = pool.submit(start_postgres_cluster, base / "pg")
        maria_future = pool.submit(start_mariadb_cluster, base / "maria")
        try:
            pg, maria = pg_future.result(), maria_future.result()
        except BaseException:
            for future in (pg_future, maria_future):
                with contextlib.suppress(BaseException):
                    future.result().stop()
            raise
    try:
        yield pg, maria
    finally:
        maria.stop()
        pg.stop()
