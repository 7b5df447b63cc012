"""Helpers for tests that start Dagster's own processes: a plain shell's environment and the
webserver's GraphQL answer."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def graphql(
    port: int,
    query: str,
    proc: subprocess.Popen,
    *,
    variables: dict | None = None,
    ready: Callable[[dict], Any] = lambda data: True,
    output: Callable[[], str] = lambda: "",
) -> dict:
    """The webserver's answer to `query`, asked again (up to 120 s) until it answers and
    `ready(data)` holds: a webserver still loading its code location answers with nothing.
    `output` gives what the process printed, for the failure message."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"webserver exited with {proc.returncode}:\n{output()}")
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql",
                data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                headers={"Content-Type": "application/json"},
            )
            body = json.loads(urllib.request.urlopen(req, timeout=30).read())
            assert "errors" not in body, body
            if ready(body["data"]):
                return body["data"]
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"the webserver did not answer as expected within 120 s:\n{output()}")


def ask_graphql(port: int, query: str, proc: subprocess.Popen, log: Path) -> dict:
    """GraphQL's answer about the repository once the webserver serves the code location;
    the process's output goes to `log`."""
    return graphql(
        port,
        query,
        proc,
        ready=lambda data: data["repositoriesOrError"].get("nodes"),
        output=lambda: log.read_text()[-4000:],
    )
