"""What a multidb session costs per operation in CPU instructions, next to a plain session (SQLite).

    python benchmarks/instructions.py [--n 300] [--layouts 3] [--workloads W1,W2,W3,W4]
                                      [--contenders floor-write,multidb-auto,...] [--async]

Wall-clock medians on a shared machine drift by tens of percent between runs;
instruction counts do not. Each (workload, contender) pair of ``overhead.py``
runs in a child process under ``valgrind --tool=callgrind`` twice, once with
``BASE`` operations and once with ``BASE + n``; the difference over ``n`` is
the instructions of one operation, with start-up, imports and warm-up taken
out. The garbage collector is off (a collection lands on whichever contender
crosses the threshold).

The count is exact for one memory layout, but moving objects around changes
it by a few percent (about 2% on W1, more on W2: dictionaries keyed by
object identity collide differently): each pair runs under ``--layouts``
layouts (hash seed K, K thousand objects allocated first) and the figure is
their median. Only the main thread is counted. ``--async`` counts
``async_overhead.py``'s contenders instead, on aiosqlite: the driver's own
thread runs SQLite, every line of SQLAlchemy and multidb runs in the main one.
Needs valgrind (``apt install valgrind``); each child takes a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
overhead = importlib.import_module("overhead")
async_overhead = importlib.import_module("async_overhead")

__all__ = ["CONTENDERS", "main"]

BASE = 50  # operations both children run; their instructions cancel out
CONTENDERS = {  # name: (floor, workloads)
    "floor-write": ("floor-write", overhead.ALL),
    "floor-read": ("floor-read", overhead.READS),
    "multidb-write": ("floor-write", overhead.ALL),
    "multidb-read": ("floor-read", overhead.READS),
    "multidb-auto": ("floor-write", overhead.ALL),
    "routing": ("floor-write", overhead.ALL),
}
ASYNC_CONTENDERS = {k: v for k, v in CONTENDERS.items() if k != "routing"}  # async_overhead.py


def child(contender: str, workload: str, count: int, layout: int) -> None:
    """Run ``count`` operations of one pair after a warm-up (inside callgrind)."""
    shift = [object() for _ in range(1000 * layout)]  # noqa: F841 (kept alive: a layout)
    with overhead.sqlite_backend() as backend:
        write = create_engine(backend.primary_url)
        read = create_engine(backend.replica_url)
        for engine in (write, read):
            backend.connect_hook(engine)
        # The health monitor's first round runs, then it sleeps: a thread waking up
        # every second would land in the count (the GIL's hand-offs are the main thread's).
        registry = overhead.make_registry(backend, lag=False, check_interval_seconds=3600)
        openers = {
            "floor-write": overhead.Scope.opener(sessionmaker(bind=write)),
            "floor-read": overhead.Scope.opener(sessionmaker(bind=read)),
            "multidb-write": overhead.multidb_opener(registry, "write"),
            "multidb-read": overhead.multidb_opener(registry, "read"),
            "multidb-auto": overhead.multidb_opener(registry, "auto"),
            "routing": overhead.Scope.opener(
                sessionmaker(class_=overhead.RoutingSession, leader=write, followers=[read])
            ),
        }
        run = overhead.WORKLOADS[workload]
        gc.collect()
        gc.disable()
        run(openers[contender], 20, backend.ids)  # warm: caches, the pool, the replica choice
        run(openers[contender], count, backend.ids)
        registry.dispose()


def async_child(contender: str, workload: str, count: int, layout: int) -> None:
    """:func:`child` for ``async_overhead.py``'s contenders, on aiosqlite."""
    shift = [object() for _ in range(1000 * layout)]  # noqa: F841 (kept alive: a layout)

    async def operations(backend: Any) -> None:
        async with async_overhead.contenders(backend) as contenders:
            opener = {c.name: c.open_session for c in contenders}[contender]
            run = async_overhead.WORKLOADS[workload]
            gc.collect()
            gc.disable()
            await run(opener, 20, backend.ids)  # warm
            await run(opener, count, backend.ids)

    with async_overhead.backends("sqlite") as (backend,):
        asyncio.run(operations(backend))


def instructions(contender: str, workload: str, count: int, layout: int, mode: str) -> int:
    """Instructions of the main thread of a child process running ``count`` operations.

    Only the main thread: the registry's health monitor probes once a second
    in its own thread, and under callgrind a second is far fewer operations.
    """
    return main_thread_instructions(
        [__file__, "--child", contender, workload, str(count), str(layout), mode], layout
    )


def main_thread_instructions(
    argv: Sequence[str], layout: int, env: dict[str, str] | None = None
) -> int:
    """Instructions of the main thread of ``python ARGV`` under callgrind, hash seed ``layout``."""
    with tempfile.TemporaryDirectory(prefix="multidb-callgrind-") as directory:
        out = Path(directory) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",  # one file per thread: out-01 is the main thread
            f"--callgrind-out-file={out}",
            sys.executable,
            *argv,
        ]
        env = {**os.environ, **(env or {}), "PYTHONHASHSEED": str(layout)}
        subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        totals = re.search(r"^totals: (\d+)", Path(f"{out}-01").read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no instruction count in callgrind's {out}-01")
    return int(totals.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    """Count each pair's instructions per operation and print them with ratios; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=300, help="operations counted; default 300")
    parser.add_argument("--workloads", default=",".join(overhead.ALL), help="default W1-W4")
    parser.add_argument("--contenders", default="", help="default all")
    parser.add_argument("--layouts", type=int, default=3, help="memory layouts; default 3")
    parser.add_argument(
        "--async",
        dest="mode",
        action="store_const",
        const="async",
        default="sync",
        help="async sessions (aiosqlite) against async_sessionmaker",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        contender, workload, count, layout, mode = args.child
        (async_child if mode == "async" else child)(contender, workload, int(count), int(layout))
        return 0
    table = ASYNC_CONTENDERS if args.mode == "async" else CONTENDERS
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed")
    workloads = args.workloads.split(",")
    chosen = args.contenders.split(",") if args.contenders else list(table)
    unknown = set(chosen) - table.keys() or set(workloads) - set(overhead.ALL)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    print(overhead.environment())
    arguments = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: python benchmarks/instructions.py {arguments}")
    print(
        f"\nbackend {'sqlite+aiosqlite' if args.mode == 'async' else 'sqlite'}:"
        f" instructions per operation, main thread ({BASE + args.n} - {BASE} ops),"
        f" median of {args.layouts} layouts"
    )
    print(f"{'workload':<9}{'contender':<15}{'k instr/op':>11}  {'ratio':>7}  vs")
    needed = set(chosen) | {table[c][0] for c in chosen}
    runs = [
        (contender, workload, count, layout)
        for workload in workloads
        for contender in table
        if contender in needed and workload in table[contender][1]
        for layout in range(args.layouts)
        for count in (BASE, BASE + args.n)
    ]

    def measure(run: tuple[str, str, int, int]) -> int:
        contender, workload, operations, layout = run
        return instructions(contender, workload, operations, layout, args.mode)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one child per core
        counts = dict(zip(runs, pool.map(measure, runs), strict=True))

    def per_op(contender: str, workload: str) -> float:
        return float(
            statistics.median(
                (
                    counts[contender, workload, BASE + args.n, k]
                    - counts[contender, workload, BASE, k]
                )
                / args.n
                for k in range(args.layouts)
            )
        )

    for workload in workloads:
        for contender in chosen:
            if workload not in table[contender][1]:
                continue
            floor = table[contender][0]
            mine, base = per_op(contender, workload), per_op(floor, workload)
            print(f"{workload:<9}{contender:<15}{mine / 1e3:>11.1f}  {mine / base:>6.3f}x  {floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
