"""Fixtures shared by the whole suite: the real sample shard and a real S3 endpoint (moto)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SHARD_ENV = "DROUGHTWATCH_SAMPLE_SHARD"
DEFAULT_SAMPLE_SHARD = REPO_ROOT.parent / "shared" / "data" / "droughtwatch-sample" / "part-r-00012"


def _sample_shard_path() -> Path | None:
    candidate = Path(os.environ.get(SAMPLE_SHARD_ENV, DEFAULT_SAMPLE_SHARD))
    return candidate if candidate.is_file() else None


@pytest.fixture(scope="session")
def sample_shard_path() -> Path:
    """The real Drought Watch shard (81 records) that sits beside the repository.

    Set DROUGHTWATCH_SAMPLE_SHARD to use another copy. Tests that need it are skipped, with a
    message that says where it was looked for, when it is absent.
    """
    path = _sample_shard_path()
    if path is None:
        pytest.skip(
            f"real sample shard not found at {DEFAULT_SAMPLE_SHARD} "
            f"(set {SAMPLE_SHARD_ENV} to its path)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto server) on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket on the moto endpoint; returns its name."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def serve() -> Iterator:
    """Start a `dagster dev`-like command; stop it (and its webserver and daemon) afterwards."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            proc = subprocess.Popen(
                args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
