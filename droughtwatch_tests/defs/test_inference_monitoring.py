"""The loop end to end: a drop uploaded to S3 (moto) is found by the sensor, ingested, scored by
the champion and monitored into a real PostgreSQL (pgserver); idempotency and fault cases."""

from __future__ import annotations

import datetime as dt
import io

import boto3
import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import xarray as xr

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.adapters.storage import StorageError, open_store
from droughtwatch_assets.adapters.tracking import (
    Tracking,
    default_artifact_root,
    default_tracking_uri,
)
from droughtwatch_assets.core.calibration import apply_temperature
from droughtwatch_assets.core.synthetic import iter_benchmark_shards, iter_drop_shards
from droughtwatch_assets.core.training import predict_shards
from droughtwatch_assets.core.variants import get_variant
from droughtwatch_assets.definitions import build_definitions
from droughtwatch_assets.pipeline import lake as lakes
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.defs.helpers import ingest, tick

pytestmark = pytest.mark.slow
DROP = "drops/2024-08-07/part-r-00000"


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    import pgserver

    path = tmp_path_factory.mktemp("pg")
    server = pgserver.get_server(path, cleanup_mode="stop")
    yield path, server.get_uri()
    pgserver.get_server(path, cleanup_mode="stop").cleanup()


@pytest.fixture(scope="module")
def loop(tmp_path_factory, moto_endpoint, postgres):
    """S3 data root and lake, PostgreSQL metrics database, a trained baseline champion."""
    import uuid

    home = tmp_path_factory.mktemp("loop")
    bucket = f"loop-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    settings = Settings(
        home,
        f"s3://{bucket}/incoming",
        f"s3://{bucket}/lake",
        moto_endpoint,
        metrics_db_url=postgres[1],
    )
    store = open_store(settings.data_root, endpoint_url=moto_endpoint)
    with dg.instance_for_test() as instance:
        for shard in iter_benchmark_shards(
            train_records=1200, val_records=400, records_per_shard=400, seed=3
        ):
            store.write_bytes(shard.key, shard.data)
            assert ingest(settings, instance, shard.key).success
        job = build_definitions(settings).resolve_job_def("training_job")
        trained = job.execute_in_process(
            partition_key="baseline",
            instance=instance,
            run_config={"ops": {"trained_model": {"config": {"epochs": 2}}}},
        )
        assert trained.success
        yield settings, instance, store


def run_request(settings, instance, request: dg.RunRequest, **kwargs):
    job = build_definitions(settings).resolve_job_def(request.job_name)
    return job.execute_in_process(
        partition_key=request.partition_key, instance=instance, raise_on_error=False, **kwargs
    )


def metrics_rows(settings, shard_key: str) -> list[dict]:
    engine = metricsdb.connect(metricsdb.database_url(settings))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(metricsdb.monitoring_metrics).where(
                metricsdb.monitoring_metrics.c.shard_key == shard_key
            )
        ).mappings()
        return [dict(r) for r in rows]


def test_drop_is_found_predicted_and_monitored(loop):
    settings, instance, store = loop
    [drop] = list(
        iter_drop_shards(
            drops=1,
            records_per_drop=150,
            start_date=dt.date(2024, 8, 7),
            seed=5,
        )
    )
    store.write_bytes(drop.key, drop.data)
    result = tick(settings, instance)
    [request] = [r for r in result.run_requests if r.partition_key == DROP]
    assert request.job_name == "drop_job"  # drops go all the way through
    run = run_request(settings, instance, request)
    assert run.success

    lake = open_store(settings.lake, endpoint_url=settings.s3_endpoint_url)
    frame = pq.read_table(
        io.BytesIO(lake.read_bytes(f"batch_predictions/{DROP}.parquet"))
    ).to_pandas()
    assert list(frame.columns) == [
        "ID", "P_0", "P_1", "P_2", "P_3", "label", "P_label", "model_name", "model_version"
    ]  # fmt: skip
    assert set(frame["model_name"]) == {"droughtwatch-baseline"} and set(
        frame["model_version"]
    ) == {"1"}
    assert (frame[["P_0", "P_1", "P_2", "P_3"]].sum(axis=1) - 1).abs().max() < 1e-3
    assert (frame["P_label"] == frame[["P_0", "P_1", "P_2", "P_3"]].max(axis=1)).all()
    # Calibrated: the model's own probabilities, temperature-scaled as fitted at training.
    tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
    temperature = tracking.temperature("baseline", "1")
    assert temperature > 0 and temperature != 1.0
    filtered = lakes.read(lake, lakes.FILTERED_IMAGES, DROP, xr.Dataset)
    indices = lakes.read(lake, lakes.SPECTRAL_INDICES, DROP, xr.Dataset)
    [raw] = predict_shards(
        tracking.load_model("baseline", version="1"), [(filtered, indices)], get_variant("baseline")
    )
    expected = apply_temperature(raw, temperature)
    assert np.allclose(frame[["P_0", "P_1", "P_2", "P_3"]].to_numpy(), expected, atol=1e-5)

    [row] = metrics_rows(settings, DROP)
    assert row["model_name"] == "droughtwatch-baseline" and row["model_version"] == "1"
    assert row["n_predictions"] == len(frame)
    fracs = [row[f"class_{k}_frac"] for k in range(4)]
    assert abs(sum(fracs) - 1) < 1e-6
    assert 0 <= row["prediction_drift"] <= 0.833  # at most sqrt(ln 2)
    assert row["accuracy"] is not None  # the generated drop is labelled: an evaluation too
    assert row["ndvi_psi"] >= 0 and row["ndvi_wasserstein"] >= 0
    # Drift of every input: the 11 bands and 3 indices, and 3 data-quality shares.
    engine = metricsdb.connect(metricsdb.database_url(settings))
    inputs = {r["feature"]: r for r in metricsdb.input_drift_rows(engine, DROP)}
    assert set(inputs) == {f"B{i}" for i in range(1, 12)} | {"ndvi", "ndmi", "evi"} | {
        "blank_share", "cloudy_share", "evi_guarded_share"
    }
    assert all(r["psi"] >= 0 for r in inputs.values() if r["kind"] == "input")
    assert inputs["ndvi"]["psi"] == pytest.approx(row["ndvi_psi"], rel=1e-6)
    assert 0 <= inputs["cloudy_share"]["shard_value"] <= 1

    # The drift summary by drop date (automation, or the CLI after scoring, runs this job).
    summary_job = build_definitions(settings).resolve_job_def("drift_summary_job")
    assert summary_job.execute_in_process(instance=instance).success
    summary = instance.get_latest_materialization_event(dg.AssetKey("drift_by_drop_date"))
    [record] = summary.asset_materialization.metadata["by_drop_date"].value.records
    assert record.data["drop_date"] == "2024-08-07" and record.data["shards"] == 1
    assert record.data["prediction_drift"] == pytest.approx(row["prediction_drift"], abs=1e-4)

    # Scored again: the row is replaced, never duplicated.
    again = (
        build_definitions(settings)
        .resolve_job_def("rescore_job")
        .execute_in_process(partition_key=DROP, instance=instance)
    )
    assert again.success
    [replaced] = metrics_rows(settings, DROP)
    assert replaced["dagster_run_id"] == again.run_id


def test_no_champion_is_a_clear_failure(loop):
    settings, instance, _ = loop
    job = build_definitions(settings).resolve_job_def("rescore_job")
    result = job.execute_in_process(
        partition_key=DROP,
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"process_shards": {"config": {"variant": "ndvi"}}}},
    )
    assert not result.success
    messages = " ".join(
        (e.step_failure_data.user_failure_data.description or "")
        if e.step_failure_data.user_failure_data
        else e.step_failure_data.error.message
        for e in result.all_events
        if e.is_step_failure
    )
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert "droughtwatch-ndvi has no champion yet" in messages
    assert "droughtwatch train ndvi" in messages


def test_transient_s3_fault_is_retried(loop, monkeypatch):
    settings, instance, _ = loop
    from droughtwatch_assets.adapters.storage import S3Store

    real = S3Store.read_bytes
    calls = {"n": 0}

    def flaky(self, key):
        calls["n"] += 1
        if calls["n"] == 1:
            raise StorageError("s3 unreachable for a moment (simulated)")
        return real(self, key)

    monkeypatch.setattr(S3Store, "read_bytes", flaky)
    job = build_definitions(settings).resolve_job_def("rescore_job")
    result = job.execute_in_process(partition_key=DROP, instance=instance)
    assert result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries  # the first attempt failed and was retried


def test_database_away_leaves_no_row_and_rerun_succeeds(loop, postgres):
    import pgserver

    settings, instance, store = loop
    key = "drops/2024-08-08/part-r-00000"
    [drop] = list(
        iter_drop_shards(
            drops=1,
            records_per_drop=100,
            start_date=dt.date(2024, 8, 8),
            seed=6,
        )
    )
    store.write_bytes(key, drop.data)
    assert ingest(settings, instance, key).success
    path, _ = postgres
    pgserver.get_server(path, cleanup_mode="stop").cleanup()  # PostgreSQL goes away
    try:
        job = build_definitions(settings).resolve_job_def("rescore_job")
        failed = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        assert not failed.success
    finally:
        pgserver.get_server(path, cleanup_mode="stop")  # and comes back
    assert metrics_rows(settings, key) == []
    rerun = job.execute_in_process(partition_key=key, instance=instance)
    assert rerun.success
    assert len(metrics_rows(settings, key)) == 1


def test_database_away_for_a_moment_is_retried(loop, postgres, monkeypatch):
    """PostgreSQL is away for the first attempt's write and back for the retry's. The outage is
    counted in attempts, not timed: nothing races the retry policy's backoff."""
    import pgserver

    settings, instance, _ = loop
    path, _ = postgres
    real = metricsdb.upsert_monitoring_row
    writes: list[str] = []

    def away_for_one_attempt(engine, row, inputs=()):
        writes.append(row["shard_key"])
        if len(writes) == 1:  # the first attempt's write finds PostgreSQL gone
            pgserver.get_server(path, cleanup_mode="stop").cleanup()
        elif len(writes) == 2:  # it is back for the retry's
            pgserver.get_server(path, cleanup_mode="stop")
        return real(engine, row, inputs)

    monkeypatch.setattr(metricsdb, "upsert_monitoring_row", away_for_one_attempt)
    job = build_definitions(settings).resolve_job_def("rescore_job")
    try:
        result = job.execute_in_process(partition_key=DROP, instance=instance, raise_on_error=False)
    finally:
        pgserver.get_server(path, cleanup_mode="stop")  # back, whatever happened
    assert result.success
    [retried] = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retried.step_key == "process_shards"
    assert DROP in retried.event_specific_data.error.to_string()
    assert writes == [DROP, DROP]  # one write per attempt: the failed one and the retry's
    [row] = metrics_rows(settings, DROP)
    assert row["dagster_run_id"] == result.run_id


def test_a_new_serving_model_marks_older_predictions_stale(loop):
    """serving_model (materialized by training_job) is upstream of batch_predictions: the
    predictions made by its version are fresh, a promotion makes them stale in Dagster's own
    staleness (what the UI shows), and scoring again makes them fresh with the new version.
    Kept last in the module: it moves the champion."""
    from dagster._core.definitions.data_version import (
        CachingStaleStatusResolver,
        StaleStatus,
    )
    from dagster._core.loader import LoadingContextForTest

    from droughtwatch_assets.adapters.tracking import (
        Tracking,
        default_artifact_root,
        default_tracking_uri,
    )

    settings, instance, _ = loop
    key = "val/part-r-00000"
    serving, predictions = dg.AssetKey("serving_model"), dg.AssetKey("batch_predictions")
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    assert serving in graph.get(predictions).parent_keys
    recorded = instance.get_latest_materialization_event(serving)
    assert recorded.tags["dagster/data_version"] == "droughtwatch-baseline/1"

    def score() -> None:
        job = defs.resolve_job_def("rescore_job")
        assert job.execute_in_process(partition_key=key, instance=instance).success

    def resolver() -> CachingStaleStatusResolver:
        """What the webserver asks for an asset's stale status."""
        return CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))

    def status() -> StaleStatus:
        return resolver().get_status(predictions, key)

    def materialize_serving() -> None:
        # The definitions' own asset, its resources bound.
        assert dg.materialize([defs.resolve_assets_def("serving_model")], instance=instance).success

    score()
    assert status() == StaleStatus.FRESH
    # The same champion again: serving_model records nothing, nothing goes stale.
    def recorded_count() -> int:
        return len(instance.fetch_materializations(serving, limit=100).records)

    before = recorded_count()
    materialize_serving()
    assert recorded_count() == before
    assert status() == StaleStatus.FRESH

    # A promotion (version 2 of the same model, aliased champion) and serving_model follows.
    tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
    v1_run = tracking.version_run_id("baseline", "1")
    source = tracking.client.get_model_version("droughtwatch-baseline", "1").source
    version = tracking.register(source, "baseline", run_id=v1_run)
    tracking.set_alias("baseline", "champion", version)
    materialize_serving()
    latest = instance.get_latest_materialization_event(serving)
    assert latest.tags["dagster/data_version"] == f"droughtwatch-baseline/{version}"
    assert status() == StaleStatus.STALE
    [cause] = resolver().get_stale_root_causes(predictions, key)
    assert cause.asset_key == serving

    score()
    assert status() == StaleStatus.FRESH
    lake = open_store(settings.lake, endpoint_url=settings.s3_endpoint_url)
    frame = pq.read_table(io.BytesIO(lake.read_bytes(f"batch_predictions/{key}.parquet")))
    assert set(frame.to_pandas()["model_version"]) == {version}


def test_estimated_performance_is_recorded_and_warns_below_the_validation_accuracy(loop):
    """Every monitoring row carries CBPE's estimates from the calibrated probabilities; the
    estimated_performance check warns (never blocks) when the estimate is more than
    `performance_drop` below the model's validation accuracy, and says by how much."""
    settings, instance, _ = loop
    key = "val/part-r-00000"
    job = build_definitions(settings).resolve_job_def("rescore_job")

    def score(performance_drop: float) -> dg.AssetCheckEvaluation:
        config = {"ops": {"process_shards": {"config": {"performance_drop": performance_drop}}}}
        result = job.execute_in_process(partition_key=key, instance=instance, run_config=config)
        assert result.success  # a warning never fails the run
        [evaluation] = [
            e for e in result.get_asset_check_evaluations()
            if e.check_name == "estimated_performance"
        ]  # fmt: skip
        return evaluation

    ok = score(0.05)
    row = max(metrics_rows(settings, key), key=lambda r: r["recorded_at"])  # this scoring's
    assert 0.0 < row["estimated_accuracy"] <= 1.0 and 0.0 <= row["estimated_macro_f1"] <= 1.0
    assert row["accuracy"] is not None  # labelled: the truth is there to compare with
    assert ok.passed and ok.severity == dg.AssetCheckSeverity.WARN
    val_accuracy = ok.metadata["val_accuracy"].value
    assert ok.metadata["estimated_accuracy"].value == pytest.approx(row["estimated_accuracy"])
    # A margin that puts the floor above any estimate (validation accuracy + 1): it warns.
    low = score(-1.0)
    assert not low.passed and low.severity == dg.AssetCheckSeverity.WARN
    assert low.description == (
        f"estimated accuracy {row['estimated_accuracy']:.3f} < validation {val_accuracy:.3f} - -1.0"
    )
