"""The benchmark scripts keep working: each runs with a tiny N on SQLite and prints its table.

Only the shape of the output is checked, never a time.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import create_engine

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str) -> ModuleType:
    """Import a benchmark script by its file name (hotpath.py imports overhead.py so too)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_overhead_prints_each_contender_row(capsys: pytest.CaptureFixture[str]) -> None:
    """overhead.py: a row with us/op and a ratio for each fitting (workload, contender) pair."""
    assert _script("overhead").main(["--rounds", "1", "--n", "3", "--backend", "sqlite"]) == 0
    out = capsys.readouterr().out
    reads = [
        "floor-write",
        "floor-read",
        "multidb-write",
        "multidb-read",
        "multidb-auto",
        "routing",
    ]
    writes = ["floor-write", "multidb-write", "multidb-auto", "routing"]
    expected = {"W1": reads, "W2": reads, "W3": writes, "W4": writes}
    rows = re.findall(r"^(W\d)\s+(\S+)\s+[\d.]+\s+[\d.]+x\s+(floor-\w+)$", out, re.MULTILINE)
    assert sorted((w, c) for w, c, _ in rows) == sorted(
        (w, c) for w, contenders in expected.items() for c in contenders
    )
    floors = {c: f for _, c, f in rows}
    assert floors["multidb-read"] == "floor-read"
    assert floors["multidb-auto"] == floors["multidb-write"] == "floor-write"


def test_overhead_lag_prints_on_off_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    """overhead.py --lag: an on/off ratio for each role on each workload it fits."""
    assert _script("overhead").main(["--rounds", "1", "--n", "3", "--lag"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(W\d)\s+(write|read|auto)\s+[\d.]+\s+[\d.]+\s+[\d.]+x$", out, re.MULTILINE)
    assert len(rows) == 10  # write and auto on W1-W4, read on W1-W2
    assert "lag probes" in out


def test_startup_builds_without_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    """startup.py: both variants build every engine name and open no connection."""
    assert _script("startup").main(["--databases", "5", "--replicas", "2", "--builds", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(sqlite|postgresql)\s+(\d+)\s+[\d.]+\s+(\d+)\s+(\d+)$", out, re.MULTILINE)
    assert rows == [("sqlite", "15", "0", "0"), ("postgresql", "15", "0", "0")]


def test_hotpath_lists_where_the_extra_time_goes(capsys: pytest.CaptureFixture[str]) -> None:
    """hotpath.py: a section per profiled pair, each listing functions."""
    assert _script("hotpath").main(["--n", "3", "--repeat", "1", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^multidb-\w+ W\d: ", out, re.MULTILINE)) == 6
    assert len(re.findall(r"^\s+[+-][\d.]+ us/op", out, re.MULTILINE)) == 12


def test_async_overhead_prints_each_contender_row(capsys: pytest.CaptureFixture[str]) -> None:
    """async_overhead.py: a row per fitting (workload, contender) pair, against its floor."""
    assert _script("async_overhead").main(["--rounds", "1", "--n", "3"]) == 0
    out = capsys.readouterr().out
    reads = ["floor-write", "floor-read", "multidb-write", "multidb-read", "multidb-auto"]
    writes = ["floor-write", "multidb-write", "multidb-auto"]
    expected = {"W1": reads, "W2": reads, "W3": writes, "W4": writes}
    rows = re.findall(r"^(W\d)\s+(\S+)\s+[\d.]+\s+[\d.]+x\s+(floor-\w+)$", out, re.MULTILINE)
    assert sorted((w, c) for w, c, _ in rows) == sorted(
        (w, c) for w, contenders in expected.items() for c in contenders
    )
    assert "backend sqlite+aiosqlite" in out


@pytest.mark.parametrize(("mode", "backend"), [([], "sqlite"), (["--async"], "sqlite+aiosqlite")])
def test_instructions_counts_a_pair_against_its_floor(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    mode: list[str],
    backend: str,
) -> None:
    """instructions.py: each child runs its sessions, and the table is (count(BASE + n) -
    count(BASE)) / n against the floor's, for sync sessions and (``--async``) async ones.

    The children run without valgrind here, with made-up counts (40 s or more under
    callgrind each on CI's machines); counting a child under callgrind is
    :func:`test_peers_counts_instructions`'s, through the same function.
    """
    instructions = _script("instructions")
    children: list[list[str]] = []

    def run_uncounted(argv: list[str], layout: int, env: dict[str, str] | None = None) -> int:
        _, flag, contender, _workload, count, *_ = argv
        assert flag == "--child"
        subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True)
        children.append(argv)
        per_op = 1100 if contender == "multidb-read" else 1000
        return 5_000_000 + int(count) * per_op

    monkeypatch.setattr(instructions, "main_thread_instructions", run_uncounted)
    monkeypatch.setattr(instructions.shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = ["--n", "2", "--layouts", "1", "--workloads", "W1", "--contenders", "multidb-read"]
    assert instructions.main([*argv, *mode]) == 0
    out = capsys.readouterr().out
    assert f"backend {backend}:" in out
    rows = re.findall(r"^(W\d)\s+(\S+)\s+([\d.]+)\s+([\d.]+)x\s+(floor-\w+)$", out, re.MULTILINE)
    assert rows == [("W1", "multidb-read", "1.1", "1.100", "floor-read")]
    expected_mode = "async" if mode else "sync"
    assert sorted((a[2], a[4], a[6]) for a in children) == [
        ("floor-read", str(instructions.BASE), expected_mode),
        ("floor-read", str(instructions.BASE + 2), expected_mode),
        ("multidb-read", str(instructions.BASE), expected_mode),
        ("multidb-read", str(instructions.BASE + 2), expected_mode),
    ]


PEERS_ROW = re.compile(r"^W1\s+(\S+)\s+([\d.]+)\s+[\d.]+x\s+(floor-\w+)$", re.MULTILINE)
PEERS_SKIPPED = re.compile(
    r"^W1\s+(\S+)\s+(not installed \(pip install \S+\)|fails.*)$", re.MULTILINE
)


def _peers_table_shape(out: str, expected: list[str]) -> dict[str, str]:
    """Each expected contender has one row, with a figure or a reason it was skipped."""
    rows = {name: floor for name, _, floor in PEERS_ROW.findall(out)}
    skipped = dict(PEERS_SKIPPED.findall(out))
    assert sorted([*rows, *skipped]) == sorted(expected)
    assert not rows.keys() & skipped.keys()
    return rows


def test_peers_prints_a_row_per_contender(capsys: pytest.CaptureFixture[str]) -> None:
    """peers.py: a wall-clock row for multidb and each peer, or why a peer was skipped."""
    peers = _script("peers")
    assert peers.main(["--measure", "wall", "--rounds", "1", "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^peers: .*flask-sqlalchemy.*falcon-sqla", out, re.MULTILINE)
    assert "wall-clock" in out
    rows = _peers_table_shape(out, list(peers.CONTENDERS))
    assert {"floor-write", "floor-read", "multidb-read", "multidb-auto", "routing"} <= rows.keys()
    assert rows["multidb-read"] == rows["multidb-auto"] == rows["routing"] == "floor-read"
    assert re.search(r"^multidb ahead of every peer run: (yes|no) ", out, re.MULTILINE)


def test_peers_counts_instructions(capsys: pytest.CaptureFixture[str]) -> None:
    """peers.py: an instructions row against the replica floor, under callgrind."""
    if shutil.which("valgrind") is None:  # installed on CI's machines: fail there, skip elsewhere
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("valgrind is not installed", pytrace=False)
        pytest.skip("valgrind is not installed")
    argv = ["--measure", "instructions", "--icount-n", "2", "--layouts", "1"]
    assert _script("peers").main([*argv, "--contenders", "multidb-read"]) == 0
    out = capsys.readouterr().out
    assert "instructions per operation" in out
    rows = PEERS_ROW.findall(out)
    assert [(name, floor) for name, _, floor in rows] == [
        ("floor-read", "floor-read"),
        ("multidb-read", "floor-read"),
    ]
    assert float(rows[1][1]) > 10  # thousands of instructions: a session is not free


ROUNDTRIP_ROW = re.compile(r"^(W\d)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", re.MULTILINE)


@pytest.mark.parametrize(
    ("kind", "driver"),
    [
        pytest.param("postgresql", None, marks=pytest.mark.postgresql, id="psycopg2"),
        pytest.param("postgresql", "psycopg", marks=pytest.mark.postgresql, id="psycopg-async"),
        pytest.param("mariadb", None, marks=pytest.mark.mariadb, id="pymysql"),
    ],
)
def test_roundtrips_counts_what_each_session_sends(
    kind: str,
    driver: str | None,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """roundtrips.py, on the shared clusters: reads send what the floor sends, on the replica
    (psycopg 3 included: a rollback there would also cost a DEALLOCATE ALL); a write
    transaction sends one statement more (the position read-your-writes records)."""
    cluster = request.getfixturevalue("pg_cluster" if kind == "postgresql" else "mariadb_cluster")
    roundtrips = _script("roundtrips")
    overhead = _script("overhead")
    engine = create_engine(cluster.primary.url())
    ids = overhead.seed(engine)
    engine.dispose()
    cluster.wait_caught_up()
    backend = overhead.Backend(kind, cluster.primary.url(), cluster.replicas[0].url(), ids)
    logs = roundtrips.PostgresLog if kind == "postgresql" else roundtrips.MariaDBLog
    with logs(cluster.primary).on() as primary, logs(cluster.replicas[0]).on() as replica:
        lines = roundtrips.table(kind, primary, replica, backend, 5, driver)  # psycopg: 5th run
    print("\n".join(lines))
    rows = {
        (w, c): tuple(map(float, r)) for w, c, *r in ROUNDTRIP_ROW.findall(capsys.readouterr().out)
    }
    assert len(rows) == (20 if driver is None else 16)  # no routing recipe in async
    for workload in ("W1", "W2"):
        floor = rows[workload, "floor-read"]
        assert floor[0] == 0 and floor[2] > 1  # all on the replica
        assert rows[workload, "multidb-read"] == floor
        assert rows[workload, "multidb-auto"] == floor
        assert rows[workload, "multidb-write"] == rows[workload, "floor-write"]
    for workload in ("W3", "W4"):
        assert rows[workload, "multidb-write"][2] == rows[workload, "floor-write"][2] + 1
