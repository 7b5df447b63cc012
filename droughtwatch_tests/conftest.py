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
CI_ENV = "CI"


def in_ci() -> bool:
    """Whether this is a CI run: CI=true (any case) or CI=1."""
    return os.environ.get(CI_ENV, "").strip().lower() in ("true", "1")


def _ci_fails_it() -> str:
    return f"with {CI_ENV}={os.environ.get(CI_ENV)} a missing shard fails the run"


def _sample_shard_candidate() -> Path:
    """Where the sample shard should be: DROUGHTWATCH_SAMPLE_SHARD, else beside the repository."""
    return Path(os.environ.get(SAMPLE_SHARD_ENV) or DEFAULT_SAMPLE_SHARD)


def _sample_shard_path() -> Path | None:
    candidate = _sample_shard_candidate()
    return candidate if candidate.is_file() else None


def missing_sample_shard_message(path: Path) -> str:
    """What a run without the sample shard says, in CI and locally alike."""
    return f"real sample shard not found at {path} (set {SAMPLE_SHARD_ENV} to its path)"


def require_sample_shard() -> Path:
    """The sample shard's path. Without it a test fails in CI and is skipped elsewhere, with a
    message that says where it was looked for: every test that needs it comes through here."""
    path = _sample_shard_path()
    if path is not None:
        return path
    message = missing_sample_shard_message(_sample_shard_candidate())
    if in_ci():
        pytest.fail(f"{message}; {_ci_fails_it()}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def sample_shard_path() -> Path:
    """The real Drought Watch shard (81 records) that sits beside the repository.

    Set DROUGHTWATCH_SAMPLE_SHARD to use another copy. When it is absent, tests that need it
    fail in CI (CI=true or CI=1) and are skipped elsewhere, with a message that says where it
    was looked for.
    """
    return require_sample_shard()


def pytest_collection_finish(session: pytest.Session) -> None:
    """In CI, a missing sample shard stops the run once, before any test, when a selected test
    needs it (a test that asks for it later still fails in require_sample_shard)."""
    if session.config.option.collectonly or not in_ci() or _sample_shard_path() is not None:
        return
    needing = [i for i in session.items if "sample_shard_path" in getattr(i, "fixturenames", ())]
    if needing:
        message = missing_sample_shard_message(_sample_shard_candidate())
        pytest.exit(
            f"{message}; {_ci_fails_it()} (tests that need it: {len(needing)})",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )


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
