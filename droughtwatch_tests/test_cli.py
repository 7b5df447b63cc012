"""The `droughtwatch` command in-process: sample data to a local folder and to S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from droughtwatch_assets.adapters.storage import open_store
from droughtwatch_assets.cli import main
from droughtwatch_assets.core.tfrecord import decode_shard


def test_sample_data_to_s3_is_deterministic(tmp_path: Path, moto_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    monkeypatch.setenv("DROUGHTWATCH_S3_ENDPOINT_URL", moto_endpoint)
    args = ["sample-data", "--train", "120", "--val", "60", "--records-per-shard", "60"]
    assert (
        main([*args, "--drops", "2", "--records-per-drop", "30", "--dest", f"s3://{s3_bucket}/a"])
        == 0
    )
    assert main([*args, "--dest", str(tmp_path / "local")]) == 0
    s3 = open_store(f"s3://{s3_bucket}/a", endpoint_url=moto_endpoint)
    assert [i.key for i in s3.list("")] == [
        "drops/2024-08-01/part-r-00000",
        "drops/2024-08-02/part-r-00000",
        "train/part-r-00000",
        "train/part-r-00001",
        "val/part-r-00000",
    ]
    local = open_store(str(tmp_path / "local"))
    # Same seed, same bytes, wherever they are written.
    assert s3.read_bytes("train/part-r-00001") == local.read_bytes("train/part-r-00001")
    shard = decode_shard(s3.read_bytes("drops/2024-08-02/part-r-00000"), "drop")
    assert len(shard) == 30 and set(shard.labels.tolist()) <= {0, 1, 2, 3}


def test_home_prepares_the_embedded_instance(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["home"]) == 0
    assert "telemetry" in (tmp_path / "dagster" / "dagster.yaml").read_text()
    assert f"DAGSTER_HOME={tmp_path / 'dagster'}" in capsys.readouterr().out


def test_emulate_drops_uploads_dated_drops_from_val(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    args = ["sample-data", "--train", "0", "--val", "120", "--records-per-shard", "60"]
    assert main([*args, "--drops", "1", "--records-per-drop", "10"]) == 0
    assert main(["emulate-drops", "--count", "3", "--interval", "0"]) == 0
    store = open_store(str(tmp_path / "data"))
    drops = [i.key for i in store.list("drops/")]
    # After the newest existing drop (2024-08-01), one per day, from the val shards in turn.
    assert drops == [f"drops/2024-08-0{d}/part-r-00000" for d in (1, 2, 3, 4)]
    assert store.read_bytes("drops/2024-08-02/part-r-00000") == store.read_bytes("val/part-r-00000")
    assert store.read_bytes("drops/2024-08-03/part-r-00000") == store.read_bytes("val/part-r-00001")
    assert "uploaded" in capsys.readouterr().out


def test_emulate_drops_without_val_shards_says_what_to_do(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    assert main(["emulate-drops", "--count", "1", "--interval", "0"]) == 1
    assert "droughtwatch sample-data" in capsys.readouterr().out


INGEST_IN_A_FRESH_PROCESS = """
import os, sys
from droughtwatch_assets import runs
from droughtwatch_assets.settings import Settings

runs.prepare_dagster_home()
settings = Settings.from_env()
key = "train/part-r-00000"
runs.instance().add_dynamic_partitions("shards", [key])
[outcome] = runs.run_batches("ingest_job", [key], settings=settings, parallel=1)
assert outcome.ok, outcome
print(sorted(m for m in ("tensorflow", "keras", "mlflow") if m in sys.modules))
"""


def test_an_ingest_run_imports_no_tensorflow_keras_or_mlflow(tmp_path: Path, sample_shard_path):
    """A run of ingest_job, executed in the process as a run worker executes it, on the real
    shard: its steps need neither a model nor the tracking store, so it never pays their
    imports (seconds, and most of a worker's memory)."""
    import os
    import shutil
    import subprocess
    import sys

    (tmp_path / "data" / "train").mkdir(parents=True)
    shutil.copyfile(sample_shard_path, tmp_path / "data" / "train" / "part-r-00000")
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["DROUGHTWATCH_HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", INGEST_IN_A_FRESH_PROCESS],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "lake" / "spectral_indices" / "train" / "part-r-00000.arrow").exists()


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path):
    """`droughtwatch home | head -1`: the command stops with status 1 and no traceback."""
    env = {
        **os.environ,
        "DROUGHTWATCH_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("droughtwatch")), "home"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before the command writes its first line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_the_console_exit_stops_thread_pools_and_runs_exit_handlers(tmp_path: Path):
    """The console entry skips Python's teardown but not what comes before it: an idle thread
    pool (MLflow keeps one) is stopped instead of waited for forever, and exit handlers run."""
    marker = tmp_path / "exit-handler-ran"
    code = (
        "import atexit, concurrent.futures, sys\n"
        "from droughtwatch_assets import cli\n"
        "pool = concurrent.futures.ThreadPoolExecutor(1)\n"
        "pool.submit(print, 'pool used')\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        "cli.main = lambda: 3\n"
        "cli.entry()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "pool used" in proc.stdout and marker.exists()
