"""Helpers for tests that start Dagster's own processes: a plain shell's environment and the
webserver's GraphQL answer."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

STATES = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status } }
    schedules { name scheduleState { status } }
} } } }
"""


def plain_env() -> dict[str, str]:
    """A shell with nothing set: no DAGSTER_HOME, every droughtwatch setting at its default."""
    return {
        k: v for k, v in os.environ.items()
        if k != "DAGSTER_HOME" and not k.startswith("DROUGHTWATCH_")
    }  # fmt: skip


def ask_graphql(port: int, query: str, proc: subprocess.Popen, log: Path) -> dict:
    """GraphQL's answer once the webserver serves the code location (120 s at most)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql",
                data=json.dumps({"query": query}).encode(),
                headers={"Content-Type": "application/json"},
            )
            body = json.loads(urllib.request.urlopen(req, timeout=30).read())
            assert "errors" not in body, body
            nodes = body["data"]["repositoriesOrError"].get("nodes")
            if nodes:
                return body["data"]
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"no answer within 120 s:\n{log.read_text()[-4000:]}")
