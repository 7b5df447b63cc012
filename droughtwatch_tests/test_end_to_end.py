"""End to end through real processes and servers: the CLIs, the webserver, PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from droughtwatch_assets.runs import WORKER_TAG
from droughtwatch_tests.conftest import REPO_ROOT, free_port
from droughtwatch_tests.processes import graphql

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
KEY = "train/part-r-00012"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    return {
        **os.environ,
        "DROUGHTWATCH_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "DROUGHTWATCH_DATA_ROOT": "",
        "DROUGHTWATCH_LAKE": "",
    }


def run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_definitions_validate_cli(env):
    proc = run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "droughtwatch_assets.definitions"],
        env,
    )
    assert "droughtwatch_assets.definitions" in proc.stdout + proc.stderr


def test_dagster_asset_materialize_one_partition(env, sample_shard_path):
    home = Path(env["DROUGHTWATCH_HOME"])
    shard = home / "data" / KEY
    shard.parent.mkdir(parents=True)
    shutil.copyfile(sample_shard_path, shard)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.add_dynamic_partitions("shards", [KEY])
    run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "droughtwatch_assets.definitions",
            "--select",
            "raw_tfrecords,filtered_images,spectral_indices",
            "--partition",
            KEY,
        ],
        env,
    )
    assert (home / "lake" / "spectral_indices" / f"{KEY}.arrow").is_file()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("filtered_images"))
        assert event.asset_materialization.partition == KEY
        assert event.asset_materialization.metadata["records_kept"].value == 79


def test_sample_data_then_discover_materialize(env):
    run(
        [
            str(BIN / "droughtwatch"),
            "sample-data",
            "--train",
            "200",
            "--val",
            "100",
            "--records-per-shard",
            "100",
            "--drops",
            "1",
            "--records-per-drop",
            "50",
        ],
        env,
    )
    data = Path(env["DROUGHTWATCH_HOME"]) / "data"
    (data / "train" / "_SUCCESS").write_bytes(b"")
    proc = run([str(BIN / "droughtwatch"), "discover", "--materialize"], env)
    out = proc.stdout
    assert "4 shards to ingest, 1 objects skipped" in out
    assert "4 shards ingested, 0 failed" in out
    assert "skipped train/_SUCCESS" in out
    # Discovering again finds nothing new: nothing is processed twice.
    again = run([str(BIN / "droughtwatch"), "discover", "--materialize"], env)
    assert "0 shards to ingest" in again.stdout


def test_ingest_on_a_postgres_instance(tmp_path, sample_shard_path, monkeypatch):
    """The repository's dagster.yaml on a throwaway PostgreSQL server (pgserver)."""
    import pgserver
    import sqlalchemy as sa

    from droughtwatch_assets.settings import Settings
    from droughtwatch_tests.defs.helpers import copy_sample, ingest

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        url = server.get_uri()
        monkeypatch.setenv("DAGSTER_PG_URL", url)
        dagster_home = tmp_path / "dagster"
        dagster_home.mkdir()
        deployment = REPO_ROOT / "infra" / "server" / "dagster.yaml"
        shutil.copyfile(deployment, dagster_home / "dagster.yaml")
        settings = Settings(tmp_path, str(tmp_path / "data"), str(tmp_path / "lake"), None)
        copy_sample(Path(settings.data_root), KEY, sample_shard_path)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert ingest(settings, instance, KEY).success
            assert instance.get_dynamic_partitions("shards") == [KEY]
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            runs = conn.execute(sa.text("select count(*) from runs")).scalar()
            materializations = conn.execute(
                sa.text(
                    "select count(*) from event_logs"
                    " where dagster_event_type = 'ASSET_MATERIALIZATION'"
                )
            ).scalar()
        engine.dispose()
        assert runs == 1 and materializations == 3
    finally:
        server.cleanup()


GRAPHQL = """
{
  assetNodes { assetKey { path } groupName
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { name sensors { name } } } }
  workspaceOrError { ... on Workspace { locationEntries { name
    locationOrLoadError { __typename } } } }
}
"""


def _graphql(
    port: int,
    query: str,
    variables: dict,
    proc: subprocess.Popen,
    ready: Callable[[dict], Any] = lambda data: True,
) -> dict:
    """processes.graphql, for a process whose stderr is a pipe."""
    return graphql(port, query, proc, variables=variables, ready=ready, output=proc.stderr.read)


def _ask_webserver(
    env: dict[str, str],
    query: str,
    variables: dict,
    ready: Callable[[dict], Any] = lambda data: True,
) -> dict:
    """Start the webserver as `make dev` does (the code location from pyproject.toml), ask it
    `query` (see _graphql), stop it."""
    port = free_port()
    web = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        return _graphql(port, query, variables, web, ready=ready)
    finally:
        web.terminate()
        web.wait(timeout=30)


def test_webserver_on_the_code_server_lists_assets_checks_and_sensor(env):
    """The deployment layout: `dagster code-server` serves the code location over gRPC, and the
    webserver loads the repository's workspace.yaml, which points at it."""
    code_port, port = free_port(), free_port()
    # The instance's SQLite tables exist before two processes open it at once (each would
    # create them, and the slower one fail with "table ... already exists").
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()
    code_server = subprocess.Popen(
        [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(code_port),
         "-m", "droughtwatch_assets.definitions"],
        env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: it and its gRPC child end together
    )  # fmt: skip
    env = {
        **env,
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
        "DAGSTER_CODE_SERVER_PORT": str(code_port),
    }
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
         "-w", "workspace.yaml"],
        env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        data = _graphql(port, GRAPHQL, {}, proc, ready=lambda d: d.get("assetNodes"))
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        assert set(nodes) >= {"raw_tfrecords", "filtered_images", "spectral_indices"}
        assert nodes["filtered_images"]["groupName"] == "ingest"
        checks = {
            c["name"]: c["blocking"] for c in nodes["raw_tfrecords"]["assetChecksOrError"]["checks"]
        }
        assert checks == {"schema_and_labels": True, "has_records": True}
        sensors = [s["name"] for r in data["repositoriesOrError"]["nodes"] for s in r["sensors"]]
        assert "drop_sensor" in sensors
        locations = data["workspaceOrError"]["locationEntries"]
        assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in locations] == [
            ("droughtwatch", "RepositoryLocation")
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        # dagster code-server 1.13 does not always exit on SIGTERM (its serve loop can wait on
        # a termination thread forever), so its whole process group is killed.
        os.killpg(code_server.pid, signal.SIGKILL)
        code_server.wait(timeout=30)


def test_demo_ingests_trains_promotes_and_scores_the_drops(env):
    """`droughtwatch demo` (what `make demo` runs), on a smaller corpus to stay quick."""
    proc = run(
        [str(BIN / "droughtwatch"), "demo", "--train", "1200", "--val", "400",
         "--records-per-shard", "400", "--drops", "2", "--records-per-drop", "100"],
        env,
        timeout=600,
    )  # fmt: skip
    out = proc.stdout
    assert "6 shards ingested, 0 failed" in out
    # Nothing between the tables but what the demo itself says: no TensorFlow start-up lines,
    # no MLflow download bars, no Dagster beta warnings.
    for noise in ("InitializeLog", "oneDNN", "Downloading artifacts", "BetaWarning"):
        assert noise not in out + proc.stderr, noise
    assert "registered droughtwatch-baseline version 1: promoted to champion" in out
    assert "drops/2024-08-01/part-r-00000" in out and "droughtwatch-baseline v1" in out
    home = Path(env["DROUGHTWATCH_HOME"])
    assert (
        home / "lake" / "batch_predictions" / "drops" / "2024-08-02" / "part-r-00000.parquet"
    ).is_file()
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{home / 'metrics.db'}")
    with engine.connect() as conn:
        shards = conn.execute(sa.text("select shard_key from monitoring_metrics")).scalars().all()
    engine.dispose()
    assert sorted(shards) == ["drops/2024-08-01/part-r-00000", "drops/2024-08-02/part-r-00000"]


def test_a_killed_discover_leaves_no_run_started_and_a_rerun_does_the_rest(env):
    """`kill -9` of `droughtwatch discover --materialize` mid-run, its runs in two worker
    processes: the workers die with it, the next command marks the orphaned runs failed, ingests
    only the shards still missing, and every shard ends in the lake once."""
    run(
        [str(BIN / "droughtwatch"), "sample-data", "--train", "8000", "--val", "0",
         "--records-per-shard", "40"],
        env,
    )  # fmt: skip
    keys = [f"train/part-r-{i:05d}" for i in range(200)]
    proc = subprocess.Popen(
        [str(BIN / "droughtwatch"), "discover", "--materialize"],
        env={**env, "DROUGHTWATCH_SHARDS_PER_RUN": "100"},
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lake = Path(env["DROUGHTWATCH_HOME"]) / "lake" / "raw_tfrecords" / "train"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(lake.glob("*.json"))) < 20:
        assert proc.poll() is None, "discover finished before it could be killed"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        started = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED]
        assert started  # nobody could say otherwise yet
        workers = {int(r.tags[WORKER_TAG].split(":")[1]) for r in started}
    assert os.getpid() not in workers and proc.pid not in workers  # runs were in workers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a worker outlived it"
    landed_before = len(list(lake.glob("*.json")))
    assert 20 <= landed_before < len(keys)

    proc = run([str(BIN / "droughtwatch"), "discover", "--materialize"], env)
    assert f"{len(keys) - landed_before} shards ingested, 0 failed" in proc.stdout
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for killed in started:
            killed = instance.get_run_by_id(killed.run_id)
            assert killed.status == dg.DagsterRunStatus.FAILURE
            failure = [
                e
                for e in instance.all_logs(killed.run_id)
                if e.dagster_event and e.dagster_event.is_run_failure
            ]
            assert "killed or crashed mid-run" in failure[0].message
        assert not [
            r for r in instance.get_runs()
            if r.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)
        ]  # fmt: skip
        assert instance.get_materialized_partitions(dg.AssetKey("spectral_indices")) == set(keys)
    assert len(list(lake.glob("*.json"))) == len(keys)


BATCH_GRAPHQL = """
query Batch($asset: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $asset, checkName: $check, limit: 50) {
    runId status partition
  }
  pipelineOrError(params: {pipelineName: "ingest_job", repositoryName: "__repository__",
                           repositoryLocationName: "droughtwatch"}) {
    __typename
    ... on Pipeline { runs(limit: 20) { runId status tags { key value } } }
  }
}
"""


def test_a_bad_shard_mid_batch_and_a_range_backfill_as_the_webserver_shows_them(
    env, sample_shard_path
):
    """Six real shards, the fourth truncated, in one CLI run: the five good ones land; the bad
    one's check fails on its own partition, which the webserver's GraphQL reports with the
    partition key; the CLI run is listed under ingest_job as a UI-launched run would be. Then a
    backfill over a partition range with `dagster asset materialize --partition-range` is one
    run that materializes each partition of the range."""
    home = Path(env["DROUGHTWATCH_HOME"])
    keys = [f"train/part-r-{i:05d}" for i in range(6)]
    for key in keys:
        (home / "data" / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_shard_path, home / "data" / key)
    bad = keys[3]
    data = (home / "data" / bad).read_bytes()
    (home / "data" / bad).write_bytes(data[: len(data) // 2])  # cut mid-record

    proc = subprocess.run(
        [str(BIN / "droughtwatch"), "discover", "--materialize"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a shard failed: the command says so
    assert "5 shards ingested, 1 failed" in proc.stdout
    assert re.search(rf"{bad}\s+FAILED", proc.stdout), proc.stdout
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        [cli_run] = instance.get_runs()
        assert cli_run.tags["dagster/asset_partition_range_start"] == keys[0]
        assert cli_run.tags["dagster/asset_partition_range_end"] == keys[-1]
        good = set(keys) - {bad}
        assert instance.get_materialized_partitions(dg.AssetKey("spectral_indices")) == good

    # A backfill of two partitions as one range: one run, each partition materialized.
    run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "droughtwatch_assets.definitions",
         "--select", "raw_tfrecords,filtered_images,spectral_indices",
         "--partition-range", f"{keys[4]}...{keys[5]}"],
        env,
    )  # fmt: skip
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        backfill = [r for r in instance.get_runs() if r.run_id != cli_run.run_id]
        assert len(backfill) == 1 and backfill[0].status == dg.DagsterRunStatus.SUCCESS
        assert backfill[0].tags["dagster/asset_partition_range_start"] == keys[4]
        assert backfill[0].tags["dagster/asset_partition_range_end"] == keys[5]
        records = instance.fetch_materializations(dg.AssetKey("spectral_indices"), limit=20)
        in_backfill = sorted(
            r.partition_key for r in records.records if r.run_id == backfill[0].run_id
        )
        assert in_backfill == keys[4:]

    # The same through `dg launch`, for one partition: a run of that partition alone.
    run(
        [str(BIN / "dg"), "launch", "--assets", "raw_tfrecords,filtered_images,spectral_indices",
         "--partition", keys[0]],
        env,
    )  # fmt: skip
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        known = {cli_run.run_id, backfill[0].run_id}
        [launched] = [r for r in instance.get_runs() if r.run_id not in known]
        assert launched.status == dg.DagsterRunStatus.SUCCESS
        assert launched.tags["dagster/partition"] == keys[0]
        records = instance.fetch_materializations(dg.AssetKey("spectral_indices"), limit=20)
        assert [r.partition_key for r in records.records if r.run_id == launched.run_id] == [
            keys[0]
        ]

    answer = _ask_webserver(
        env, BATCH_GRAPHQL, {"asset": {"path": ["raw_tfrecords"]}, "check": "schema_and_labels"}
    )
    executions = answer["assetCheckExecutions"]
    by_partition = {e["partition"]: e["status"] for e in executions if e["runId"] == cli_run.run_id}
    assert by_partition == {key: "FAILED" if key == bad else "SUCCEEDED" for key in keys}
    assert answer["pipelineOrError"]["__typename"] == "Pipeline", answer["pipelineOrError"]
    runs = answer["pipelineOrError"]["runs"]
    listed = {r["runId"]: r for r in runs}
    assert cli_run.run_id in listed  # the job's page lists the CLI's run
    tags = {t["key"]: t["value"] for t in listed[cli_run.run_id]["tags"]}
    assert tags["droughtwatch/trigger"] == "cli"
    assert listed[cli_run.run_id]["status"] == "FAILURE"  # a shard failed: the run says so


SECRET = "s3cr3t-7f3a9c"
SECRETS_GRAPHQL = """
query Secrets($repo: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $repo) {
    __typename
    ... on ResourceDetailsList { results { name configuredValues { key value type } } }
  }
  utilizedEnvVarsOrError(repositorySelector: $repo) {
    __typename
    ... on EnvVarWithConsumersList { results { envVarName } }
  }
  runsOrError { ... on Runs { results { runId runConfigYaml tags { key value } } } }
}
"""


def test_secrets_in_the_environment_never_reach_the_webserver(env, sample_shard_path):
    """A database URL, an MLflow URI and an S3 key holding a password: after a CLI run, the
    webserver's GraphQL (what its Deployment and Runs pages show) names the variables and never
    shows the password, neither in resources' configured values nor in a run's config or tags."""
    home = Path(env["DROUGHTWATCH_HOME"])
    (home / "data" / "train").mkdir(parents=True)
    shutil.copyfile(sample_shard_path, home / "data" / "train" / "part-r-00000")
    env = {
        **env,
        # Nothing listens there: an ingest run never connects to either.
        "DROUGHTWATCH_METRICS_DB_URL": f"postgresql://droughtwatch:{SECRET}@127.0.0.1:9/metrics",
        "MLFLOW_TRACKING_URI": f"http://droughtwatch:{SECRET}@127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "droughtwatch",
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    run([str(BIN / "droughtwatch"), "discover", "--materialize"], env)

    data = _ask_webserver(
        env,
        SECRETS_GRAPHQL,
        {"repo": {"repositoryLocationName": "droughtwatch", "repositoryName": "__repository__"}},
        ready=lambda d: d["runsOrError"]["results"],
    )
    assert SECRET not in json.dumps(data)
    resources = {
        r["name"]: {v["key"]: (v["type"], v["value"]) for v in r["configuredValues"]}
        for r in data["allTopLevelResourceDetailsOrError"]["results"]
    }
    # The variables are named, so a user sees where each value comes from.
    assert resources["metrics_db"]["url"] == ("ENV_VAR", "DROUGHTWATCH_METRICS_DB_URL")
    assert resources["mlflow"]["tracking_uri"] == ("ENV_VAR", "MLFLOW_TRACKING_URI")
    used = {e["envVarName"] for e in data["utilizedEnvVarsOrError"]["results"]}
    assert {"DROUGHTWATCH_METRICS_DB_URL", "MLFLOW_TRACKING_URI"} <= used
    [cli_run] = data["runsOrError"]["results"]
    assert cli_run["runConfigYaml"] and cli_run["tags"]  # there was something to leak
