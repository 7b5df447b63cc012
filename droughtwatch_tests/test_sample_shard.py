"""A missing sample shard fails a CI run (CI=true or CI=1) and is a skip elsewhere, each with a
message that says where the shard was looked for and what to set: pytest run in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from droughtwatch_tests.conftest import REPO_ROOT, SAMPLE_SHARD_ENV, in_ci

# Run in a folder of its own (no repository settings), with the suite's conftest as a plugin.
PROBE = """
def test_needs_the_shard(sample_shard_path):
    pass


def test_asks_for_it_late(request):
    request.getfixturevalue("sample_shard_path")


def test_needs_nothing():
    pass
"""
PLUGIN = ("-p", "droughtwatch_tests.conftest")


def run_pytest(cwd: Path, missing: Path, ci: str | None, *args: str) -> tuple[int, str]:
    """pytest with DROUGHTWATCH_SAMPLE_SHARD at a path that is not there: its code and output."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env[SAMPLE_SHARD_ENV] = str(missing)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    return tmp_path


def expected(missing: Path) -> str:
    return f"real sample shard not found at {missing} (set {SAMPLE_SHARD_ENV} to its path)"


@pytest.mark.parametrize(
    ("value", "ci"),
    [("true", True), ("TRUE", True), ("True", True), ("1", True),
     (None, False), ("", False), ("false", False), ("0", False), ("yes", False)],
)  # fmt: skip
def test_ci_is_ci_true_in_any_case_or_ci_1(monkeypatch, value: str | None, ci: bool):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_in_ci_a_missing_shard_stops_the_run_once_before_any_test(probe: Path):
    missing = probe / "nowhere" / "part-r-00012"
    code, out = run_pytest(probe, missing, "TRUE", *PLUGIN)
    assert code == pytest.ExitCode.TESTS_FAILED, out
    assert out.count(expected(missing)) == 1, out
    assert "with CI=TRUE a missing shard fails the run (tests that need it: 1)" in out
    assert "no tests ran" in out and "passed" not in out and "skipped" not in out


def test_in_ci_a_test_that_asks_for_the_shard_late_fails_with_the_message(probe: Path):
    # Collection cannot see that this test needs the shard: the run starts, the fixture fails it.
    missing = probe / "nowhere" / "part-r-00012"
    code, out = run_pytest(probe, missing, "1", *PLUGIN, "-k", "late or nothing")
    assert code == pytest.ExitCode.TESTS_FAILED, out
    assert f"{expected(missing)}; with CI=1 a missing shard fails the run" in out
    assert "1 failed, 1 passed, 1 deselected" in out and "skipped" not in out


def test_elsewhere_a_missing_shard_skips_with_the_message(probe: Path):
    missing = probe / "nowhere" / "part-r-00012"
    code, out = run_pytest(probe, missing, None, *PLUGIN)
    assert code == pytest.ExitCode.OK, out
    skips = re.findall(rf"SKIPPED \[1\] test_probe.py:\d+: {re.escape(expected(missing))}", out)
    assert len(skips) == 2, out  # both tests that need the shard, each with the message
    assert "1 passed, 2 skipped" in out and "failed" not in out


@pytest.mark.parametrize("ci", ["true", None])
def test_a_test_of_the_suite_without_the_shard(tmp_path: Path, ci: str | None):
    """The suite's own conftest and settings: a CI run stops, a local one skips."""
    missing = tmp_path / "nowhere" / "part-r-00012"
    test = "droughtwatch_tests/core/test_tfrecord.py::test_read_shard_names_the_path_by_default"
    code, out = run_pytest(REPO_ROOT, missing, ci, test)
    assert out.count(expected(missing)) == 1, out
    if ci:
        assert code == pytest.ExitCode.TESTS_FAILED, out
        assert "no tests ran" in out
    else:
        assert code == pytest.ExitCode.OK, out
        assert "1 skipped" in out
