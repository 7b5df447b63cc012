"""Smoke test of the inference benchmark on a tiny setup: the throughput and rescore phases, the
report, and the helpers of the latency phase (which itself needs `dagster dev`: not run here)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.adapters.storage import LocalStore
from droughtwatch_assets.core.imagestack import dataset_from_arrow
from droughtwatch_assets.pipeline.lake import SPECTRAL_INDICES, object_key
from droughtwatch_tests.benchmarks import inference as bench

# 6 epochs: at 2, a baseline trained on 800 records passes the promotion gate for some seeds and
# shuffles only (old and new input pipelines alike); at 6 it passed for every seed tried.
TINY = bench.BenchSettings(
    train=800, val=400, records_per_shard=400, drops=1, records_per_drop=60, epochs=6
)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """A throwaway home with the tiny corpus ingested and a baseline champion."""
    home = tmp_path_factory.mktemp("inference-bench")
    with bench.using_home(home) as settings:
        times = bench.prepare(TINY, settings, log=quiet)
        yield settings, times


def kept_images(settings, key: str) -> int:
    lake = LocalStore(settings.lake)
    data = lake.read_bytes(object_key(SPECTRAL_INDICES, key))
    return dataset_from_arrow(data).sizes["image"]


def test_setup_trains_a_champion_from_the_cli(setup) -> None:
    settings, times = setup
    train = f"train baseline --epochs {TINY.epochs}"
    assert list(times) == ["sample-data", "discover --materialize", train]
    assert bench.champion_version(settings) == "1"
    assert bench.ingested_keys(settings) == [
        "drops/2024-08-01/part-r-00000",
        "train/part-r-00000",
        "train/part-r-00001",
        "val/part-r-00000",
    ]
    # The environment points at the throwaway home only.
    assert os.environ["DAGSTER_HOME"] == str(Path(settings.home) / "dagster")
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_throughput_counts_every_kept_image_in_every_pass(setup) -> None:
    settings, _ = setup
    keys = bench.ingested_keys(settings)
    result = bench.measure_predictions(settings, keys, repeats=2, log=quiet)
    assert result["model_version"] == "1"
    assert result["shards"] == 4
    assert result["images"] == sum(kept_images(settings, k) for k in keys)
    assert result["first_shard_images"] == kept_images(settings, keys[0])
    assert len(result["pass_seconds"]) == len(result["predictions_per_s"]) == 2
    assert all(rate > 0 for rate in result["predictions_per_s"])
    assert min(result["predictions_per_s"]) <= result["median_predictions_per_s"]
    assert result["model_load_seconds"] > 0 and result["lake_read_seconds"] > 0


def test_rescore_runs_the_job_and_writes_the_metrics_row(setup) -> None:
    settings, _ = setup
    drop = "drops/2024-08-01/part-r-00000"
    engine = metricsdb.connect(metricsdb.database_url(settings))
    assert bench.monitoring_recorded_at(engine, drop) is None
    before = time.time()
    result = bench.measure_rescore(settings, [drop], repeats=1, log=quiet)
    [run] = result["runs"]
    assert run["key"] == drop and run["predictions"] == kept_images(settings, drop)
    assert result["median_predictions_per_s"] == pytest.approx(run["predictions"] / run["seconds"])
    recorded = bench.monitoring_recorded_at(engine, drop)
    assert recorded is not None and before - 1 <= recorded <= time.time()


def test_no_champion_is_a_clear_error(tmp_path: Path) -> None:
    with (
        bench.using_home(tmp_path) as settings,
        pytest.raises(bench.BenchmarkError, match="baseline has no champion"),
    ):
        bench.measure_predictions(settings, ["val/part-r-00000"], repeats=1, log=quiet)


def test_upload_drop_takes_the_day_after_the_latest_drop(tmp_path: Path) -> None:
    main, separate = LocalStore(tmp_path / "data"), LocalStore(tmp_path / "drops-only")
    main.write_bytes("drops/2024-08-03/part-r-00000", b"old")
    shards = {"val/part-r-00000": b"a", "val/part-r-00001": b"b"}
    key, uploaded = bench.upload_drop(separate, shards, 1, after=main)
    assert key == "drops/2024-08-04/part-r-00000"
    assert separate.read_bytes(key) == b"b"
    assert uploaded <= time.time()
    assert bench.upload_drop(separate, shards, 2, after=main)[0] == "drops/2024-08-05/part-r-00000"


def test_stop_tagged_stops_every_tagged_process() -> None:
    tag = "test-" + str(os.getpid())
    env = {**os.environ, bench.TAG_ENV: tag}
    # The child restores SIGTERM's default action and unblocks it: a disposition or mask
    # inherited from the test process (which has loaded Dagster and TensorFlow) is not what is
    # under test here.
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert bench.tagged_pids(tag) == [child.pid]
        stubborn = bench.stop_tagged(tag, grace=15)
        status = Path(f"/proc/{child.pid}/status")
        state = status.read_text() if stubborn and status.exists() else ""
        assert stubborn == [], f"SIGTERM did not stop the child within 15 s:\n{state}"
        assert child.wait(timeout=5) == -15
        assert bench.tagged_pids(tag) == []
    finally:
        child.kill()


def test_report_renders_figures_and_the_sensor_interval() -> None:
    report = {
        "machine": bench.bench_machine(),
        "settings": {k: str(v) for k, v in vars(TINY).items()},
        "setup_seconds": {"sample-data": 1.0, "train baseline --epochs 2": 20.0},
        "throughput": {
            "model_version": "1", "shards": 5, "images": 1574, "first_shard_images": 60,
            "model_load_seconds": 0.4, "lake_read_seconds": 0.2, "first_call_seconds": 0.5,
            "pass_seconds": [1.0, 2.0], "predictions_per_s": [1574.0, 787.0],
            "median_predictions_per_s": 1180.5,
        },
        "rescore": {
            "shards": 1, "runs": [{"key": "k", "repeat": 0, "seconds": 4.0, "predictions": 60}],
            "median_seconds_per_shard": 4.0, "predictions_per_s": [15.0],
            "median_predictions_per_s": 15.0,
        },
        "latency": {
            "sensor_interval_s": 5, "webserver_ready_seconds": 20.0, "first_tick_seconds": 0.1,
            "drops": [{
                "key": "drops/2024-08-02/part-r-00000", "uploaded": 100.0, "created": 103.0,
                "started": 110.0, "ended": 150.0, "recorded": 148.0, "latency_seconds": 48.0,
            }],
            "latencies_seconds": [48.0], "median_latency_seconds": 48.0, "drop_records": [400],
            "separate_drop_root": False, "other_runs": {"__ASSET_JOB": 1},
            "leftover_processes": 0,
        },
        "total_seconds": 300.0,
    }  # fmt: skip
    summary = bench.format_summary(report)
    assert "1,180" in summary and "48.0" in summary
    docs = bench.format_docs(report, "--quick")
    assert f"{bench.COMMAND} --quick" in docs
    assert "| `drops/2024-08-02/part-r-00000` | 48.0 | 3.0 | 7.0 | 38.0 |" in docs
    assert "2.5 s here, and 15 s with the default of 30 s" in " ".join(docs.split())
    assert report["machine"]["cpu"] in docs
    report["latency"] = None
    assert "latency phase was not run" in bench.format_docs(report)
