"""Where a multidb session's time beyond the floor goes, function by function (SQLite).

    python benchmarks/hotpath.py [--n N] [--top K] [--pyinstrument]

Runs each (contender, workload) pair below under cProfile next to its floor
(the same workload on a plain session, see ``overhead.py``) and prints the
functions whose own time grew most, per operation. With ``--pyinstrument``
(a dev-only tool: ``pip install pyinstrument``) it also prints pyinstrument's
call tree of each multidb run. Profilers inflate small functions, so read the
shares, not the absolute figures.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
overhead = importlib.import_module("overhead")

__all__ = ["PAIRS", "main"]

# (multidb role, workload, floor)
PAIRS = (
    ("read", "W1", "floor-read"),
    ("read", "W2", "floor-read"),
    ("auto", "W1", "floor-write"),
    ("auto", "W2", "floor-write"),
    ("auto", "W3", "floor-write"),
    ("write", "W1", "floor-write"),
)

Key = tuple[str, int, str]


Profile = dict[Key, tuple[int, float]]  # calls, own seconds


def _profile(workload: Any, opener: Any, n: int, ids: Sequence[int]) -> Profile:
    profile = cProfile.Profile()
    profile.enable()
    workload(opener, n, ids)
    profile.disable()
    collected: Any = pstats.Stats(profile)
    stats: dict[Key, Any] = collected.stats
    return {key: (row[1], row[2]) for key, row in stats.items()}  # total calls, own time


def _least(profiles: Sequence[Profile]) -> Profile:
    """Per function, the fewest seconds of the repeats: noise only ever adds time."""
    keys = set().union(*profiles)
    return {
        k: (
            max(p.get(k, (0, 0.0))[0] for p in profiles),
            min(p.get(k, (0, 0.0))[1] for p in profiles),
        )
        for k in keys
    }


def _name(key: Key) -> str:
    path, line, function = key
    if path == "~":
        return function
    parts = Path(path).parts
    for anchor in ("multidb", "sqlalchemy", "benchmarks"):
        if anchor in parts:
            return f"{'/'.join(parts[parts.index(anchor) :])}:{line}({function})"
    return f"{Path(path).name}:{line}({function})"


def main(argv: Sequence[str] | None = None) -> int:
    """Profile the pairs in ``PAIRS`` and print where the extra time goes; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="operations profiled; default 2000")
    parser.add_argument("--top", type=int, default=12, help="functions listed per pair")
    parser.add_argument("--repeat", type=int, default=3, help="profiles per side; default 3")
    parser.add_argument("--pyinstrument", action="store_true", help="also print call trees")
    args = parser.parse_args(argv)
    with overhead.sqlite_backend() as backend:
        floors = {
            "floor-write": create_engine(backend.primary_url),
            "floor-read": create_engine(backend.replica_url),
        }
        for engine in floors.values():
            backend.connect_hook(engine)
        makers = {name: sessionmaker(bind=engine) for name, engine in floors.items()}
        registry = overhead.make_registry(backend, lag=False)
        try:
            for role, workload_name, floor in PAIRS:
                workload = overhead.WORKLOADS[workload_name]
                maker = makers[floor]
                floor_opener = overhead.Scope.opener(maker)
                opener = overhead.multidb_opener(registry, role)
                for warm in (floor_opener, opener):  # caches, the pool, the replica choice
                    workload(warm, max(1, args.n // 10), backend.ids)
                runs: tuple[list[Profile], list[Profile]] = ([], [])
                for _ in range(args.repeat):  # interleaved, so noise hits both alike
                    runs[0].append(_profile(workload, floor_opener, args.n, backend.ids))
                    runs[1].append(_profile(workload, opener, args.n, backend.ids))
                base, mine = _least(runs[0]), _least(runs[1])
                keys = base.keys() | mine.keys()
                zero = (0, 0.0)
                extra = {
                    k: (mine.get(k, zero)[0] - base.get(k, zero)[0],
                        mine.get(k, zero)[1] - base.get(k, zero)[1])
                    for k in keys
                }  # fmt: skip
                total = sum(t for _, t in extra.values()) / args.n * 1e6
                calls = sum(c for c, _ in extra.values()) / args.n
                floor_us = sum(t for _, t in base.values()) / args.n * 1e6
                print(
                    f"\nmultidb-{role} {workload_name}: {total:+.1f} us/op and {calls:+.0f} "
                    f"calls/op over {floor} ({floor_us:.1f} us/op under cProfile); "
                    "functions whose own time grew most (least of the repeats):"
                )
                ranked = sorted(extra.items(), key=lambda kv: -kv[1][1])[: args.top]
                for key, (count, seconds) in ranked:
                    print(
                        f"  {seconds / args.n * 1e6:+7.2f} us/op {count / args.n:+6.1f} calls/op"
                        f"  {_name(key)}"
                    )
                if args.pyinstrument:
                    from pyinstrument import Profiler

                    profiler = Profiler(interval=0.0001)
                    with profiler:
                        workload(opener, args.n, backend.ids)
                    print(profiler.output_text(unicode=False, color=False, show_all=False))
        finally:
            registry.dispose()
            for engine in floors.values():
                engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
