"""Which Dagster instance each everyday command uses, started as a user starts it.

- In the repository root of a fresh clone, with no DAGSTER_HOME: `dagster dev`, `dg dev`,
  `dagster asset materialize` and `dg launch` read the repository's dagster.yaml, the embedded
  instance under .droughtwatch/dagster (the CLI's too), and work without a warning.
- `make dev`: `droughtwatch home`, then `dg dev -w workspace.yaml` in DAGSTER_HOME, with every
  sensor and schedule in the state the README gives.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from droughtwatch_assets import runs
from droughtwatch_tests.conftest import REPO_ROOT, free_port
from droughtwatch_tests.processes import STATES, ask_graphql, plain_env

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
KEY = "train/part-r-00012"


# The README's "What runs by itself" table.
DOCUMENTED_STATES = {
    "drop_sensor": "RUNNING",
    "retrain_on_new_labels": "RUNNING",
    "default_automation_condition_sensor": "RUNNING",
    "baseline_daily": "RUNNING",
    "run_failure_alert": "RUNNING",
    "check_alerts": "RUNNING",
}


def test_the_root_instance_is_the_one_droughtwatch_home_writes():
    """The repository's dagster.yaml and `droughtwatch home`'s file differ only in where the
    storage is (relative to the root there) and the queue (4 runs there, one per core here)."""
    root = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    written = yaml.safe_load(runs.embedded_instance_yaml(".droughtwatch/dagster", runs=4))
    assert root == written
    # Nothing a fresh clone lacks: no server, no variable to set.
    assert "storage" not in root and "env:" not in (REPO_ROOT / "dagster.yaml").read_text()


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """What a fresh clone's root holds for Dagster: its config files and the package."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in ("dagster.yaml", "pyproject.toml", "workspace.yaml"):
        shutil.copyfile(REPO_ROOT / name, root / name)
    (root / "droughtwatch_assets").symlink_to(REPO_ROOT / "droughtwatch_assets")
    return root


def _states(data: dict) -> dict[str, str]:
    [repo] = data["repositoriesOrError"]["nodes"]
    states = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    states |= {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    return states


@pytest.mark.parametrize("command", [["dagster", "dev"], ["dg", "dev"]], ids=" ".join)
def test_dev_in_a_fresh_clone_runs_on_the_embedded_instance(command, fresh_clone, serve):
    port = free_port()
    log = fresh_clone / "dev.log"
    proc = serve(
        [str(BIN / command[0]), *command[1:], "-h", "127.0.0.1", "-p", str(port)],
        fresh_clone, plain_env(), log,
    )  # fmt: skip
    assert _states(ask_graphql(port, STATES, proc, log)) == DOCUMENTED_STATES
    # The daemon ticks into the embedded instance's files, not into a temporary home.
    schedules = fresh_clone / ".droughtwatch" / "dagster" / "schedules" / "schedules.db"
    deadline = time.monotonic() + 60
    while not schedules.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert schedules.exists()
    assert (fresh_clone / ".droughtwatch" / "dagster" / "history" / "runs.db").exists()
    text = log.read_text()
    assert "DAGSTER_PG_URL" not in text and "Traceback" not in text
    assert "will not be used" not in text


def test_make_dev_starts_every_sensor_and_schedule_as_documented(tmp_path, serve):
    """`make dev`'s two steps, without make: `droughtwatch home`, then `dg dev` on the
    workspace.yaml it wrote, in DAGSTER_HOME (so no "./dagster.yaml will not be used")."""
    home = tmp_path / "home"
    env = {**plain_env(), "DROUGHTWATCH_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    subprocess.run([str(BIN / "droughtwatch"), "home"], env=env, check=True, capture_output=True)
    assert (home / "dagster" / "workspace.yaml").exists()
    port = free_port()
    log = tmp_path / "dev.log"
    proc = serve(
        [str(BIN / "dg"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        home / "dagster", env, log,
    )  # fmt: skip
    assert _states(ask_graphql(port, STATES, proc, log)) == DOCUMENTED_STATES
    text = log.read_text()
    assert "will not be used" not in text and "Warning" not in text and "Traceback" not in text


def test_materialize_and_launch_in_a_fresh_clone_share_the_clis_instance(
    fresh_clone, sample_shard_path
):
    """`droughtwatch discover` (its defaults) adds the partition; `dagster asset materialize`
    and `dg launch` in the same root, without DAGSTER_HOME, find it and record their runs where
    the CLI and `dagster dev` read them."""
    env = plain_env()
    shard = fresh_clone / ".droughtwatch" / "data" / KEY
    shard.parent.mkdir(parents=True)
    shutil.copyfile(sample_shard_path, shard)

    def run(*args: str) -> str:
        proc = subprocess.run(
            [str(BIN / args[0]), *args[1:]], cwd=fresh_clone, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout + proc.stderr

    run("droughtwatch", "discover")
    out = run("dagster", "asset", "materialize", "-m", "droughtwatch_assets.definitions",
              "--select", "raw_tfrecords", "--partition", KEY)
    assert "RUN_SUCCESS" in out and "DAGSTER_PG_URL" not in out
    out = run("dg", "launch", "--assets", "raw_tfrecords", "--partition", KEY)
    assert "RUN_SUCCESS" in out

    import dagster as dg

    with dg.DagsterInstance.from_config(str(fresh_clone / ".droughtwatch" / "dagster")) as inst:
        done = inst.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
        assert len(done) == 2
        assert all(r.tags.get("dagster/partition") == KEY for r in done)
    assert (fresh_clone / ".droughtwatch" / "lake" / "raw_tfrecords" / f"{KEY}.json").exists()
