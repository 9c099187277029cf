"""The config file: every rule of SPEC section 1, with the exact message of each mistake."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import sys
import textwrap
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url

from multidb.config import Config, from_dict, load, mask_url
from multidb.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-pw"


def write(tmp_path: Path, body: str, name: str = "databases.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return str(path)


def load_error(path: str, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, **kwargs)
    return info.value


def dict_error(data: dict[str, Any], **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(data, **kwargs)
    return info.value


def where(err: ConfigError) -> tuple[str | None, int | None, int | None, str]:
    return err.source, err.line, err.column, err.key_path


# --- reading the file -----------------------------------------------------------------------


def test_missing_file_says_which_path_and_why(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    err = load_error(path)
    assert str(err) == f"{path}: cannot read config file: No such file or directory"
    assert where(err) == (path, None, None, "")
    assert isinstance(err, ValueError)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    err = load_error(str(tmp_path))
    assert str(err) == f"{tmp_path}: cannot read config file: Is a directory"


def test_syntax_error_points_at_the_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main: sqlite://
           bad: indent
        """,
    )
    err = load_error(path)
    assert str(err) == f"{path}:3:7: invalid YAML: mapping values are not allowed here"
    assert where(err) == (path, 3, 7, "")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing\n")
    assert str(load_error(path)) == (
        f"{path}:1:1: the file is empty; expected a mapping with 'databases'"
    )


def test_duplicate_key_is_reported_at_the_second_with_the_first_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main: sqlite://
          other: sqlite://
          main: sqlite://
        """,
    )
    err = load_error(path)
    assert str(err) == f"{path}:4:3: databases.main: duplicate key 'main' (first at line 2)"
    assert where(err) == (path, 4, 3, "databases.main")


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system {}", "tag:yaml.org,2002:python/object:os.system"),
        ("!env MAIN_URL", "!env"),
        ("!!str sqlite://", "tag:yaml.org,2002:str"),
    ],
)
def test_any_explicit_yaml_tag_is_refused_at_the_tagged_value(
    tmp_path: Path, value: str, tag: str
) -> None:
    path = write(tmp_path, f"databases:\n  main: {value}\n")
    err = load_error(path)
    assert str(err) == f"{path}:2:9: databases.main: YAML tags are not allowed (found {tag!r})"


def test_yaml_aliases_are_refused_with_the_alternative(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: &shared {echo: false}
        databases:
          main:
            url: sqlite://
            options: *shared
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:5:14: databases.main.options: YAML aliases are not supported (found *shared); "
        "share settings with 'defaults' or a database's 'options'"
    )


def test_non_string_key_is_refused_with_how_to_quote_it(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  yes: sqlite://\n")
    assert str(load_error(path)) == (
        f"{path}:2:3: databases: expected a string key, got true (quote it: 'yes')"
    )


# --- structure and types --------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  main: sqlite://\n")
    err = load_error(path)
    assert str(err) == f"{path}:1:1: database: unknown key 'database'; did you mean 'databases'?"
    assert where(err) == (path, 1, 1, "database")


def test_missing_databases_is_reported_at_the_top(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults: {echo: false}\n")
    assert str(load_error(path)) == f"{path}:1:1: missing key 'databases'"


def test_unknown_database_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: sqlite://
            replica: {a: sqlite://}
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:4:5: databases.main.replica: unknown key 'replica'; did you mean 'replicas'?"
    )


def test_unknown_engine_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary:
              url: sqlite://
              optons: {echo: true}
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:5:7: databases.main.primary.optons: unknown key 'optons'; did you mean 'options'?"
    )


def test_unknown_routing_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: sqlite://
            routing:
              max_lag: 5
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:5:7: databases.main.routing.max_lag: unknown key 'max_lag'; "
        "did you mean 'max_lag_seconds'?"
    )


def test_unknown_url_part_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            url:
              drivername: sqlite
              databse: x.db
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:5:7: databases.main.url.databse: unknown key 'databse'; did you mean 'database'?"
    )


def test_unknown_key_without_a_close_match_lists_the_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  main: {primary: 'sqlite://', zzz: 1}\n")
    assert str(load_error(path)) == (
        f"{path}:2:32: databases.main.zzz: unknown key 'zzz'; "
        "expected one of: primary, replicas, options, session, routing"
    )


def test_wrong_types_say_what_was_expected_and_what_was_found(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  - sqlite://\n")
    assert str(load_error(path)) == f"{path}:2:3: databases: expected a mapping, got a list"
    path = write(tmp_path, "databases:\n  main: 3\n")
    assert str(load_error(path)) == (
        f"{path}:2:9: databases.main: expected a URL string or a mapping, got 3"
    )
    path = write(tmp_path, "databases:\n  main: {url: 'sqlite://', options: [echo]}\n")
    assert str(load_error(path)) == (
        f"{path}:2:37: databases.main.options: expected a mapping, got a list"
    )


def test_empty_databases_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "databases: {}\n")
    assert str(load_error(path)) == f"{path}:1:12: databases: expected at least one database"


def test_url_and_primary_together_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  main:\n    primary: sqlite://\n    url: sqlite://\n")
    assert str(load_error(path)) == (
        f"{path}:4:5: databases.main.url: give either 'url' or 'primary', not both"
    )


def test_neither_url_nor_primary_is_reported_at_the_database_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  main:\n    options: {echo: true}\n")
    err = load_error(path)
    assert str(err) == f"{path}:3:5: databases.main: missing key 'primary' or 'url'"
    assert where(err) == (path, 3, 5, "databases.main")


def test_bad_database_name_is_reported_at_the_name(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  my.db: sqlite://\n")
    assert str(load_error(path)) == (
        f"{path}:2:3: databases.my.db: invalid database name 'my.db': use letters, digits, "
        "'_' and '-', starting with a letter or '_'"
    )


def test_bad_replica_name_is_reported_at_the_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "databases:\n  main:\n    primary: sqlite://\n    replicas:\n      1a: sqlite://\n",
    )
    assert str(load_error(path)) == (
        f"{path}:5:7: databases.main.replicas.1a: invalid replica name '1a': use letters, "
        "digits, '_' and '-', starting with a letter or '_'"
    )


def test_replica_named_primary_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "databases:\n  main:\n    primary: sqlite://\n    replicas:\n      primary: sqlite://\n",
    )
    assert str(load_error(path)) == (
        f"{path}:5:7: databases.main.replicas.primary: a replica cannot be named 'primary' "
        "(that names the database's primary)"
    )


def test_weight_must_be_a_number_at_least_zero(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: sqlite://
            replicas:
              a:
                url: sqlite://
                weight: two
        """,
    )
    err = load_error(path)
    assert str(err) == (
        f"{path}:7:17: databases.main.replicas.a.weight: expected a number >= 0, got 'two'"
    )
    assert where(err) == (path, 7, 17, "databases.main.replicas.a.weight")
    err = dict_error(
        {
            "databases": {
                "m": {
                    "primary": "sqlite://",
                    "replicas": {"a": {"url": "sqlite://", "weight": True}},
                }
            }
        }
    )
    assert str(err) == "databases.m.replicas.a.weight: expected a number >= 0, got true"


def test_weight_on_a_primary_is_an_error(tmp_path: Path) -> None:
    err = dict_error({"databases": {"m": {"primary": {"url": "sqlite://", "weight": 2}}}})
    assert str(err) == "databases.m.primary.weight: 'weight' is only for replicas"


def test_routing_enum_lists_the_choices(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: sqlite://
            routing: {policy: roundrobin}
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:4:23: databases.main.routing.policy: expected one of 'round_robin', "
        "'random', got 'roundrobin'"
    )
    err = dict_error(
        {"databases": {"m": {"url": "sqlite://", "routing": {"default_role": "reads"}}}}
    )
    assert str(err) == (
        "databases.m.routing.default_role: expected one of 'write', 'read', 'auto', got 'reads'"
    )


def test_routing_numbers_and_flags_are_checked() -> None:
    def routing_error(routing: dict[str, Any]) -> str:
        return str(dict_error({"databases": {"m": {"url": "sqlite://", "routing": routing}}}))

    assert routing_error({"max_lag_seconds": 0}) == (
        "databases.m.routing.max_lag_seconds: expected a number > 0, got 0"
    )
    assert routing_error({"check_interval_seconds": "1s"}) == (
        "databases.m.routing.check_interval_seconds: expected a number > 0, got '1s'"
    )
    assert routing_error({"cooldown_seconds": -1}) == (
        "databases.m.routing.cooldown_seconds: expected a number >= 0, got -1"
    )
    assert routing_error({"fallback_to_primary": "yes"}) == (
        "databases.m.routing.fallback_to_primary: expected true or false, got 'yes'"
    )


def test_routing_is_filled_with_defaults_and_keeps_what_is_set() -> None:
    config = from_dict(
        {
            "databases": {
                "m": {
                    "url": "sqlite://",
                    "routing": {"policy": "random", "max_lag_seconds": None, "cooldown_seconds": 0},
                }
            }
        }
    )
    routing = config.databases["m"].routing
    assert (routing.policy, routing.max_lag_seconds, routing.cooldown_seconds) == (
        "random",
        None,
        0,
    )
    assert (routing.fallback_to_primary, routing.check_interval_seconds) == (True, 1.0)
    assert routing.default_role == "write"


# --- URLs, dialects, drivers ----------------------------------------------------------------


def test_unparsable_url_is_an_error_that_masks_the_password(tmp_path: Path) -> None:
    path = write(tmp_path, f"databases:\n  main: 'postgresql://app:{SECRET}@db:port/app'\n")
    err = load_error(path)
    assert str(err) == (
        f"{path}:2:9: databases.main: cannot parse URL 'postgresql://app:***@db:port/app'; "
        "expected dialect+driver://user:password@host:port/database"
    )
    assert err.__cause__ is None and err.__context__ is not None
    assert SECRET not in str(err)


def test_unknown_dialect_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  main: postgresq://app@db/app\n")
    assert str(load_error(path)) == (
        f"{path}:2:9: databases.main: unknown dialect 'postgresq'; did you mean 'postgresql'?"
    )


def test_unknown_driver_suggests_the_closest() -> None:
    err = dict_error({"databases": {"main": "postgresql+psycopg3://app@db/app"}})
    assert str(err) == (
        "databases.main: unknown driver 'psycopg3' for dialect 'postgresql'; "
        "did you mean 'psycopg'?"
    )


def test_uninstalled_driver_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import pymysql` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "pymysql", None)
    path = write(tmp_path, "databases:\n  reports:\n    url: mysql+pymysql://reporter@wh/reports\n")
    err = load_error(path)
    assert str(err) == (
        f"{path}:3:10: databases.reports.url: driver 'pymysql' is not installed: "
        "pip install 'multidb[mysql]'"
    )
    assert isinstance(err.__cause__, ImportError)


def test_default_postgresql_driver_missing_also_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What postgresql:// means: psycopg (3) on SQLAlchemy 2.1, psycopg2 on 2.0.
    driver = make_url("postgresql://").get_dialect().driver
    extra = {"psycopg": "psycopg", "psycopg2": "postgresql"}[driver]
    monkeypatch.setitem(sys.modules, driver, None)
    err = dict_error({"databases": {"m": "postgresql://u@h/db"}})
    assert str(err) == (
        f"databases.m: driver {driver!r} is not installed: pip install 'multidb[{extra}]'"
    )


def test_uninstalled_driver_without_an_extra_names_its_pip_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "MySQLdb", None)
    monkeypatch.setitem(sys.modules, "pyodbc", None)
    err = dict_error({"databases": {"r": "mysql+mysqldb://u@h/db"}})
    assert str(err) == (
        "databases.r: driver 'mysqldb' is not installed: pip install mysqlclient "
        "(or write mysql+pymysql:// and pip install 'multidb[mysql]')"
    )
    err = dict_error({"databases": {"r": "mssql+pyodbc://u@dsn"}})
    assert str(err) == "databases.r: driver 'pyodbc' is not installed: pip install pyodbc"


def test_url_given_as_parts_is_built_with_url_create(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            url:
              drivername: postgresql+psycopg2
              username: app
              password: ${PW}
              host: db1
              port: ${PORT:-6432}
              database: app
              query: {sslmode: require}
        """,
    )
    url = load(path, env={"PW": SECRET}).databases["main"].primary.url
    assert (url.username, url.password, url.host, url.port) == ("app", SECRET, "db1", 6432)
    assert dict(url.query) == {"sslmode": "require"}


def test_url_parts_need_a_drivername_and_a_string_password_never_shown(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  main:\n    url: {database: x.db}\n")
    assert str(load_error(path)) == f"{path}:3:10: databases.main.url: missing key 'drivername'"
    err = dict_error({"databases": {"m": {"url": {"drivername": "sqlite", "password": 123456}}}})
    assert str(err) == "databases.m.url.password: expected a string, got a value of type int"


# --- options --------------------------------------------------------------------------------


def test_unknown_create_engine_option_is_reported_where_it_is_set(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary:
              url: postgresql+psycopg2://app@db1/app
              options: {pool_sizee: 5}
        """,
    )
    err = load_error(path)
    assert str(err) == (
        f"{path}:5:17: databases.main.primary.options.pool_sizee: unknown create_engine() "
        "option 'pool_sizee' for main.primary (postgresql+psycopg2); did you mean 'pool_size'?"
    )
    assert isinstance(err.__cause__, TypeError)


def test_unknown_create_engine_option_in_defaults_is_reported_in_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults:
          pool_pre_pings: true
        databases:
          main: sqlite:///${CONFIG_DIR}/main.db
        """,
    )
    err = load_error(path)
    assert str(err) == (
        f"{path}:2:3: defaults.pool_pre_pings: unknown create_engine() option "
        "'pool_pre_pings' for main.primary (sqlite); did you mean 'pool_pre_ping'?"
    )


def test_create_engine_options_are_checked_against_each_engines_pool() -> None:
    """pool_size fits a SQLite file (QueuePool) but not :memory: (SingletonThreadPool is lax)."""
    config = from_dict({"defaults": {"max_overflow": 2}, "databases": {"f": "sqlite:///f.db"}})
    assert config.databases["f"].primary.options == {"max_overflow": 2}
    err = dict_error({"defaults": {"max_overflow": 2}, "databases": {"f": "sqlite://"}})
    assert str(err) == (
        "defaults.max_overflow: create_engine() option 'max_overflow' does not apply to "
        "f.primary (sqlite, SingletonThreadPool)"
    )


def test_create_engine_is_called_once_per_shape_of_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = sqlalchemy.create_engine

    def counting(url: Any, **kwargs: Any) -> Any:
        calls.append(str(url))
        return real(url, **kwargs)

    monkeypatch.setattr(sqlalchemy, "create_engine", counting)
    databases = {
        f"db{n}": {
            "primary": f"postgresql+psycopg2://u@h{n}/d",
            "replicas": [f"mysql+pymysql://u@r{n}/d"],
        }
        for n in range(100)
    }
    assert len(from_dict({"databases": databases}).databases) == 100
    assert len(calls) == 2  # one per dialect, pool and option names


def test_option_precedence_is_defaults_then_database_then_engine() -> None:
    config = from_dict(
        {
            "defaults": {"echo": True, "pool_size": 1, "pool_recycle": 60},
            "databases": {
                "main": {
                    "options": {"pool_size": 10, "pool_timeout": 3},
                    "primary": "postgresql+psycopg2://u@h/d",
                    "replicas": {
                        "a": {"url": "postgresql+psycopg2://u@r/d", "options": {"pool_size": 20}}
                    },
                }
            },
        }
    )
    main = config.databases["main"]
    assert dict(main.primary.options) == {
        "echo": True,
        "pool_size": 10,
        "pool_recycle": 60,
        "pool_timeout": 3,
    }
    assert main.replicas[0].options["pool_size"] == 20
    assert not hasattr(main.primary.options, "__setitem__")  # frozen


def test_unknown_sessionmaker_option_suggests_the_closest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            url: sqlite://
            session: {expire_on_comit: false}
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:4:15: databases.main.session.expire_on_comit: unknown sessionmaker option "
        "'expire_on_comit'; did you mean 'expire_on_commit'?"
    )


def test_session_bind_is_left_to_multidb_and_flags_must_be_booleans() -> None:
    err = dict_error({"databases": {"m": {"url": "sqlite://", "session": {"bind": "x"}}}})
    assert str(err) == "databases.m.session.bind: 'bind' is set by multidb"
    err = dict_error({"databases": {"m": {"url": "sqlite://", "session": {"autoflush": "no"}}}})
    assert str(err) == "databases.m.session.autoflush: expected true or false, got 'no'"
    config = from_dict({"databases": {"m": {"url": "sqlite://", "session": {"autoflush": False}}}})
    assert config.databases["m"].session == {"autoflush": False}
    assert isinstance(config.databases["m"].session, MappingProxyType)


# --- ${NAME} and CONFIG_DIR ----------------------------------------------------------------


def test_missing_variable_names_it_where_it_is_used(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: postgresql+psycopg2://app:${MAIN_PASSWORD}@db1/app
        """,
    )
    err = load_error(path, env={})
    assert str(err) == (
        f"{path}:3:14: databases.main.primary: environment variable MAIN_PASSWORD is not set "
        "(use ${MAIN_PASSWORD:-default} for a default)"
    )
    assert where(err) == (path, 3, 14, "databases.main.primary")


def test_default_is_used_when_the_variable_is_unset_or_empty() -> None:
    data = {"databases": {"m": "sqlite:///${DB_FILE:-fallback.db}"}}
    for env in ({}, {"DB_FILE": ""}):
        assert from_dict(data, env=env).databases["m"].primary.url.database == "fallback.db"
    assert (
        from_dict(data, env={"DB_FILE": "set.db"}).databases["m"].primary.url.database == "set.db"
    )


def test_double_dollar_is_a_dollar_and_a_lone_dollar_stays() -> None:
    config = from_dict(
        {
            "databases": {
                "m": {"url": "sqlite://", "session": {"info": {"a": "$$HOME", "b": "a$b$"}}}
            }
        },
        env={"HOME": "/home/x"},
    )
    assert config.databases["m"].session["info"] == {"a": "$HOME", "b": "a$b$"}


def test_unterminated_or_invalid_reference_is_an_error() -> None:
    err = dict_error({"databases": {"m": "sqlite:///${DB_FILE"}})
    assert str(err) == "databases.m: unterminated '${' (write a literal '$' as '$$')"
    err = dict_error({"databases": {"m": f"sqlite:///${{1X:-{SECRET}}}"}})
    assert str(err) == (
        "databases.m: '${' does not start a valid ${NAME} or ${NAME:-default} reference"
        " (write a literal '$' as '$$')"
    )


def test_keys_are_not_interpolated() -> None:
    err = dict_error({"databases": {"${NAME}": "sqlite://"}}, env={"NAME": "main"})
    assert err.key_path == "databases.${NAME}"


def test_config_dir_is_the_files_directory_and_env_cannot_override_it(tmp_path: Path) -> None:
    path = write(tmp_path, "databases:\n  main: sqlite:///${CONFIG_DIR}/main.db\n")
    config = load(path, env={"CONFIG_DIR": "/elsewhere"})
    assert config.databases["main"].primary.url.database == f"{tmp_path}/main.db"
    assert config.source == path


def test_config_dir_of_from_dict_is_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = from_dict({"databases": {"m": "sqlite:///${CONFIG_DIR}/m.db"}})
    assert config.databases["m"].primary.url.database == f"{os.getcwd()}/m.db"
    assert config.source is None


def test_env_mapping_is_used_instead_of_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_FILE", "from-environ.db")
    data = {"databases": {"m": "sqlite:///${DB_FILE:-default.db}"}}
    assert from_dict(data).databases["m"].primary.url.database == "from-environ.db"
    assert from_dict(data, env={}).databases["m"].primary.url.database == "default.db"
    assert from_dict(data, env={"DB_FILE": "x.db"}).databases["m"].primary.url.database == "x.db"


# --- password_file, replicas, from_dict -----------------------------------------------------


def test_password_file_is_read_relative_to_config_dir_without_trailing_newline(
    tmp_path: Path,
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw").write_text(SECRET + "\n", encoding="utf-8")
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary:
              url: postgresql+psycopg2://app@db1/app
              password_file: secrets/pw
        """,
    )
    primary = load(path).databases["main"].primary
    assert primary.url.password == SECRET
    assert SECRET not in repr(primary)


def test_unreadable_password_file_names_the_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            url: postgresql+psycopg2://app@db1/app
            password_file: nope
        """,
    )
    assert str(load_error(path)) == (
        f"{path}:4:20: databases.main.password_file: cannot read password file "
        f"'{tmp_path}/nope': No such file or directory"
    )


def test_replicas_as_a_list_are_named_in_order_with_indexed_key_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: sqlite:///p.db
            replicas:
              - sqlite:///r1.db
              - {url: sqlite:///r2.db, weight: 0}
        """,
    )
    main = load(path).databases["main"]
    assert [engine.name for engine in main.engines] == [
        "main.primary",
        "main.replica1",
        "main.replica2",
    ]
    assert [engine.role for engine in main.engines] == ["primary", "replica", "replica"]
    assert main.replicas[1].weight == 0
    path = write(
        tmp_path,
        "databases:\n  main:\n    primary: sqlite://\n    replicas:\n      - {url: 5}\n",
    )
    assert str(load_error(path)) == (
        f"{path}:5:15: databases.main.replicas[0].url: expected a URL string or a mapping, got 5"
    )


def test_from_dict_messages_have_no_position() -> None:
    err = dict_error(
        {
            "databases": {
                "main": {
                    "primary": "sqlite://",
                    "replicas": {"a": {"url": "sqlite://", "weight": "two"}},
                }
            }
        }
    )
    assert str(err) == "databases.main.replicas.a.weight: expected a number >= 0, got 'two'"
    assert where(err) == (None, None, None, "databases.main.replicas.a.weight")
    err = dict_error({"databases": {}, "extra": 1})
    assert [str(e) for e in err.errors] == [
        "extra: unknown key 'extra'; expected one of: defaults, databases",
        "databases: expected at least one database",
    ]


# --- the result -----------------------------------------------------------------------------


def test_config_is_frozen() -> None:
    config = from_dict({"databases": {"m": "sqlite://"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.databases["m"].primary.weight = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.databases["x"] = config.databases["m"]  # type: ignore[index]
    assert isinstance(config.databases["m"].replicas, tuple)


def test_to_dict_is_resolved_masked_and_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults: {pool_pre_ping: true}
        databases:
          zeta:
            primary: postgresql+psycopg2://app:${PW}@db1/app?sslpassword=${PW}
            replicas:
              b: {url: 'postgresql+psycopg2://app:${PW}@db3/app', weight: 2}
              a: postgresql+psycopg2://app:${PW}@db2/app
            options: {connect_args: {password: '${PW}'}}
            session: {expire_on_commit: false}
          alpha: sqlite://
        """,
    )
    config = load(path, env={"PW": SECRET})
    shown = config.to_dict()
    assert SECRET not in repr(shown) and SECRET not in repr(config)
    zeta = shown["databases"]["zeta"]
    assert list(shown["databases"]) == ["zeta", "alpha"]
    assert zeta["primary"] == {
        # A password in the query string goes to the driver through connect_args.
        "url": "postgresql+psycopg2://app:***@db1/app",
        "options": {
            "pool_pre_ping": True,
            "connect_args": {"sslpassword": "***", "password": "***"},
        },
    }
    assert list(zeta["replicas"]) == ["b", "a"]
    assert zeta["replicas"]["b"]["url"] == "postgresql+psycopg2://app:***@db3/app"
    assert zeta["replicas"]["b"]["weight"] == 2
    assert zeta["session"] == {"expire_on_commit": False}
    assert zeta["routing"]["default_role"] == "write"
    assert shown["databases"]["alpha"] == {
        "primary": {"url": "sqlite://", "options": {"pool_pre_ping": True}},
        "replicas": {},
        "session": {},
        "routing": {
            "policy": "round_robin",
            "fallback_to_primary": True,
            "max_lag_seconds": None,
            "check_interval_seconds": 1.0,
            "cooldown_seconds": 5.0,
            "default_role": "write",
            "connect_timeout_seconds": 5.0,
            "read_your_writes": True,
            "causal_wait_seconds": 0.0,
            "causal_ttl_seconds": 60.0,
        },
    }


def test_mask_url_hides_the_password() -> None:
    url = sqlalchemy.engine.make_url(f"mysql+pymysql://u:{SECRET}@h/db")
    assert mask_url(url) == "mysql+pymysql://u:***@h/db"


def test_no_error_message_shows_a_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://app:{SECRET}@db1/app"
    mistakes: list[dict[str, Any]] = [
        {"databases": {"m": {"primary": url, "options": {"pool_sizee": 1}}}},
        {"databases": {"m": {"primary": url, "replicas": {"primary": url}}}},
        {"databases": {"m": {"primary": url, "routing": {"policy": "x"}}}},
        {"databases": {"m": {"url": url, "password_file": "pw"}}},
        {"databases": {"m": url.replace("postgresql", "postgresq")}},
        {"databases": {"m": url.replace("db1", "db1:port")}},
        {"databases": {"m": {"url": {"drivername": "sqlite", "password": 12345, "x": 1}}}},
    ]
    for data in mistakes:
        err = dict_error(data)
        assert SECRET not in str(err) and "12345" not in str(err), str(err)


def test_loading_opens_no_connection(tmp_path: Path) -> None:
    """Port 1 has no server: a connection attempt would fail, so loading must not make one."""
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: postgresql+psycopg2://app:pw@127.0.0.1:1/app
            replicas: [mysql+pymysql://app:pw@127.0.0.1:1/app]
          local: sqlite:///${CONFIG_DIR}/var/never.db
        """,
    )
    config = load(path)
    assert [engine.name for engine in config.engines()] == [
        "main.primary",
        "main.replica1",
        "local.primary",
    ]
    assert not (tmp_path / "var").exists()


# --- the bundled configs -----------------------------------------------------------------


def test_bundled_example_loads_without_environment() -> None:
    config = load(REPO / "config" / "example.yaml", env={})
    assert list(config.databases) == ["main", "reports", "analytics", "local"]
    main = config.databases["main"]
    assert [engine.name for engine in main.engines] == ["main.primary", "main.a", "main.b"]
    assert main.replicas[1].weight == 2 and main.replicas[1].options["pool_size"] == 20
    assert main.routing.max_lag_seconds == 5
    assert [e.name for e in config.databases["analytics"].replicas] == [
        "analytics.replica1",
        "analytics.replica2",
    ]


def test_bundled_sqlite_config_replica_opens_the_primary_file_read_only(tmp_path: Path) -> None:
    shutil.copy(REPO / "config" / "databases.yaml", tmp_path / "databases.yaml")
    config: Config = load(tmp_path / "databases.yaml")
    main = config.databases["main"]
    assert main.routing.default_role == "write"
    (tmp_path / "var").mkdir()
    with sqlite3.connect(tmp_path / "var" / "main.db") as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")
    replica = sqlalchemy.create_engine(main.replicas[0].url, **main.replicas[0].options)
    try:
        with replica.connect() as conn:
            assert conn.execute(text("SELECT x FROM t")).scalar() == 1
            with pytest.raises(sqlalchemy.exc.OperationalError, match="readonly"):
                conn.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        replica.dispose()


# --- issue 8: every mistake at once, URL parts, 2.x session options, option types ----------


def test_several_mistakes_are_reported_together_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: sqlite://
            replicas:
              a: {url: 'sqlite://', weight: two}
            routing: {policy: fastest, cooldown_seconds: -1}
            session: {autocommit: true}
          other: nosuchdialect://h/d
        """,
    )
    err = load_error(path)
    assert [(e.line, e.column, e.key_path) for e in err.errors] == [
        (5, 37, "databases.main.replicas.a.weight"),
        (6, 23, "databases.main.routing.policy"),
        (6, 50, "databases.main.routing.cooldown_seconds"),
        (7, 15, "databases.main.session.autocommit"),
        (8, 10, "databases.other"),
    ]
    assert str(err).splitlines()[0] == (
        f"{path}:5:37: databases.main.replicas.a.weight: expected a number >= 0, got 'two'"
    )
    assert len(str(err).splitlines()) == 5
    assert (err.line, err.column, err.key_path) == (5, 37, "databases.main.replicas.a.weight")


def test_an_engine_mapping_may_give_the_url_parts_directly(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(f"{SECRET}\n")
    path = write(
        tmp_path,
        """
        databases:
          main:
            primary: {drivername: postgresql+psycopg2, username: app, host: db1,
                      database: app, password_file: secret.txt, options: {pool_size: 3}}
            replicas:
              a: {drivername: postgresql+psycopg2, host: db2, port: 5433, weight: 2}
        """,
    )
    main = load(path).databases["main"]
    assert (main.primary.url.host, main.primary.url.password) == ("db1", SECRET)
    assert main.primary.options["pool_size"] == 3
    assert (main.replicas[0].url.port, main.replicas[0].weight) == (5433, 2.0)


def test_session_autocommit_is_refused_with_the_2x_way(tmp_path: Path) -> None:
    err = dict_error({"databases": {"m": {"url": "sqlite://", "session": {"autocommit": True}}}})
    assert "no longer take 'autocommit'" in str(err)
    assert err.key_path == "databases.m.session.autocommit"


def test_a_wrong_option_type_is_caught_for_every_engine() -> None:
    err = dict_error(
        {
            "databases": {
                "m": {
                    "primary": "sqlite:///a.db",
                    "replicas": {
                        "a": {"url": "sqlite:///a.db", "options": {"pool_size": "ten"}},
                        "b": {"url": "sqlite:///a.db", "options": {"pool_size": "x"}},
                    },
                }
            }
        }
    )
    assert [e.key_path for e in err.errors] == [
        "databases.m.replicas.a.options.pool_size",
        "databases.m.replicas.b.options.pool_size",
    ]
    assert str(err.errors[0]).endswith("expected a whole number, got 'ten'")
