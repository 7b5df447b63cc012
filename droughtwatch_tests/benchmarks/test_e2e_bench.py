"""The end-to-end benchmark's own pieces: its corpus, its timing, its verdicts and its page."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from droughtwatch_assets.core.tfrecord import decode_shard
from droughtwatch_tests.benchmarks import e2e


def test_real_shaped_shards_hold_the_samples_records_rotated(sample_shard_path):
    frames = e2e.sample_frames(sample_shard_path)
    assert len(frames) == 81
    original = decode_shard(sample_shard_path.read_bytes(), "sample")
    first = decode_shard(e2e.real_shaped_shard(frames, 0), "s0")
    np.testing.assert_array_equal(first.images, original.images)
    np.testing.assert_array_equal(first.labels, original.labels)
    third = decode_shard(e2e.real_shaped_shard(frames, 2), "s2")
    np.testing.assert_array_equal(third.images, np.roll(original.images, -2, axis=0))
    np.testing.assert_array_equal(third.labels, np.roll(original.labels, -2))
    assert e2e.real_shaped_shard(frames, 81) == e2e.real_shaped_shard(frames, 0)


def clock(monkeypatch: pytest.MonkeyPatch, *readings: float) -> None:
    """run_timed's clock: the readings in turn, then the last one for ever (sleeps are real)."""
    left = list(readings)
    fake = SimpleNamespace(
        perf_counter=lambda: left.pop(0) if len(left) > 1 else left[0], sleep=time.sleep
    )
    monkeypatch.setattr(e2e, "time", fake)


def test_run_timed_reports_wall_time_and_the_trees_memory(monkeypatch):
    clock(monkeypatch, 10.0, 13.5)  # started at 10.0; every later reading 13.5
    timed = e2e.run_timed(
        [sys.executable, "-c", "import time; b = bytearray(60 << 20); time.sleep(1); print('ok')"],
        env={},
        timeout=60,
    )
    assert timed.output.strip() == "ok"
    assert timed.seconds == 3.5  # the clock's reading at exit less its reading at start
    assert timed.peak_mib >= 60  # the 60 MiB the child touched


def test_a_timed_pass_without_memory_reads_no_process_tables(monkeypatch):
    looked = []
    monkeypatch.setattr(e2e, "tree_pss_mib", lambda pid: looked.append(pid) or 1.0)
    command = [sys.executable, "-c", "import time; time.sleep(0.7); print('ok')"]
    timed = e2e.run_timed(command, env={}, timeout=60, memory=False)
    assert (timed.output.strip(), timed.peak_mib, looked) == ("ok", 0.0, [])
    assert 0.7 <= timed.seconds < 60
    assert e2e.run_timed(command, env={}, timeout=60).peak_mib == 1.0 and looked  # sampled


def test_run_timed_kills_a_command_past_its_timeout(monkeypatch):
    clock(monkeypatch, 0.0, 61.0)  # the first look after the start is past the timeout
    with pytest.raises(e2e.BenchmarkError, match="took over 60 s"):
        e2e.run_timed([sys.executable, "-c", "import time; time.sleep(600)"], env={}, timeout=60)


def test_run_timed_turns_a_failing_command_into_a_clear_error():
    with pytest.raises(e2e.BenchmarkError, match="exited with 3"):
        e2e.run_timed([sys.executable, "-c", "raise SystemExit(3)"], env={}, timeout=60)


def _report(discover_s=10.0, baseline_s=100.0, sensor_s=40.0, memory=(600.0, 630.0)) -> dict:
    return {
        "machine": {"cpu": "test", "cores": "2", "python": "3.11", "dagster": "1.13"},
        "settings": {"sensor_interval": "5"},
        "total_seconds": 600.0,
        "discover": {
            "shards": 300, "records": 24_300,
            "ours": [{"seconds": discover_s + d} for d in (1.0, 0.0, -0.5)],
            "baseline": [{"seconds": baseline_s + d} for d in (-2.0, 0.0, 3.0)],
            "median_seconds": discover_s, "baseline_median_seconds": baseline_s,
            "records_per_s": 24_300 / discover_s, "baseline_records_per_s": 24_300 / baseline_s,
            "speedup": baseline_s / discover_s, "peak_mib": memory[0],
            "memory": {"shards": 1200, "seconds": 40.0, "peak_mib": memory[1]},
        },
        "served": {
            "shards": 300, "records": 24_300,
            "sensor_ingest": {"seconds": sensor_s, "runs": 4, "failed_runs": 0,
                              "passes": [sensor_s + 3, sensor_s, sensor_s - 1]},
            "sensor": {"scored_seconds": 90.0, "runs": 4, "failed_runs": 0},
            "backfill": {"seconds": 70.0, "materialized_seconds": 50.0,
                         "status": "COMPLETED_SUCCESS", "partitions_done": 300, "runs": 1},
            "lone_drop_seconds": [12.0, 14.0, 20.0], "lone_drop_median_seconds": 14.0,
            "score": {"seconds": 40.0, "predictions": 24_000, "predictions_per_s": 600.0},
            "model_predictions_per_s": 1_000.0,
        },
    }  # fmt: skip


def test_targets_are_ratios_against_the_earlier_approach_measured_in_the_same_run():
    verdicts = {t["name"].split(",")[0]: t for t in e2e.evaluate(_report())}
    discover = verdicts["discover --materialize vs the earlier approach (records/s)"]
    assert discover["value"] == pytest.approx(10.0) and discover["passed"]
    sensor = verdicts["drop sensor"]
    assert sensor["value"] == pytest.approx(2.5) and not sensor["passed"]
    assert verdicts["score --again"]["value"] == pytest.approx(0.6)
    assert verdicts["peak memory"]["value"] == pytest.approx(1.05)
    assert verdicts["lone drop"]["passed"]

    slower = {t["name"]: t["passed"] for t in e2e.evaluate(_report(discover_s=11.0))}
    assert not slower["discover --materialize vs the earlier approach (records/s)"]
    grown = e2e.evaluate(_report(memory=(600.0, 700.0)))
    assert not next(t for t in grown if t["name"].startswith("peak memory"))["passed"]


def test_the_page_shows_every_path_and_every_verdict():
    report = _report()
    report["targets"] = e2e.evaluate(report)
    page = e2e.format_docs(report, "--shards 300")
    assert "make bench-e2e ARGS='--shards 300'" in page
    for text in ("earlier approach", "discover --materialize", "archive/", "GraphQL",
                 "drops/<date>/", "10.0x", "2.5x", "**no**", "Where the remaining time goes"):
        assert text in page, text  # fmt: skip
    assert "upload to all in the lake, median of 3 (43.0, 40.0, 39.0 s)" in page
    assert "earlier approach (tf.data), median of 3 (98.0, 100.0, 103.0 s)" in page
    assert "`droughtwatch discover --materialize`, median of 3 (11.0, 10.0, 9.5 s)" in page
    summary = e2e.format_summary(report)
    assert "FAIL  drop sensor" in summary and "PASS  discover" in summary
