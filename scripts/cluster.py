"""Start real primary/replica clusters to try multidb against, until Ctrl-C.

    python scripts/cluster.py [--dir DIR]

Starts a PostgreSQL primary with two streaming hot standbys and a MariaDB
primary with one read-only GTID replica (the same harness the test suite uses,
``tests/servers.py``), all on 127.0.0.1 on free ports. Prints a ready multidb
YAML config to stdout and writes it to ``DIR/multidb.yaml``; stops every
server on Ctrl-C / SIGTERM. Without ``--dir`` a temporary directory is used
and removed afterwards; with ``--dir`` it is kept (server logs are in it).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import (
    ClusterStartError,
    MariaDBCluster,
    PostgresCluster,
    mariadb_binaries_missing,
    postgres_binaries_missing,
    running_clusters,
)


def config_yaml(pg: PostgresCluster, maria: MariaDBCluster) -> str:
    """The multidb config for both clusters."""
    lines = ["databases:"]
    databases = [
        ("pg", pg.primary.url(), [(s.name.removeprefix("pg-"), s.url()) for s in pg.standbys]),
        (
            "maria",
            maria.primary.url(),
            [(r.name.removeprefix("maria-"), r.url()) for r in maria.replicas],
        ),
    ]
    for name, primary, replicas in databases:
        lines += [f"  {name}:", f"    primary: {primary}", "    replicas:"]
        lines += [f"      {replica}: {url}" for replica, url in replicas]
        lines.append("    routing: {default_role: auto, max_lag_seconds: 5}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--dir",
        type=Path,
        help="directory for the servers' data, logs and multidb.yaml (kept afterwards; "
        "default: a temporary directory, removed afterwards)",
    )
    args = parser.parse_args(argv)

    for reason in (postgres_binaries_missing(), mariadb_binaries_missing()):
        if reason is not None:
            print(f"cluster.py: {reason}", file=sys.stderr)
            return 2

    if args.dir is None:
        base = Path(tempfile.mkdtemp(prefix="multidb-cluster-"))
        keep = False
    else:
        base = args.dir.resolve()
        keep = True
        for sub in ("pg", "maria"):
            if (base / sub).exists():
                print(
                    f"cluster.py: {base / sub} exists; remove it or pick another --dir",
                    file=sys.stderr,
                )
                return 2
        base.mkdir(parents=True, exist_ok=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before any server starts, so the harness leaves SIGTERM to us.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()
    try:
        with running_clusters(base) as (pg, maria):
            elapsed = time.monotonic() - started
            config = config_yaml(pg, maria)
            (base / "multidb.yaml").write_text(config)
            sys.stdout.write(config)
            sys.stdout.flush()
            print(
                f"\n# both clusters up in {elapsed:.1f}s; config written to "
                f"{base / 'multidb.yaml'}\n"
                f"# admin: psql '{pg.primary.admin_url().replace('+psycopg2', '')}'  |  "
                f"mariadb -h 127.0.0.1 -P {maria.primary.port} -u root\n"
                "# Ctrl-C (or SIGTERM) stops everything.",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(timeout=1.0):
                pass
            print("# stopping ...", file=sys.stderr, flush=True)
    except ClusterStartError as exc:
        print(f"cluster.py: could not start the clusters: {exc}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    print("# stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
