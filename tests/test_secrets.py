"""No password shows anywhere: str/repr of every public object, logs, driver errors, the CLI.

Passwords hold ``@ : / % # ${`` and spaces; they come from ``${VAR}`` in URL
strings, ``?password=`` in the query, ``connect_args``, ``password_file`` and
URL parts. Every captured output is searched for the password and for its
URL-quoted form.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from servers import PostgresCluster

from multidb import ConfigError, Registry
from multidb.cli import main

PASSWORDS = ["p@ss:w/rd%#x y", "a${b}c d:e@f", "100%/#@: z"]


def _leaks(text: str, password: str) -> list[str]:
    found = [form for form in (password, quote(password, safe="")) if form in text]
    return found


def _config(tmp_path: Path, host: str, port: int, password: str) -> Path:
    (tmp_path / "secret.txt").write_text(password + "\n")
    path = tmp_path / "databases.yaml"
    path.write_text(
        f"""
defaults: {{pool_pre_ping: true}}
databases:
  env:
    primary: postgresql+psycopg2://app:${{PW}}@{host}:{port}/app
    replicas:
      q: postgresql+psycopg2://app@{host}:{port}/app?password=${{PW}}
      c:
        url: postgresql+psycopg2://app@{host}:{port}/app
        options: {{connect_args: {{password: '${{PW}}', connect_timeout: 2}}}}
      f:
        url: postgresql+psycopg2://app@{host}:{port}/app
        password_file: secret.txt
      parts:
        drivername: postgresql+psycopg2
        username: app
        password: ${{PW}}
        host: {host}
        port: {port}
        database: app
"""
    )
    return path


def _outputs(path: Path, password: str) -> Iterator[tuple[str, str]]:
    """(what, text) for every output path of a registry built from ``path``."""
    env = {"PW": password}
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(name) for name in ("multidb", "sqlalchemy")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        with Registry.from_yaml(path, env=env) as dbs:
            yield "repr(registry)", repr(dbs)
            yield "repr(config)", repr(dbs.config)
            yield "to_dict", repr(dbs.config.to_dict())
            for name in dbs.engine_names:
                engine = dbs.engine(name)
                yield f"repr({name})", repr(engine)
                yield f"str({name}.url)", str(engine.url)
                yield f"repr({name}.url)", repr(engine.url)
                config = dbs.config.databases[name.split(".")[0]]
                yield f"repr({name} config)", repr(config)
                yield (
                    f"repr({name} options)",
                    repr(next(e for e in config.engines if e.name == name).options),
                )
                try:
                    with dbs.session(name) as s:
                        s.connection()
                except Exception as exc:
                    yield f"error({name})", f"{exc!s} {exc!r}"
            for status in dbs.health():
                yield f"health({status.name})", repr(status)
            yield "stats", repr(dbs.stats())
        for command in (["check", str(path)], ["check", "--json", str(path)], ["show", str(path)]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(command)
            yield " ".join(command[:2]), out.getvalue() + err.getvalue()
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
    yield "logs", stream.getvalue()


@pytest.mark.postgresql
@pytest.mark.parametrize("password", PASSWORDS)
def test_no_output_path_shows_a_password(
    password: str, pg_cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right password against a live server, then a wrong one and a dead port."""
    primary = pg_cluster.primary
    primary.query(f"ALTER ROLE app PASSWORD '{password}'")
    leaks: dict[str, list[str]] = {}
    outputs = 0
    try:
        monkeypatch.setenv("PW", password)
        for label, port in (("live", primary.port), ("dead", 1)):
            (tmp_path / label).mkdir()
            path = _config(tmp_path / label, primary.host, port, password)
            for what, text in _outputs(path, password):
                outputs += 1
                if found := _leaks(text, password):
                    leaks[f"{label}: {what}"] = found
        # A wrong password: the driver's error must not echo the configured one.
        primary.query("ALTER ROLE app PASSWORD 'app-secret'")
        (tmp_path / "wrong").mkdir()
        path = _config(tmp_path / "wrong", primary.host, primary.port, password)
        for what, text in _outputs(path, password):
            outputs += 1
            if found := _leaks(text, password):
                leaks[f"wrong: {what}"] = found
    finally:
        primary.query("ALTER ROLE app PASSWORD 'app-secret'")
    print(f"{outputs} outputs, {len(leaks)} leaks")
    assert leaks == {}


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_password_with_url_characters_works_from_a_variable(password: str) -> None:
    dbs = Registry.from_dict(
        {"databases": {"m": "postgresql+psycopg2://app:${PW}@db1:5432/app"}}, env={"PW": password}
    )
    url = dbs.config.databases["m"].primary.url
    assert (url.username, url.password, url.host, url.port) == ("app", password, "db1", 5432)


@pytest.mark.parametrize(
    "config",
    [
        {"databases": {"m": {"primary": "sqlite://", "replicas": "postgresql://u:${PW}@h/d"}}},
        {"databases": {"m": {"primary": "sqlite://", "routing": "postgresql://u:${PW}@h/d"}}},
        {"defaults": "postgresql://u:${PW}@h/d", "databases": {"m": "sqlite://"}},
        {"databases": {"m": "postgresql+psycopg2://u:${PW}@h:port/d"}},
        {"databases": {"m": "postgresql+psycopg2://u:p${@h/d?x=${PW}"}},
        {"databases": {"m": "nosuchdialect://u:${PW}@h/d"}},
        {"databases": {"m": {"url": "sqlite://", "password": "${PW}"}}},
        {"databases": {"m": {"primary": {"drivername": "postgresql+psycopg2", "password": 5}}}},
    ],
)
def test_config_errors_never_echo_a_password(config: dict[str, Any]) -> None:
    for password in PASSWORDS:
        with pytest.raises(ConfigError) as caught:
            Registry.from_dict(config, env={"PW": password})
        assert _leaks(str(caught.value), password) == []
