"""The loader never crashes: any input gives a Registry or a ConfigError, and the CLI exits 2.

Property-based (hypothesis): YAML texts built from config-shaped fragments and
random mutations, and Python mappings with odd keys and values. Set
MULTIDB_FUZZ_EXAMPLES for more examples than CI runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multidb import ConfigError, Registry
from multidb.cli import main

EXAMPLES = int(os.environ.get("MULTIDB_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

KEYS = [
    "defaults",
    "databases",
    "main",
    "primary",
    "replicas",
    "url",
    "options",
    "session",
    "routing",
    "weight",
    "password_file",
    "drivername",
    "username",
    "password",
    "host",
    "port",
    "database",
    "query",
    "pool_size",
    "autocommit",
    "expire_on_commit",
    "policy",
    "max_lag_seconds",
    "default_role",
    "connect_args",
    "a",
    "b",
    "<<",
    "1",
    "",
    "databases ",
]
SCALARS = [
    "sqlite://",
    "sqlite:///${CONFIG_DIR}/x.db",
    "postgresql+psycopg2://u:p@h/d",
    "mysql+pymysql://u@h:3306/d?password=x",
    "a+b+c://",
    "mysql+__init__://",
    "0x_",
    "0b_",
    "9" * 400,
    "'²'",
    "${X}",
    "${",
    "$${X}",
    "${1X:-y}",
    "~",
    "null",
    "true",
    "-1",
    "1e999",
    ".nan",
    "[]",
    "{}",
    "!!python/object:os.system ls",
    "*a",
    "&a x",
    '"\\0"',
    "x\x00y",
    "postgresql://u:${PW}@h/d",
    "round_robin",
    "write",
    "two",
]
SECRET = "fz-s3cr3t"


def yaml_text() -> st.SearchStrategy[str]:
    scalar = st.sampled_from(SCALARS) | st.text(max_size=12)
    tree = st.recursive(
        scalar,
        lambda children: (
            st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
            | st.lists(children, max_size=3)
        ),
        max_leaves=20,
    )

    def dump(value: Any) -> str:
        try:
            return yaml.safe_dump({"databases": value}, allow_unicode=True)
        except Exception:
            return "databases: x\n"

    built = tree.map(dump)
    mutated = st.tuples(built, st.integers(0, 400), st.text(max_size=6)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    )
    return built | mutated | st.text(max_size=200)


def python_value() -> st.SearchStrategy[Any]:
    scalar = (
        st.sampled_from(SCALARS)
        | st.integers()
        | st.floats()
        | st.booleans()
        | st.none()
        | st.binary(max_size=4)
    )
    return st.recursive(
        scalar,
        lambda children: (
            st.dictionaries(
                st.sampled_from(KEYS) | st.integers() | st.none() | st.tuples(st.integers()),
                children,
                max_size=4,
            )
            | st.lists(children, max_size=3)
        ),
        max_leaves=20,
    )


@FUZZ
@given(text=yaml_text())
def test_every_file_gives_a_registry_or_a_positioned_config_error(
    text: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        Registry.from_yaml(path, env={"PW": SECRET, "X": "1"}).dispose()
    except ConfigError as exc:
        for error in exc.errors:
            assert error.line is not None and error.column is not None, str(error)
        assert SECRET not in str(exc)


@FUZZ
@given(data=python_value())
def test_every_mapping_gives_a_registry_or_a_config_error(data: Any) -> None:
    with contextlib.suppress(ConfigError):
        Registry.from_dict({"databases": data}, env={"PW": SECRET}).dispose()


def test_self_referencing_mapping_is_a_config_error() -> None:
    loop: dict[str, Any] = {}
    loop["main"] = loop
    with pytest.raises(ConfigError, match="nested more than"):
        Registry.from_dict({"databases": loop})


@settings(
    max_examples=max(EXAMPLES // 5, 50),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=yaml_text())
def test_cli_never_prints_a_traceback(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("cli") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["show", str(path)])
    assert code in (0, 2)
    assert "Traceback" not in out.getvalue() + err.getvalue()


@pytest.mark.parametrize(
    "text",
    [
        "databases:\n  m: 0x_\n",
        "databases: " + "[" * 300 + "]" * 300,
        "databases:\n  m: a+b+c://\n",
    ],
)
def test_cli_subprocess_exits_2_with_one_json_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "multidb", "check", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    import json

    error = json.loads(done.stdout)
    assert error["source"] == str(path) and error["line"] >= 1 and error["column"] >= 1
