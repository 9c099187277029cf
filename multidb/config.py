"""The config file, parsed once into frozen values.

:func:`load` reads a YAML file and :func:`from_dict` takes a mapping; both
check everything at once (names, types, URLs, dialects, installed drivers,
``create_engine`` and ``sessionmaker`` options) and return a :class:`Config`,
or raise :class:`~multidb.errors.ConfigError` saying where and what is wrong.
No connection is opened::

    config = load("config/databases.yaml")
    config.databases["main"].primary.url
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn, TypeVar, get_args
from urllib.parse import quote

import sqlalchemy
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.orm import Session
from sqlalchemy.util import get_cls_kwargs

from multidb._yaml import Document, KeyPath, dotted, parse
from multidb.drivers import Mode, instead, modes
from multidb.errors import ConfigError, closest

__all__ = [
    "Config",
    "DatabaseConfig",
    "EngineConfig",
    "Policy",
    "Role",
    "RoutingConfig",
    "from_dict",
    "load",
    "mask_url",
    "secrets",
]

Role = Literal["write", "read", "auto"]
Policy = Literal["round_robin", "random"]


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """How one database's reads are routed (``databases.NAME.routing``)."""

    policy: Policy = "round_robin"
    fallback_to_primary: bool = True
    max_lag_seconds: float | None = None
    check_interval_seconds: float = 1.0
    cooldown_seconds: float = 5.0
    default_role: Role = "write"
    connect_timeout_seconds: float = 5.0
    read_your_writes: bool = True
    causal_wait_seconds: float = 0.0
    causal_ttl_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One engine: a primary or a replica of a database."""

    name: str  # "main.primary", "main.a"
    database: str  # "main"
    role: Literal["primary", "replica"]
    url: URL  # password included (password_file already read)
    options: Mapping[str, Any]  # create_engine kwargs: defaults < database < engine
    weight: float = 1.0  # replicas only; 0 takes it out of rotation

    def __repr__(self) -> str:
        # Written by hand so that options such as connect_args.password stay masked.
        return (
            f"EngineConfig(name={self.name!r}, role={self.role!r}, url={mask_url(self.url)!r},"
            f" options={_shown(self.options)!r}, weight={self.weight!r})"
        )


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """One database: a primary and its replicas (possibly none)."""

    name: str
    primary: EngineConfig
    replicas: tuple[EngineConfig, ...]
    session: Mapping[str, Any]  # sessionmaker kwargs
    routing: RoutingConfig

    @property
    def engines(self) -> tuple[EngineConfig, ...]:
        return (self.primary, *self.replicas)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole config file: its databases in file order."""

    source: str | None  # the file path as given, None for from_dict
    databases: Mapping[str, DatabaseConfig]

    def engines(self) -> Iterator[EngineConfig]:
        for database in self.databases.values():
            yield from database.engines

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, in file order, every secret shown as ``***``."""

        def engine(config: EngineConfig) -> dict[str, Any]:
            shown: dict[str, Any] = {"url": mask_url(config.url)}
            if config.role == "replica":
                shown["weight"] = config.weight
            shown["options"] = _shown(config.options)
            return shown

        return {
            "databases": {
                name: {
                    "primary": engine(database.primary),
                    "replicas": {
                        replica.name.partition(".")[2]: engine(replica)
                        for replica in database.replicas
                    },
                    "session": _shown(database.session),
                    "routing": {
                        f.name: getattr(database.routing, f.name) for f in fields(database.routing)
                    },
                }
                for name, database in self.databases.items()
            }
        }


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and check the YAML config file at ``path``.

    ``env`` replaces ``os.environ`` for ``${NAME}`` references; ``CONFIG_DIR``
    is always the absolute directory of the file.
    """
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", source=source) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("cannot read config file: not valid UTF-8", source=source) from exc
    config_dir = os.path.dirname(os.path.abspath(source))
    return _Builder(parse(text, source), source, env, config_dir).build()


def from_dict(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Config:
    """Check an already parsed config; the same rules as :func:`load`, without positions.

    ``CONFIG_DIR`` is the current directory.
    """
    return _Builder(Document(data), None, env, os.getcwd()).build()


def mask_url(url: URL) -> str:
    """``url`` as a string with its password (and secret-looking query values) as ``***``."""
    query = {key: _MASK if _SECRET.search(key) else value for key, value in url.query.items()}
    text = url.set(query=query).render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database:
        # SQLAlchemy quotes the ':' of "file:PATH" (URI mode); show the path as written.
        text = text.replace(url.database.replace(":", "%3A"), url.database, 1)
    return text.replace(_MASK, "***")


# --- the rules --------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET = re.compile(r"pass|pwd|secret|token|credential", re.IGNORECASE)
_MASK = "MULTIDB-MASKED"  # survives URL quoting, then becomes "***"

_TOP_KEYS = ("defaults", "databases")
_PRIMARY_KEYS = ("primary", "replicas", "options", "session", "routing")
_SINGLE_KEYS = ("url", "password_file", "options", "session", "routing")
_ENGINE_KEYS = ("url", "options", "password_file")
_REPLICA_KEYS = (*_ENGINE_KEYS, "weight")
_URL_KEYS = ("drivername", "username", "password", "host", "port", "database", "query")
_ROUTING_KEYS = tuple(f.name for f in fields(RoutingConfig))
# multidb binds sessions itself, so bind/binds are not the file's to set.
_SESSION_KEYS = tuple(
    name
    for name in inspect.signature(Session.__init__).parameters
    if name not in ("self", "bind", "binds")
)
_SESSION_FLAGS = ("autoflush", "expire_on_commit", "autobegin", "twophase")
_DIALECTS = (*sqlalchemy.dialects.__all__, "mariadb")
# Extras of this package by (dialect, driver); other drivers are named by their pip package.
_EXTRAS = {
    ("postgresql", "psycopg2"): "'multidb[postgresql]'",
    ("mysql", "pymysql"): "'multidb[mysql]'",
    ("mariadb", "pymysql"): "'multidb[mysql]'",
    # asyncio drivers (SPEC section 5); psycopg 3 serves sync and async.
    ("postgresql", "psycopg"): "'multidb[psycopg]'",
    ("postgresql", "asyncpg"): "'multidb[asyncpg]'",
    ("mysql", "aiomysql"): "'multidb[aiomysql]'",
    ("mariadb", "aiomysql"): "'multidb[aiomysql]'",
    ("mysql", "asyncmy"): "'multidb[asyncmy]'",
    ("mariadb", "asyncmy"): "'multidb[asyncmy]'",
    ("sqlite", "aiosqlite"): "'multidb[aiosqlite]'",
}
_PIP_NAMES = {
    "MySQLdb": "mysqlclient",
    "mysql": "mysql-connector-python",
    "psycopg2": "psycopg2-binary",
}

# An option name, its value, and the key path where the winning layer set it.
_Options = dict[str, tuple[Any, KeyPath]]
_T = TypeVar("_T")
_MAX_DEPTH = 64
_JOIN_MODES = ("conservative_savepoint", "rollback_only", "control_fully", "create_savepoint")
_NUMBER = (int, float)
# create_engine() options whose value types SQLAlchemy only checks when it first uses them.
_OPTION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "pool_size": ((int,), "a whole number"),
    "max_overflow": ((int,), "a whole number"),
    "pool_timeout": (_NUMBER, "a number of seconds"),
    "pool_recycle": (_NUMBER, "a number of seconds"),
    "pool_pre_ping": ((bool,), "true or false"),
    "pool_use_lifo": ((bool,), "true or false"),
    "hide_parameters": ((bool,), "true or false"),
    "echo": ((bool, str), "true, false or 'debug'"),
    "echo_pool": ((bool, str), "true, false or 'debug'"),
    "query_cache_size": ((int,), "a whole number"),
    "insertmanyvalues_page_size": ((int,), "a whole number"),
    "label_length": ((int,), "a whole number"),
    "max_identifier_length": ((int,), "a whole number"),
    "isolation_level": ((str,), "an isolation level name"),
    "connect_args": ((Mapping,), "a mapping"),
    "execution_options": ((Mapping,), "a mapping"),
    "logging_name": ((str,), "a string"),
    "pool_logging_name": ((str,), "a string"),
    "paramstyle": ((str,), "a string"),
}


class _ReportedError(Exception):
    """A part failed and its errors are already kept: skip what was built from it."""


class _Masked(Mapping[str, Any]):
    """A read-only mapping whose repr shows values under secret-looking keys as ``***``."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(_shown(self._data))


def _user_info_span(text: str) -> tuple[int, int]:
    """Where the user-info part (``user:password``) of a URL string lies, as written.

    ``(0, 0)`` when ``text`` is not a URL with one. The last ``@`` before the
    path counts, skipping ``${...}`` references, so a password may hold ``@``.
    """
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+._-]*://", text)
    if scheme is None:
        return (0, 0)
    start = scheme.end()
    at = -1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            end = text.find("}", i)
            if end < 0:
                break
            i = end + 1
            continue
        if text[i] in "/?#":
            break
        if text[i] == "@":
            at = i
        i += 1
    return (start, at) if at >= 0 else (0, 0)


def _query_span(text: str) -> tuple[int, int]:
    """Where the query string of a URL string lies (values there are URL-quoted too)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+._-]*://", text) is None:
        return (0, 0)
    depth = 0
    for i, char in enumerate(text):
        if text.startswith("${", i):
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif char == "?" and not depth:
            return (i + 1, len(text))
    return (0, 0)


def _query_secrets_to_connect_args(
    url: URL, options: _Options, path: KeyPath
) -> tuple[URL, _Options]:
    """Move secret-looking query values (``?password=``) of ``url`` into ``connect_args``."""
    moved = {key: value for key, value in url.query.items() if _SECRET.search(key)}
    if not moved:
        return url, options
    connect_args, where = options.get("connect_args", ({}, path))
    if not isinstance(connect_args, Mapping):
        return url, options  # reported by option_type
    options = {**options, "connect_args": ({**moved, **connect_args}, where)}
    return url.difference_update_query(list(moved)), options


def secrets(engine: EngineConfig) -> list[str]:
    """Every secret of ``engine`` as it could appear in a message (plain and URL-quoted)."""
    found = [engine.url.password or ""]
    connect_args = engine.options.get("connect_args")
    if isinstance(connect_args, Mapping):
        found += [str(v) for k, v in connect_args.items() if _SECRET.search(str(k)) and v]
    found += [quote(secret, safe="") for secret in found]
    return [secret for secret in dict.fromkeys(found) if len(secret) >= 3]


class _Builder:
    """One pass over a document: checks each part and builds the frozen values."""

    def __init__(
        self, document: Document, source: str | None, env: Mapping[str, str] | None, config_dir: str
    ) -> None:
        self.document = document
        self.source = source
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.config_dir = config_dir
        self.checked_options: set[tuple[Any, ...]] = set()
        self.dialects: dict[str, type[Dialect]] = {}
        self.errors: list[ConfigError] = []
        self.broken: set[str] = set()  # key paths whose ${...} failed: no follow-up errors

    def error(self, path: KeyPath, problem: str, *, at_key: bool = False) -> ConfigError:
        """A ConfigError at the value of ``path`` (or at its key, or its nearest parent)."""
        position = self.document.keys.get(path) if at_key else None
        position = position or self.document.values.get(path)
        parent = path
        while position is None and parent and self.source is not None:
            parent = parent[:-1]
            position = self.document.values.get(parent)
        # Whatever a message quotes, a URL's password in it is masked.
        problem = re.sub(r"(://[^:/?#@\s']*:)(?!password@)[^\s']*@", r"\1***@", problem)
        return ConfigError(
            problem,
            source=self.source,
            line=position.line if position else None,
            column=position.column if position else None,
            key_path=dotted(path),
        )

    def collect(self, check: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
        """Run one check; a ConfigError is kept for the report and None returned."""
        try:
            return check(*args, **kwargs)
        except _ReportedError:  # its parts' errors are already kept
            return None
        except ConfigError as exc:
            if not any(exc.key_path.startswith(broken) for broken in self.broken):
                self.errors.append(exc)
            return None

    def build(self) -> Config:
        """Every check, every mistake reported at once; any other failure is a ConfigError too."""
        try:
            config = self.collect(self.build_all)
        except RecursionError:
            raise self.error((), "the config nests too deeply (or refers to itself)") from None
        except Exception as exc:  # a check that failed in a way not foreseen: still a ConfigError
            raise self.error((), f"cannot check this config ({type(exc).__name__})") from None
        if self.errors or config is None:
            unique = {(e.line, e.column, str(e)): e for e in self.errors}
            raise ConfigError.combine(unique.values())
        return config

    def build_all(self) -> Config:
        root = self.mapping((), self.resolve(self.document.data, ()))
        self.known_keys((), root, _TOP_KEYS)
        defaults = self.collect(self.options, ("defaults",), root.get("defaults")) or {}
        if "databases" not in root:
            self.missing((), "missing key 'databases'")
        databases = self.mapping(("databases",), root["databases"])
        if not databases:
            raise self.error(("databases",), "expected at least one database")
        built = {}
        for name, spec in databases.items():
            self.collect(self.check_name, ("databases", name), name, "database")
            database = self.collect(self.database, ("databases", name), name, spec, defaults)
            if database is not None:
                built[name] = database
        return Config(source=self.source, databases=MappingProxyType(built))

    # --- ${NAME} references ---------------------------------------------------------------------

    def resolve(self, value: Any, path: KeyPath) -> Any:
        """A copy of ``value`` with every string value's ``${...}`` replaced (keys are not)."""
        if isinstance(value, URL):  # a NamedTuple: not a list
            return value
        if len(path) > _MAX_DEPTH:
            raise self.error(path, f"nested more than {_MAX_DEPTH} levels deep")
        if isinstance(value, Mapping):
            return {key: self.resolve(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.resolve(item, (*path, index)) for index, item in enumerate(value)]
        if isinstance(value, str):
            try:
                return self.interpolate(value, path)
            except ConfigError as exc:
                self.errors.append(exc)
                self.broken.add(dotted(path))
                return ""
        return value

    def interpolate(self, text: str, path: KeyPath) -> str:
        """``${NAME}``, ``${NAME:-default}`` and ``$$``; any other ``$`` is kept as written."""
        parts: list[str] = []
        start = 0
        user_info = _user_info_span(text)
        query = _query_span(text)
        while (dollar := text.find("$", start)) >= 0:
            parts.append(text[start:dollar])
            following = text[dollar + 1 : dollar + 2]
            if following == "$":
                parts.append("$")
                start = dollar + 2
                continue
            if following != "{":
                parts.append("$")
                start = dollar + 1
                continue
            end = text.find("}", dollar)
            if end < 0:
                raise self.error(path, "unterminated '${' (write a literal '$' as '$$')")
            # Never echo the whole reference: a default may be a password.
            name, has_default, default = text[dollar + 2 : end].partition(":-")
            if not _VARIABLE.fullmatch(name):
                # Not echoed: a '${' may sit inside a password.
                raise self.error(
                    path,
                    "'${' does not start a valid ${NAME} or ${NAME:-default} reference"
                    " (write a literal '$' as '$$')",
                )
            value = self.config_dir if name == "CONFIG_DIR" else self.env.get(name)
            if has_default and not value:  # unset or empty, as the shell does
                value = default
            if value is None:
                raise self.error(
                    path,
                    f"environment variable {name} is not set"
                    f" (use ${{{name}:-default}} for a default)",
                )
            if user_info[0] <= dollar < user_info[1] or query[0] <= dollar < query[1]:
                # A user name or password may hold '@', ':', '/', '%', '#': keep the URL whole.
                value = quote(value, safe="")
            parts.append(value)
            start = end + 1
        parts.append(text[start:])
        return "".join(parts)

    # --- databases and engines ------------------------------------------------------------------

    def database(self, path: KeyPath, name: str, spec: Any, defaults: _Options) -> DatabaseConfig:
        primary: EngineConfig | None
        if isinstance(spec, (str, URL)):
            primary = self.engine(path, name, "primary", spec, defaults)
            return DatabaseConfig(name, primary, (), MappingProxyType({}), RoutingConfig())
        spec = self.mapping(path, spec, expected="a URL string or a mapping")
        if "url" in spec and "primary" in spec:
            raise self.error(
                (*path, "url"), "give either 'url' or 'primary', not both", at_key=True
            )
        if "url" in spec and "replicas" in spec:
            raise self.error(
                (*path, "replicas"),
                "a database given by 'url' has no replicas; use 'primary' and 'replicas'",
                at_key=True,
            )
        single = "url" in spec or "drivername" in spec
        self.known_keys(path, spec, _SINGLE_KEYS + _URL_KEYS if single else _PRIMARY_KEYS)
        if not single and "primary" not in spec:
            self.missing(path, "missing key 'primary' or 'url'")
        own = self.collect(self.options, (*path, "options"), spec.get("options")) or {}
        shared = {**defaults, **own}
        session = self.collect(self.session, (*path, "session"), spec.get("session"))
        routing = self.collect(self.routing, (*path, "routing"), spec.get("routing"))
        replicas: tuple[EngineConfig, ...] = ()
        if single:  # one engine, described by the database mapping itself
            engine_spec = {
                key: spec[key] for key in ("url", "password_file", *_URL_KEYS) if key in spec
            }
            primary = self.collect(
                self.engine, path, name, "primary", engine_spec, shared, own_keys=False
            )
        else:
            primary = self.collect(
                self.engine, (*path, "primary"), name, "primary", spec["primary"], shared
            )
            replicas = self.replicas((*path, "replicas"), name, spec.get("replicas"), shared)
            if primary is not None:
                self.collect(
                    self.same_mode, (*path, "replicas"), primary, replicas, spec.get("replicas")
                )
        if primary is None or session is None or routing is None:
            raise _ReportedError
        return DatabaseConfig(name, primary, replicas, session, routing)

    def same_mode(
        self, path: KeyPath, primary: EngineConfig, replicas: tuple[EngineConfig, ...], value: Any
    ) -> None:
        """A database's engines must share sync or async code: no session could use them all."""
        shared = modes(primary.url)
        for index, replica in enumerate(replicas):
            common = shared & modes(replica.url)
            if not common:
                key = index if isinstance(value, list) else replica.name.partition(".")[2]
                have: Mode = "sync" if "sync" in shared else "async"
                lacks = "async" if have == "sync" else "sync"
                raise self.error(
                    (*path, key),
                    f"{replica.url.drivername} serves only {lacks} code and the engines before"
                    f" it ({primary.name} ...) only {have} code: no session can use them all;"
                    f" write {instead(replica.url, have)} here",
                )
            shared = common

    def replicas(
        self, path: KeyPath, database: str, value: Any, shared: _Options
    ) -> tuple[EngineConfig, ...]:
        if value is None:
            return ()
        if isinstance(value, list):
            named = [
                (f"replica{index + 1}", (*path, index), spec) for index, spec in enumerate(value)
            ]
        else:
            named = []
            for name, spec in self.mapping(path, value, expected="a mapping or a list").items():
                self.collect(self.check_name, (*path, name), name, "replica")
                if name == "primary":
                    self.collect(
                        self.fail,
                        (*path, name),
                        "a replica cannot be named 'primary' (that names the database's primary)",
                        at_key=True,
                    )
                    continue
                named.append((name, (*path, name), spec))
        engines = [
            self.collect(self.engine, item_path, database, name, spec, shared)
            for name, item_path, spec in named
        ]
        return tuple(engine for engine in engines if engine is not None)

    def fail(self, path: KeyPath, problem: str, *, at_key: bool = False) -> None:
        raise self.error(path, problem, at_key=at_key)

    def missing(self, path: KeyPath, problem: str) -> NoReturn:
        """A missing key, unless an unknown key there (a typo of it) was already reported."""
        prefix = dotted(path)
        if any(e.key_path.startswith(prefix) and "unknown key" in e.problem for e in self.errors):
            raise _ReportedError
        raise self.error(path, problem)

    def engine(
        self,
        path: KeyPath,
        database: str,
        short: str,
        spec: Any,
        shared: _Options,
        *,
        own_keys: bool = True,
    ) -> EngineConfig:
        """One engine from a URL or a ``{url, options, password_file, weight}`` mapping."""
        replica = short != "primary"  # no replica may be called "primary"
        own: _Options = {}
        weight = 1.0
        if isinstance(spec, (str, URL)):
            url, driver_path = self.url(path, spec)
        else:
            spec = self.mapping(path, spec, expected="a URL string or a mapping")
            parts = "url" not in spec and "drivername" in spec  # the URL's parts, directly
            if own_keys:
                if "weight" in spec and not replica:
                    self.collect(
                        self.fail, (*path, "weight"), "'weight' is only for replicas", at_key=True
                    )
                allowed = _REPLICA_KEYS if replica or "weight" in spec else _ENGINE_KEYS
                self.known_keys(path, spec, allowed + _URL_KEYS if parts else allowed)
                own = self.collect(self.options, (*path, "options"), spec.get("options")) or {}
            if parts:
                given = {key: spec[key] for key in _URL_KEYS if key in spec}
                url, driver_path = self.url(path, given)
            elif "url" not in spec:
                self.missing(path, "missing key 'url' (or the URL's parts: drivername, ...)")
            else:
                if any(key in spec for key in _URL_KEYS):
                    key = next(key for key in _URL_KEYS if key in spec)
                    raise self.error(
                        (*path, key), "give either 'url' or the URL's parts, not both", at_key=True
                    )
                url, driver_path = self.url((*path, "url"), spec["url"])
            if "password_file" in spec:
                url = self.password_file((*path, "password_file"), spec["password_file"], url)
            if "weight" in spec:
                weight = self.number((*path, "weight"), spec["weight"], minimum=0, inclusive=True)
        name = f"{database}.{short}"
        # A password in the URL's query string would show in repr(engine) and str(engine.url):
        # it goes to the driver through connect_args instead.
        url, options = _query_secrets_to_connect_args(url, {**shared, **own}, driver_path)
        self.check_engine(name, url, driver_path, options)
        return EngineConfig(
            name=name,
            database=database,
            role="replica" if replica else "primary",
            url=url,
            options=_Masked({key: value for key, (value, _) in options.items()}),
            weight=weight,
        )

    def url(self, path: KeyPath, value: Any) -> tuple[URL, KeyPath]:
        """The URL, and the path where its dialect+driver name is written."""
        if isinstance(value, URL):
            return value, path
        if isinstance(value, str):
            try:
                return make_url(value), path
            except Exception:
                # No "from": the parser's message may quote a piece of the password.
                raise self.error(
                    path,
                    f"cannot parse URL {_mask_raw(value)!r}; "
                    "expected dialect+driver://user:password@host:port/database",
                ) from None
        parts = self.mapping(path, value, expected="a URL string or a mapping")
        self.known_keys(path, parts, _URL_KEYS)
        if "drivername" not in parts:
            raise self.error(path, "missing key 'drivername'")
        kwargs: dict[str, Any] = {
            "drivername": self.string((*path, "drivername"), parts["drivername"])
        }
        for key in ("username", "password", "host", "database"):
            if parts.get(key) is not None:
                kwargs[key] = self.string((*path, key), parts[key], secret=key == "password")
        port = parts.get("port")
        if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) < 6:
            port = int(port)  # from ${PORT}
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise self.error((*path, "port"), f"expected a port number, got {_describe(port)}")
            kwargs["port"] = port
        if parts.get("query") is not None:
            query = self.mapping((*path, "query"), parts["query"])
            for key, item in query.items():
                if not isinstance(item, str) and not (
                    isinstance(item, list) and all(isinstance(one, str) for one in item)
                ):
                    raise self.error(
                        (*path, "query", key),
                        f"expected a string or a list of strings, got {_describe(item)}",
                    )
            kwargs["query"] = query
        try:
            return URL.create(**kwargs), (*path, "drivername")
        except Exception:
            raise self.error(path, "these URL parts do not make a URL") from None

    def password_file(self, path: KeyPath, value: Any, url: URL) -> URL:
        relative = self.string(path, value)
        if url.password is not None:
            raise self.error(
                path, "the URL already has a password; give it in one place", at_key=True
            )
        file = Path(self.config_dir, relative)
        try:
            password = file.read_text(encoding="utf-8")
        except ValueError:  # a NUL byte in the path
            raise self.error(path, "cannot read password file: not a valid path") from None
        except OSError as exc:
            raise self.error(
                path, f"cannot read password file '{file}': {exc.strerror or exc}"
            ) from exc
        except UnicodeDecodeError:
            raise self.error(path, f"cannot read password file '{file}': not valid UTF-8") from None
        return url.set(password=password.rstrip("\r\n"))

    def check_engine(self, name: str, url: URL, driver_path: KeyPath, options: _Options) -> None:
        """What create_engine() would refuse: the dialect, its driver, and the options."""
        dialect = self.dialect(driver_path, url)
        before = len(self.errors)
        for key, (value, at) in options.items():
            self.collect(self.option_type, at, key, value)
        if len(self.errors) > before:
            return  # create_engine() would only fail on the same values again
        values = {key: value for key, (value, _) in options.items()}
        # The pool class decides which pool_* options exist (SQLite :memory: has no QueuePool).
        pool = values.get("poolclass") or getattr(dialect, "get_pool_class", lambda _: None)(url)
        # Same dialect, pool and options -> same verdict: check each shape once.
        shape = (url.drivername, pool, repr(sorted(values.items(), key=lambda item: item[0])))
        if shape in self.checked_options:
            return
        try:
            # create_engine() opens no connection; it is the only complete list of what it takes.
            sqlalchemy.create_engine(url, **values).dispose()
        except TypeError as exc:
            rejected = re.findall(r"'([^']+)'", str(exc).partition(" sent to ")[0])
            bad = next((key for key in rejected if key in options), None)
            if bad is None:
                raise self.error(driver_path, f"create_engine() failed: {exc}") from exc
            known = _engine_option_names(dialect)
            if bad in known:  # a real option that this dialect or pool does not take
                pool_name = getattr(pool, "__name__", str(pool))
                problem = (
                    f"create_engine() option {bad!r} does not apply to {name}"
                    f" ({url.drivername}, {pool_name})"
                )
            else:
                hint = closest(bad, known)
                problem = f"unknown create_engine() option {bad!r} for {name} ({url.drivername})"
                problem += f"; did you mean {hint!r}?" if hint else ""
            raise self.error(options[bad][1], problem, at_key=True) from exc
        except Exception as exc:
            message = str(exc).replace(url.password, "***") if url.password else str(exc)
            raise self.error(driver_path, f"create_engine() failed: {message}") from None
        self.checked_options.add(shape)

    def dialect(self, path: KeyPath, url: URL) -> type[Dialect]:
        """The dialect class of ``url``, with its DBAPI module importable."""
        if url.drivername in self.dialects:
            return self.dialects[url.drivername]
        backend, _, driver = url.drivername.partition("+")
        try:
            dialect = url.get_dialect()
        except Exception:  # NoSuchModuleError, or a name SQLAlchemy cannot even look up
            if backend in _DIALECTS and driver:
                hint = closest(driver, _driver_names(backend))
                problem = f"unknown driver {driver!r} for dialect {backend!r}"
            else:
                hint = closest(backend, _DIALECTS)
                problem = f"unknown dialect {backend!r}"
            raise self.error(
                path, problem + (f"; did you mean {hint!r}?" if hint else "")
            ) from None
        try:
            dialect.import_dbapi()
        except Exception as exc:
            if not isinstance(exc, ImportError):
                raise self.error(path, f"driver {dialect.driver!r} cannot be loaded") from None
            module = (exc.name or dialect.driver).split(".")[0]
            extra = _EXTRAS.get((dialect.name, dialect.driver))
            problem = f"driver {dialect.driver!r} is not installed: pip install "
            problem += extra or _PIP_NAMES.get(module, module)
            # SQLAlchemy's default driver may not be the one the extra installs.
            other = next((k for k in _EXTRAS if k[0] == dialect.name), None) if not extra else None
            if other is not None:
                problem += f" (or write {other[0]}+{other[1]}:// and pip install {_EXTRAS[other]})"
            raise self.error(path, problem) from exc
        if dialect.is_async and importlib.util.find_spec("greenlet") is None:
            extra = _EXTRAS.get((dialect.name, dialect.driver), "greenlet")
            raise self.error(
                path,
                f"driver {dialect.driver!r} is async and SQLAlchemy's asyncio needs greenlet,"
                f" which is not installed: pip install {extra}",
            )
        self.dialects[url.drivername] = dialect
        return dialect

    def option_type(self, path: KeyPath, key: str, value: Any) -> None:
        """A create_engine() option whose value has the wrong type (SQLAlchemy checks late)."""
        expected = _OPTION_TYPES.get(key)
        if expected is None:
            return
        kinds, wording = expected
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds):
            raise self.error(path, f"expected {wording}, got {_describe(value)}")

    # --- sections -------------------------------------------------------------------------------

    def options(self, path: KeyPath, value: Any) -> _Options:
        if value is None:
            return {}
        return {key: (item, (*path, key)) for key, item in self.mapping(path, value).items()}

    def session(self, path: KeyPath, value: Any) -> Mapping[str, Any]:
        if value is None:
            return MappingProxyType({})
        session = self.mapping(path, value)
        for key, item in session.items():
            if key in ("bind", "binds"):
                raise self.error((*path, key), f"{key!r} is set by multidb", at_key=True)
            if key == "autocommit":
                self.collect(
                    self.fail,
                    (*path, key),
                    "SQLAlchemy 2.x sessions no longer take 'autocommit'; remove it (a session"
                    " begins a transaction when first used; for driver-level autocommit set"
                    " options: {isolation_level: AUTOCOMMIT})",
                    at_key=True,
                )
                continue
            if key not in _SESSION_KEYS:
                hint = closest(key, _SESSION_KEYS)
                self.collect(
                    self.fail,
                    (*path, key),
                    f"unknown sessionmaker option {key!r}"
                    + (
                        f"; did you mean {hint!r}?"
                        if hint
                        else f"; expected one of: {', '.join(_SESSION_KEYS)}"
                    ),
                    at_key=True,
                )
                continue
            if key in _SESSION_FLAGS and not isinstance(item, bool):
                self.collect(
                    self.fail, (*path, key), f"expected true or false, got {_describe(item)}"
                )
            elif key == "info" and not isinstance(item, Mapping):
                self.collect(self.fail, (*path, key), f"expected a mapping, got {_describe(item)}")
            elif key == "join_transaction_mode" and item not in _JOIN_MODES:
                listed = ", ".join(repr(mode) for mode in _JOIN_MODES)
                self.collect(
                    self.fail, (*path, key), f"expected one of {listed}, got {_describe(item)}"
                )
            elif key in ("class_", "query_cls"):
                self.collect(
                    self.fail,
                    (*path, key),
                    f"{key!r} names a Python class: pass session_class= to"
                    " Registry.from_yaml instead",
                    at_key=True,
                )
        return MappingProxyType(session)

    def routing(self, path: KeyPath, value: Any) -> RoutingConfig:
        if value is None:
            return RoutingConfig()
        routing = self.mapping(path, value)
        self.known_keys(path, routing, _ROUTING_KEYS)
        kwargs: dict[str, Any] = {}
        for key, item in routing.items():
            self.collect(self.routing_value, (*path, key), key, item, kwargs)
        return RoutingConfig(**{k: v for k, v in kwargs.items() if k in _ROUTING_KEYS})

    def routing_value(self, at: KeyPath, key: str, item: Any, kwargs: dict[str, Any]) -> None:
        if key not in _ROUTING_KEYS:
            return
        if True:
            if key in ("policy", "default_role"):
                kwargs[key] = self.choice(at, item, get_args(Policy if key == "policy" else Role))
            elif key in ("fallback_to_primary", "read_your_writes"):
                if not isinstance(item, bool):
                    raise self.error(at, f"expected true or false, got {_describe(item)}")
                kwargs[key] = item
            elif key == "max_lag_seconds" and item is None:
                kwargs[key] = None
            else:
                inclusive = key in ("cooldown_seconds", "causal_wait_seconds")
                kwargs[key] = self.number(at, item, minimum=0, inclusive=inclusive)

    # --- values ---------------------------------------------------------------------------------

    def mapping(self, path: KeyPath, value: Any, *, expected: str = "a mapping") -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(path, f"expected {expected}, got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(path, f"expected string keys, got {_describe(key)}")
        return dict(value)

    def known_keys(
        self, path: KeyPath, mapping: Mapping[str, Any], allowed: tuple[str, ...]
    ) -> None:
        for key in mapping:
            if key not in allowed:
                hint = closest(key, allowed)
                tail = (
                    f"; did you mean {hint!r}?"
                    if hint
                    else f"; expected one of: {', '.join(dict.fromkeys(allowed))}"
                )
                self.collect(self.fail, (*path, key), f"unknown key {key!r}{tail}", at_key=True)

    def check_name(self, path: KeyPath, name: str, kind: str) -> None:
        if not _NAME.fullmatch(name):
            raise self.error(
                path,
                f"invalid {kind} name {name!r}: use letters, digits, '_' and '-', "
                "starting with a letter or '_'",
                at_key=True,
            )

    def string(self, path: KeyPath, value: Any, *, secret: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_describe(value, secret=secret)}")
        return value

    def number(self, path: KeyPath, value: Any, *, minimum: float, inclusive: bool) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or abs(value) > 1e300
            or not math.isfinite(value)
            or value < minimum
            or (value == minimum and not inclusive)
        ):
            bound = f"{'>=' if inclusive else '>'} {minimum:g}"
            raise self.error(path, f"expected a number {bound}, got {_describe(value)}")
        return float(value)

    def choice(self, path: KeyPath, value: Any, choices: tuple[str, ...]) -> str:
        if value not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise self.error(path, f"expected one of {listed}, got {_describe(value)}")
        return str(value)


def _describe(value: Any, *, secret: bool = False) -> str:
    """How an error message shows a wrong value; a secret's value is never shown."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if secret:
        return f"a value of type {type(value).__name__}"
    if isinstance(value, str):
        shown = _mask_raw(value)  # a URL written where something else belongs
        return repr(shown if len(shown) <= 60 else shown[:57] + "...")
    if isinstance(value, int) and abs(value) > 10**30:
        return "a number too large"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def _mask_raw(text: str) -> str:
    """A URL-like string as written, with what looks like its password as ``***``."""
    text = re.sub(r"^([^:/?#@]*://[^:/?#@]*:).*@", r"\1***@", text, flags=re.DOTALL)
    return re.sub(r"((?:pass|pwd|secret|token)[^=&]*=)[^&]*", r"\1***", text, flags=re.IGNORECASE)


def _shown(value: Any, key: str = "") -> Any:
    """``value`` as plain data for display, values under secret-looking keys as ``***``."""
    if key and _SECRET.search(key) and value is not None:
        return "***"
    if isinstance(value, URL):
        return mask_url(value)
    if isinstance(value, Mapping):
        return {name: _shown(item, str(name)) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _engine_option_names(dialect: type[Dialect]) -> list[str]:
    """Names create_engine() documents plus the dialect's own: the did-you-mean candidates."""
    documented = re.findall(r":param (\w+)[=:]", sqlalchemy.create_engine.__doc__ or "")
    names = {*documented, *get_cls_kwargs(dialect), "pool_use_lifo"}
    return sorted(name for name in names if not name.startswith("_"))


def _driver_names(backend: str) -> list[str]:
    """The modules of one SQLAlchemy dialect package: the did-you-mean candidates for a driver."""
    try:
        package = __import__(f"sqlalchemy.dialects.{backend}", fromlist=["__path__"])
    except ImportError:
        return []
    return [module.name for module in pkgutil.iter_modules(package.__path__)]
