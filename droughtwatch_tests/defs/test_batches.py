"""Many shards in one run: per-shard materializations and check results, a bad shard among good
ones, and a retry that redoes only what is missing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from droughtwatch_assets.adapters.storage import LocalStore, StorageError, open_store
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.defs.helpers import copy_sample, execute_request, requested_keys, tick

KEYS = [f"train/part-r-{i:05d}" for i in range(5)]
BAD = KEYS[2]


def by_partition(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, dict]]:
    """{partition: {asset: metadata}} of a run's materializations."""
    out: dict[str, dict[str, dict]] = {}
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        out.setdefault(mat.partition, {})[mat.asset_key.to_user_string()] = {
            k: getattr(v, "value", v) for k, v in mat.metadata.items()
        }
    return out


def checks_by_partition(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {}
    for evaluation in result.get_asset_check_evaluations():
        name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
        out.setdefault(evaluation.partition, {})[name] = evaluation.passed
    return out


@pytest.fixture
def corpus(local_settings: Settings, sample_shard_path: Path) -> Settings:
    """Five copies of the real shard, the middle one with a corrupted record."""
    root = Path(local_settings.data_root)
    for key in KEYS:
        copy_sample(root, key, sample_shard_path)
    corrupt = bytearray((root / BAD).read_bytes())
    corrupt[200_000] ^= 0xFF  # inside a record's payload: its CRC no longer matches
    (root / BAD).write_bytes(bytes(corrupt))
    return local_settings


def test_a_tick_of_shards_is_one_batched_run(corpus, instance):
    result = tick(corpus, instance)
    [request] = result.run_requests
    assert request.job_name == "ingest_job"
    assert requested_keys(instance, request) == KEYS
    assert request.tags["droughtwatch/shards"] == "5"


def test_a_bad_shard_in_the_middle_of_a_batch(corpus, instance):
    [request] = tick(corpus, instance).run_requests
    result = execute_request(corpus, instance, request)
    assert not result.success  # the run says a shard failed, and names it ...
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "1 problem(s) in this run; every other shard landed." in message
    assert f"{BAD} failed raw_tfrecords.schema_and_labels: " in message
    assert "payload crc mismatch" in message
    assert "raw_tfrecords.has_records: no records counted: the shard does not decode" in message
    assert not any(f"{key} failed" in message for key in KEYS if key != BAD)

    # ... and every good shard landed, each with its own materializations and metadata.
    lake = open_store(corpus.lake)
    materialized = by_partition(result)
    for key in KEYS:
        if key == BAD:
            continue
        assert lake.exists(f"spectral_indices/{key}.arrow")
        assert set(materialized[key]) == {"raw_tfrecords", "filtered_images", "spectral_indices"}
        assert materialized[key]["raw_tfrecords"]["source"].endswith(key)
        assert materialized[key]["filtered_images"]["records_kept"] == 79
    checks = checks_by_partition(result)
    assert None not in checks  # every result belongs to a shard
    assert all(all(checks[key].values()) for key in KEYS if key != BAD)

    # The bad shard failed its own checks, on its own partition, and nothing of it went further.
    assert checks[BAD]["raw_tfrecords:schema_and_labels"] is False
    assert "filtered_images:kept_fraction" not in checks[BAD]
    assert set(materialized[BAD]) == {"raw_tfrecords"}
    assert materialized[BAD]["raw_tfrecords"]["valid"] is False
    assert not lake.exists(f"filtered_images/{BAD}.arrow")
    # The instance records them per partition too: what the UI's check pages read.
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("raw_tfrecords"), "schema_and_labels"), limit=10
    )
    status = {r.event.asset_check_evaluation.partition: r.status.value for r in records}
    assert status[BAD] == "FAILED"
    assert {status[k] for k in KEYS if k != BAD} == {"SUCCEEDED"}
    assert instance.get_materialized_partitions(dg.AssetKey("spectral_indices")) == set(
        KEYS
    ) - {BAD}


def test_a_transient_fault_on_one_shard_is_retried_for_that_shard_alone(
    corpus, instance, monkeypatch
):
    Path(corpus.data_root, BAD).unlink()  # five good shards this time
    copy_sample(Path(corpus.data_root), BAD, Path(corpus.data_root, KEYS[0]))
    real = LocalStore.read_bytes
    calls: dict[str, int] = {}

    def flaky(self, key):
        calls[key] = calls.get(key, 0) + 1
        if key == KEYS[3] and calls[key] == 1:
            raise StorageError("data root unreachable for a moment (simulated)")
        return real(self, key)

    monkeypatch.setattr(LocalStore, "read_bytes", flaky)
    [request] = tick(corpus, instance).run_requests
    result = execute_request(corpus, instance, request)
    assert result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    # Every shard was read once, the one that failed twice: the retry redid only that shard.
    assert {k: v for k, v in calls.items() if k in KEYS} == {
        **{k: 1 for k in KEYS},
        KEYS[3]: 2,
    }
    raw = [
        e.step_materialization_data.materialization.partition
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key.path == ["raw_tfrecords"]
    ]
    assert sorted(raw) == KEYS  # once each, never twice


def test_a_chunk_whose_events_cannot_be_written_gets_no_reports(corpus, instance, monkeypatch):
    """A raw report tells discovery its shard is in, so it is written only after the events of
    the shard's chunk: when those cannot be written, no shard of the chunk gets its report, the
    run fails naming each of them, and discovery then finds them all again."""
    from droughtwatch_assets.defs import shards
    from droughtwatch_assets.pipeline.discovery import already_ingested_in, full_scan

    Path(corpus.data_root, BAD).unlink()  # five good shards this time
    copy_sample(Path(corpus.data_root), BAD, Path(corpus.data_root, KEYS[0]))

    def failing(_instance) -> None:
        raise RuntimeError("the event log is gone (simulated)")

    monkeypatch.setattr(shards, "write_buffered_events", failing)
    [request] = tick(corpus, instance).run_requests
    result = execute_request(corpus, instance, request)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"{len(KEYS)} problem(s) in this run" in message
    for key in KEYS:
        assert f"{key}: the event log is gone (simulated)" in message
    lake = open_store(corpus.lake)
    assert not any(lake.exists(f"raw_tfrecords/{key}.json") for key in KEYS)
    found, _ = full_scan(open_store(corpus.data_root), already_ingested=already_ingested_in(lake))
    assert sorted(f.key for f in found) == KEYS


def test_a_run_interrupted_mid_chunk_keeps_the_reports_of_what_it_recorded(
    corpus, instance, monkeypatch
):
    """A terminate interrupts the step in the middle of a chunk, and Dagster turns the interrupt
    into a retry (the op's retry policy). The shards whose events were recorded before it are
    skipped by the retry, so they must have their raw reports (what discovery and scoring read)
    already: every shard ends with its report and each asset materialized once."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    from droughtwatch_assets.defs.ingest import assets as ingest_assets

    Path(corpus.data_root, BAD).unlink()  # five good shards this time
    copy_sample(Path(corpus.data_root), BAD, Path(corpus.data_root, KEYS[0]))
    real = ingest_assets.ingest_one
    calls: list[str] = []

    def interrupted_once(key, *args, **kwargs):
        calls.append(key)
        if len(calls) == 3:  # the third shard of the first attempt: mid-chunk
            raise DagsterExecutionInterruptedError()
        return real(key, *args, **kwargs)

    monkeypatch.setattr(ingest_assets, "ingest_one", interrupted_once)
    [request] = tick(corpus, instance).run_requests
    result = execute_request(corpus, instance, request)
    assert result.success
    assert calls == [*KEYS[:3], *KEYS[2:]]  # the retry redid only the interrupted shard on
    lake = open_store(corpus.lake)
    assert all(lake.exists(f"raw_tfrecords/{key}.json") for key in KEYS)
    raw = [
        e.step_materialization_data.materialization.partition
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key.path == ["raw_tfrecords"]
    ]
    assert sorted(raw) == KEYS  # once each, never twice
