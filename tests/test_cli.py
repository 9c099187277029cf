"""SPEC section 3: ``multidb check`` and ``multidb show``, their exit codes and output."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import APP_PASSWORD, MariaDBCluster, PostgresCluster
from sqlalchemy.engine import make_url

from multidb.cli import main

SECRET = "pw-Zq8xK2-cli"
FILE_SECRET = "file-secret-Yw7"
ROW = re.compile(
    r"^(?P<name>\S+)\s+(?P<role>primary|replica)\s+(?P<url>\S+)\s+(?P<status>OK|FAIL)"
    r"\s+(?P<latency>-|\d+\.\d ms)\s+(?P<lag>-|\d+\.\d s)(?:\s+(?P<error>.*))?$"
)
JSON_KEYS = {"name", "role", "url", "ok", "latency_ms", "lag_seconds", "error"}
CONSOLE_SCRIPT = Path(sys.executable).parent / "multidb"


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Row:
    name: str
    role: str
    url: str
    status: str
    latency: str
    lag: str
    error: str


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run ``multidb ARGV`` in this process."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MULTIDB_CONFIG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_module(*argv: str, cwd: Path) -> Run:
    """Run ``python -m multidb ARGV`` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "multidb", *argv],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_script(*argv: str, cwd: Path) -> Run:
    """Run the installed ``multidb`` console script as a real process."""
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), *argv],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def table(out: str) -> list[Row]:
    """The rows of ``check``'s table, header checked and left out."""
    header, *lines = out.rstrip("\n").splitlines()
    assert header.split() == ["ENGINE", "ROLE", "URL", "STATUS", "LATENCY", "LAG"]
    rows = []
    for line in lines:
        match = ROW.match(line)
        assert match, f"not a table row: {line!r}"
        rows.append(Row(**{k: v or "" for k, v in match.groupdict().items()}))
    return rows


def write(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


def sqlite_config(directory: Path, name: str = "databases.yaml") -> Path:
    """A config with an SQLite primary and a read-only replica of the same file."""
    directory.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(directory / "main.db") as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
    return write(
        directory / name,
        """
        databases:
          main:
            primary: sqlite:///${CONFIG_DIR}/main.db
            replicas:
              ro: sqlite:///file:${CONFIG_DIR}/main.db?mode=ro&uri=true
        """,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_sqlite_check_ok(run: Run, directory: Path) -> None:
    assert (run.code, run.err) == (0, "")
    primary, replica = table(run.out)
    assert (primary.name, primary.role, primary.status) == ("main.primary", "primary", "OK")
    assert (replica.name, replica.role, replica.status) == ("main.ro", "replica", "OK")
    assert primary.url == f"sqlite:///{directory}/main.db"
    assert make_url(replica.url).database == f"file:{directory}/main.db"
    assert make_url(replica.url).query == {"mode": "ro", "uri": "true"}
    for row in (primary, replica):
        assert row.latency.endswith(" ms")
        assert float(row.latency.removesuffix(" ms")) >= 0
    # A read-only open of the primary's own file is never behind.
    assert (primary.lag, primary.error) == ("-", "")
    assert (replica.lag, replica.error) == ("0.0 s", "")


# --- check ----------------------------------------------------------------------------------


def test_check_prints_one_ok_row_per_engine_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sqlite_config(tmp_path)
    assert_sqlite_check_ok(cli(capsys, "check", str(path)), tmp_path)


def test_check_as_python_dash_m_multidb_is_the_same_program(tmp_path: Path) -> None:
    path = sqlite_config(tmp_path)
    assert_sqlite_check_ok(run_module("check", str(path), cwd=tmp_path), tmp_path)


def test_check_as_installed_console_script_is_the_same_program(tmp_path: Path) -> None:
    assert CONSOLE_SCRIPT.is_file(), f"no console script at {CONSOLE_SCRIPT}"
    path = sqlite_config(tmp_path)
    assert_sqlite_check_ok(run_script("check", str(path), cwd=tmp_path), tmp_path)


def test_check_without_argument_reads_multidb_config_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = sqlite_config(tmp_path / "elsewhere")
    # A default file exists too: the variable wins over it.
    write(tmp_path / "cwd/config/databases.yaml", "databases:\n  other: sqlite://\n")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MULTIDB_CONFIG", str(path))
    assert_sqlite_check_ok(cli(capsys, "check"), tmp_path / "elsewhere")


def test_check_argument_wins_over_multidb_config_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = sqlite_config(tmp_path)
    monkeypatch.setenv("MULTIDB_CONFIG", str(tmp_path / "missing.yaml"))
    assert_sqlite_check_ok(cli(capsys, "check", str(path)), tmp_path)


def test_check_without_argument_or_env_reads_config_databases_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sqlite_config(tmp_path / "config")
    monkeypatch.delenv("MULTIDB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert_sqlite_check_ok(cli(capsys, "check"), tmp_path / "config")


def test_check_without_argument_or_env_or_default_file_exits_2_naming_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MULTIDB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    run = cli(capsys, "check")
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        "config/databases.yaml: cannot read config file: No such file or directory\n"
    )


def test_check_json_prints_a_list_of_engine_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sqlite_config(tmp_path)
    run = cli(capsys, "check", "--json", str(path))
    assert (run.code, run.err) == (0, "")
    rows = json.loads(run.out)
    assert isinstance(rows, list)
    assert [set(row) for row in rows] == [JSON_KEYS, JSON_KEYS]
    assert [(r["name"], r["role"], r["ok"], r["error"]) for r in rows] == [
        ("main.primary", "primary", True, None),
        ("main.ro", "replica", True, None),
    ]
    assert rows[0]["url"] == f"sqlite:///{tmp_path}/main.db"
    for row in rows:
        assert isinstance(row["latency_ms"], float)
        assert row["latency_ms"] >= 0
    assert [row["lag_seconds"] for row in rows] == [None, 0.0]


def dead_replica_config(tmp_path: Path) -> Path:
    sqlite_config(tmp_path)
    return write(
        tmp_path / "dead.yaml",
        """
        databases:
          main:
            primary: sqlite:///${CONFIG_DIR}/main.db
            replicas:
              gone: sqlite:///file:/nonexistent/x.db?mode=ro&uri=true
        """,
    )


def test_check_with_a_dead_engine_exits_1_and_says_fail_with_one_line_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "check", str(dead_replica_config(tmp_path)))
    assert (run.code, run.err) == (1, "")
    primary, gone = table(run.out)
    assert (primary.name, primary.status, primary.error) == ("main.primary", "OK", "")
    assert (gone.name, gone.role, gone.status, gone.latency, gone.lag) == (
        "main.gone", "replica", "FAIL", "-", "-",
    )  # fmt: skip
    assert gone.error == "(sqlite3.OperationalError) unable to open database file"


def test_check_json_with_a_dead_engine_exits_1_with_ok_false_and_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "check", "--json", str(dead_replica_config(tmp_path)))
    assert run.code == 1
    gone = json.loads(run.out)[1]
    assert (gone["name"], gone["ok"], gone["latency_ms"]) == ("main.gone", False, None)
    assert gone["error"] == "(sqlite3.OperationalError) unable to open database file"


# --- config errors --------------------------------------------------------------------------


def bad_config(tmp_path: Path) -> Path:
    return write(
        tmp_path / "bad.yaml",
        """
        databases:
          main:
            primary: sqlite://
            replica: {a: sqlite://}
        """,
    )


BAD_MESSAGE = "{path}:4:5: databases.main.replica: unknown key 'replica'; did you mean 'replicas'?"


@pytest.mark.parametrize("command", ["check", "show"])
def test_config_error_exits_2_with_one_file_line_column_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = bad_config(tmp_path)
    run = cli(capsys, command, str(path))
    assert (run.code, run.out) == (2, "")
    assert run.err == f"{BAD_MESSAGE.format(path=path)}\n"


def test_config_error_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    run = run_module("check", str(path), cwd=tmp_path)
    assert (run.code, run.out) == (2, "")
    assert run.err == f"{BAD_MESSAGE.format(path=path)}\n"
    assert "Traceback" not in run.err


def test_yaml_syntax_error_exits_2_with_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "broken.yaml", "databases:\n  main: [sqlite://\n")
    run = cli(capsys, "check", str(path))
    assert (run.code, run.out) == (2, "")
    assert run.err.count("\n") == 1
    assert re.match(rf"^{re.escape(str(path))}:\d+:\d+: ", run.err), run.err


@pytest.mark.parametrize("command", ["check", "show"])
def test_missing_config_file_exits_2_with_one_line_naming_the_path_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = tmp_path / "nope.yaml"
    run = cli(capsys, command, str(path))
    assert (run.code, run.out) == (2, "")
    assert run.err == f"{path}: cannot read config file: No such file or directory\n"


def test_config_path_that_is_a_directory_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "check", str(tmp_path))
    assert (run.code, run.out) == (2, "")
    assert run.err == f"{tmp_path}: cannot read config file: Is a directory\n"


# --- show -----------------------------------------------------------------------------------


def test_show_prints_the_resolved_config_as_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sqlite_config(tmp_path)
    run = cli(capsys, "show", str(path))
    assert (run.code, run.err) == (0, "")
    shown = yaml.safe_load(run.out)
    main_db = shown["databases"]["main"]
    assert main_db["primary"]["url"] == f"sqlite:///{tmp_path}/main.db"
    assert list(main_db["replicas"]) == ["ro"]
    assert make_url(main_db["replicas"]["ro"]["url"]).database == f"file:{tmp_path}/main.db"
    assert main_db["replicas"]["ro"]["weight"] == 1
    assert main_db["routing"]["default_role"] == "write"


def secret_config(tmp_path: Path) -> Path:
    """A config with a password in a URL and one in a password_file; nothing listens there."""
    sqlite_config(tmp_path)
    (tmp_path / "pg-password").write_text(FILE_SECRET + "\n", encoding="utf-8")
    port = free_port()
    return write(
        tmp_path / "secret.yaml",
        f"""
        databases:
          main:
            primary: sqlite:///${{CONFIG_DIR}}/main.db
            replicas:
              inline: postgresql+psycopg2://app:{SECRET}@127.0.0.1:{port}/app
              filed:
                url: postgresql+psycopg2://app@127.0.0.1:{port}/app
                password_file: pg-password
        """,
    )


def test_show_masks_passwords_from_urls_and_password_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli(capsys, "show", str(secret_config(tmp_path)))
    assert run.code == 0
    replicas = yaml.safe_load(run.out)["databases"]["main"]["replicas"]
    for name in ("inline", "filed"):
        assert make_url(replicas[name]["url"]).password == "***"
        assert replicas[name]["url"].startswith("postgresql+psycopg2://app:***@127.0.0.1:")


@pytest.mark.parametrize("argv", [("check",), ("check", "--json"), ("show",)], ids=" ".join)
def test_no_password_appears_in_any_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    run = cli(capsys, *argv, str(secret_config(tmp_path)))
    assert run.code == (0 if argv == ("show",) else 1)
    for secret in (SECRET, FILE_SECRET):
        assert secret not in run.out
        assert secret not in run.err
    if argv == ("check",):
        rows = {row.name: row for row in table(run.out)}
        assert [rows[n].status for n in ("main.primary", "main.inline", "main.filed")] == [
            "OK", "FAIL", "FAIL",
        ]  # fmt: skip
        assert "Connection refused" in rows["main.inline"].error


def test_help_exits_0_and_names_the_commands(tmp_path: Path) -> None:
    run = run_module("--help", cwd=tmp_path)
    assert (run.code, run.err) == (0, "")
    assert "check" in run.out
    assert "show" in run.out


def test_no_command_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    run = run_script(cwd=tmp_path)
    assert (run.code, run.out) == (2, "")
    assert "usage: multidb" in run.err


# --- real servers ---------------------------------------------------------------------------

Server = Any  # PostgresServer | MariaDBServer: both have url()


def cluster_config(tmp_path: Path, primary: Server, replicas: dict[str, Server]) -> Path:
    data = {
        "databases": {
            "main": {
                "primary": primary.url(),
                "replicas": {name: server.url() for name, server in replicas.items()},
            }
        }
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def check_cluster(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, dict[str, Row]]:
    run = cli(capsys, "check", str(path))
    assert run.err == ""
    assert APP_PASSWORD not in run.out
    json_run = cli(capsys, "check", "--json", str(path))
    assert json_run.code == run.code
    assert APP_PASSWORD not in json_run.out + json_run.err
    return run.code, {row.name: row for row in table(run.out)}


def assert_healthy(code: int, rows: dict[str, Row], replicas: list[str]) -> None:
    assert code == 0, rows
    primary = rows["main.primary"]
    assert (primary.role, primary.status, primary.lag, primary.error) == (
        "primary", "OK", "-", "",
    )  # fmt: skip
    assert "app:***@" in primary.url
    for name in replicas:
        row = rows[f"main.{name}"]
        assert (row.role, row.status, row.error) == ("replica", "OK", "")
        assert row.lag != "-", f"{name} shows no lag number"
        assert float(row.lag.removesuffix(" s")) >= 0


@pytest.mark.postgresql
def test_check_on_postgresql_cluster_shows_roles_and_replica_lag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_cluster: PostgresCluster
) -> None:
    pg_cluster.wait_caught_up()
    replicas = {f"s{i}": s for i, s in enumerate(pg_cluster.replicas, 1)}
    code, rows = check_cluster(capsys, cluster_config(tmp_path, pg_cluster.primary, replicas))
    assert list(rows) == ["main.primary", *(f"main.{name}" for name in replicas)]
    assert_healthy(code, rows, list(replicas))


@pytest.mark.postgresql
def test_check_on_postgresql_fails_a_replica_that_is_the_primary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_cluster: PostgresCluster
) -> None:
    path = cluster_config(tmp_path, pg_cluster.primary, {"wrong": pg_cluster.primary})
    code, rows = check_cluster(capsys, path)
    assert code == 1
    assert rows["main.primary"].status == "OK"
    wrong = rows["main.wrong"]
    assert (wrong.status, wrong.error) == (
        "FAIL", "configured as replica but the server is not in recovery",
    )  # fmt: skip


@pytest.mark.postgresql
def test_check_on_postgresql_fails_a_primary_that_is_a_standby(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_cluster: PostgresCluster
) -> None:
    standby = pg_cluster.replicas[0]
    code, rows = check_cluster(capsys, cluster_config(tmp_path, standby, {}))
    assert code == 1
    primary = rows["main.primary"]
    assert (primary.status, primary.error) == (
        "FAIL", "configured as primary but the server is in recovery",
    )  # fmt: skip


@pytest.mark.mariadb
def test_check_on_mariadb_cluster_shows_roles_and_replica_lag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mariadb_cluster: MariaDBCluster
) -> None:
    mariadb_cluster.wait_caught_up()
    replicas = {f"r{i}": s for i, s in enumerate(mariadb_cluster.replicas, 1)}
    path = cluster_config(tmp_path, mariadb_cluster.primary, replicas)
    code, rows = check_cluster(capsys, path)
    assert list(rows) == ["main.primary", *(f"main.{name}" for name in replicas)]
    assert_healthy(code, rows, list(replicas))


@pytest.mark.mariadb
def test_check_on_mariadb_fails_a_replica_that_is_the_writable_primary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mariadb_cluster: MariaDBCluster
) -> None:
    path = cluster_config(tmp_path, mariadb_cluster.primary, {"wrong": mariadb_cluster.primary})
    code, rows = check_cluster(capsys, path)
    assert code == 1
    assert rows["main.primary"].status == "OK"
    wrong = rows["main.wrong"]
    assert (wrong.status, wrong.error) == (
        "FAIL", "configured as replica but the server is writable (read_only is off)",
    )  # fmt: skip


@pytest.mark.mariadb
def test_check_on_mariadb_fails_a_primary_that_is_a_read_only_replica(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mariadb_cluster: MariaDBCluster
) -> None:
    code, rows = check_cluster(capsys, cluster_config(tmp_path, mariadb_cluster.replicas[0], {}))
    assert code == 1
    primary = rows["main.primary"]
    assert (primary.status, primary.error) == (
        "FAIL", "configured as primary but the server is read_only",
    )  # fmt: skip
