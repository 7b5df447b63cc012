"""Smoke test of the inference benchmark on a tiny setup: both backends' throughput, the cold-start
and `droughtwatch score` phases, the report, and the helpers of the latency phase (which itself
needs `dagster dev`: not run here)."""

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


@pytest.mark.parametrize("backend", bench.BACKENDS)
def test_throughput_counts_every_kept_image_in_every_pass(setup, backend: str) -> None:
    settings, _ = setup
    keys = bench.ingested_keys(settings)
    kept: list = []
    result = bench.measure_predictions(
        settings, keys, repeats=2, backend=backend, keep=kept, log=quiet
    )
    assert result["backend"] == backend and result["model_version"] == "1"
    assert result["shards"] == 4
    assert result["images"] == sum(kept_images(settings, k) for k in keys)
    assert [len(p) for p in kept] == [kept_images(settings, k) for k in keys]
    assert result["first_shard_images"] == kept_images(settings, keys[0])
    assert len(result["pass_seconds"]) == len(result["predictions_per_s"]) == 2
    assert all(rate > 0 for rate in result["predictions_per_s"])
    assert min(result["predictions_per_s"]) <= result["median_predictions_per_s"]
    assert result["model_load_seconds"] > 0 and result["lake_read_seconds"] > 0


def test_both_backends_agree_and_the_difference_is_measured(setup) -> None:
    settings, _ = setup
    keys = bench.ingested_keys(settings)
    outputs = {}
    for backend in bench.BACKENDS:
        outputs[backend] = []
        bench.measure_predictions(
            settings, keys, repeats=1, backend=backend, keep=outputs[backend], log=quiet
        )
    worst, same = bench.max_difference(outputs["onnx"], outputs["keras"])
    assert same and 0 <= worst <= 1e-4
    shifted = [p.copy() for p in outputs["onnx"]]
    shifted[0][0] = shifted[0][0][::-1]  # one image's probabilities reversed
    worst, same = bench.max_difference(shifted, outputs["keras"])
    assert worst > 1e-4 and not same


def test_cold_start_stages_add_up_and_onnx_never_imports_tensorflow(setup) -> None:
    settings, _ = setup
    found = bench.measure_cold_start(Path(settings.home), "val/part-r-00000", 1, log=quiet)
    assert set(found) == {"onnx", "keras"}
    for backend, [stages] in found.items():
        assert list(stages) == [*bench.COLD_STAGES, "total"], backend
        assert all(v >= 0 for v in stages.values()), stages
        parts = sum(stages[s] for s in bench.COLD_STAGES)
        assert parts == pytest.approx(stages["total"], abs=1e-6)
    # measure_cold_start raises if the ONNX process imported TensorFlow; a Keras one must have.


def test_cli_score_runs_each_backend_and_writes_metrics_rows(setup) -> None:
    settings, _ = setup
    drop = "drops/2024-08-01/part-r-00000"
    engine = metricsdb.connect(metricsdb.database_url(settings))
    before = time.time()
    found = bench.measure_cli_score(Path(settings.home), 1, log=quiet)
    assert {b: len(found[b]["seconds"]) for b in found} == {"onnx": 1, "keras": 1}
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
    def throughput(rates, load, first):
        return {
            "model_version": "1", "shards": 5, "images": 1574, "first_shard_images": 60,
            "model_load_seconds": load, "lake_read_seconds": 0.2, "first_call_seconds": first,
            "pass_seconds": [1574 / r for r in rates], "predictions_per_s": rates,
            "median_predictions_per_s": sorted(rates)[len(rates) // 2],
        }  # fmt: skip

    def cold(framework, load, first):
        stages = {"interpreter": 0.1, "code imported": 3.0, "framework imported": framework,
                  "champion resolved": 0.5, "model loaded": load, "shard read": 0.1,
                  "first prediction": first}  # fmt: skip
        return [{**stages, "total": sum(stages.values())}]

    report = {
        "machine": bench.bench_machine(),
        "settings": {k: str(v) for k, v in vars(TINY).items()},
        "setup_seconds": {"sample-data": 1.0, "train baseline --epochs 2": 20.0},
        "throughput": {
            "onnx": throughput([2000.0, 1000.0, 1500.0], 0.05, 0.01),
            "keras": throughput([1000.0], 0.4, 0.5),
        },
        "agreement": {"max_abs_diff": 3e-7, "same_argmax": True},
        "cold_start": {"onnx": cold(0.2, 0.1, 0.01), "keras": cold(4.0, 1.0, 0.5)},
        "cli": {
            "onnx": {"seconds": [10.0], "predictions": 1574},
            "keras": {"seconds": [20.0], "predictions": 1574},
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
    assert "| predictions/s, model loaded once | 1,500 | 1,000 | 1.50 |" in summary
    assert "| process start -> first prediction (s) | 4.01 | 9.20 | 0.44 |" in summary
    assert "| `droughtwatch score`, all shards (s) | 10.00 | 20.00 | 0.50 |" in summary
    docs = bench.format_docs(report, "--quick")
    assert f"{bench.COMMAND} --quick" in docs
    flat = " ".join(docs.split())
    assert "first prediction 5.2 s sooner with ONNX (4.01 against 9.20 s)" in flat
    assert "Importing the framework: 0.20 against 4.00 s" in flat
    assert "| `drops/2024-08-02/part-r-00000` | 48.0 | 3.0 | 7.0 | 38.0 |" in docs
    assert "2.5 s here, and 15 s with the default of 30 s" in flat
    assert "differ by at most 3.0e-07, and every argmax agrees" in flat
    assert "20.0 s with Keras, 10.0 s apart: about 5.2 s of start-up (above) and 0.5 s of" in flat
    assert report["machine"]["cpu"] in docs
    report["latency"] = None
    assert "latency phase was not run" in bench.format_docs(report)
