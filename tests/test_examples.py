"""The examples start with one command, answer a POST and a GET, and stop (smoke tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from servers import _free_port, _port_accepts, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("example", ["flask_app.py", "fastapi_app.py"])
def test_example_starts_writes_reads_and_stops(example: str, tmp_path: Path) -> None:
    db = tmp_path / "main.db"
    config = tmp_path / "databases.yaml"
    config.write_text(
        "databases:\n"
        "  main:\n"
        f"    primary: sqlite:///{db}\n"
        f"    replicas: {{a: 'sqlite:///file:{db}?mode=ro&uri=true'}}\n"
    )
    port = _free_port()
    env = {**os.environ, "MULTIDB_CONFIG": str(config), "PORT": str(port)}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, str(EXAMPLES / example)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: server.poll() is None and _port_accepts(port),
            timeout=20,
            message=f"{example} did not start: {log.read_text()}",
        )
        base = f"http://127.0.0.1:{port}"
        request = urllib.request.Request(
            f"{base}/notes",
            data=json.dumps({"text": "hello"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            created = json.load(response)
        with urllib.request.urlopen(f"{base}/notes/{created['id']}", timeout=10) as response:
            assert json.load(response) == {"id": created["id"], "text": "hello"}
    finally:
        server.terminate()
        server.wait(timeout=10)
