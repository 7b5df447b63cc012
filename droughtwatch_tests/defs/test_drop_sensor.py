"""The drop sensor against a real S3 endpoint (moto on 127.0.0.1) and a local data root."""

from __future__ import annotations

import time

import boto3
import dagster as dg
import pytest

from droughtwatch_assets.adapters.storage import StorageError, open_store
from droughtwatch_assets.defs.ingest.sensors import build_drop_sensor
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.defs.helpers import ingest, requested_keys, tick

DROP = "drops/2024-08-07/part-r-00000"


def upload(settings: Settings, key: str, data: bytes) -> None:
    bucket, prefix = settings.data_root.removeprefix("s3://").split("/", 1)
    boto3.client("s3", endpoint_url=settings.s3_endpoint_url).put_object(
        Bucket=bucket, Key=f"{prefix}/{key}", Body=data
    )


def run_requests(result) -> dict[str, dg.RunRequest]:
    return {r.partition_key: r for r in result.run_requests}


def test_new_drop_is_added_and_ingested_end_to_end(s3_settings, instance, sample_shard_path):
    upload(s3_settings, DROP, sample_shard_path.read_bytes())
    upload(s3_settings, "drops/2024-08-07/_SUCCESS", b"")
    upload(s3_settings, "drops/README.md", b"stray file")

    result = tick(s3_settings, instance)
    requests = run_requests(result)
    assert list(requests) == [DROP]
    assert instance.get_dynamic_partitions("shards") == [DROP]
    assert requests[DROP].run_key.startswith(f"{DROP}@")

    # Execute the requested run; the next tick then asks for nothing.
    assert ingest(s3_settings, instance, DROP).success
    lake = open_store(s3_settings.lake, endpoint_url=s3_settings.s3_endpoint_url)
    assert lake.exists(f"spectral_indices/{DROP}.arrow")
    assert tick(s3_settings, instance, result.cursor).run_requests == []
    # Even a tick that lost its cursor does not ask again: the lake knows the version.
    assert tick(s3_settings, instance, None).run_requests == []


def test_stray_files_are_skipped_with_a_log_line(s3_settings, instance, capsys):
    upload(s3_settings, "drops/2024-08-07/_SUCCESS", b"")
    upload(s3_settings, "drops/2024-08-07/part-r-00000.gstmp", b"partial")
    result = tick(s3_settings, instance)
    assert result.run_requests == []
    text = capsys.readouterr().err
    assert "incoming/drops/2024-08-07/_SUCCESS: not a shard" in text
    assert "incoming/drops/2024-08-07/part-r-00000.gstmp: not a shard" in text
    # Logged once: the next tick has passed them.
    assert tick(s3_settings, instance, result.cursor).run_requests == []
    assert "not a shard" not in capsys.readouterr().err


def test_reupload_with_new_content_is_processed_again(s3_settings, instance, sample_shard_path):
    data = sample_shard_path.read_bytes()
    upload(s3_settings, DROP, data)
    first = tick(s3_settings, instance)
    assert ingest(s3_settings, instance, DROP).success

    upload(s3_settings, DROP, data[: len(data) // 2])  # same key, other content
    second = tick(s3_settings, instance, first.cursor)
    [request] = second.run_requests
    assert request.partition_key == DROP
    assert request.tags["droughtwatch/reupload"] == "true"
    assert request.run_key != first.run_requests[0].run_key
    # The same bytes uploaded again (same ETag) are not new data.
    third = tick(s3_settings, instance, second.cursor)
    assert third.run_requests == []


def test_a_tick_that_fails_halfway_loses_nothing(
    s3_settings, instance, sample_shard_path, monkeypatch
):
    for day in (7, 8, 9):
        upload(s3_settings, f"drops/2024-08-0{day}/part-r-00000", sample_shard_path.read_bytes())

    from droughtwatch_assets.pipeline import discovery

    calls = {"n": 0}
    real = discovery.ingested_version

    def flaky(lake, key):
        calls["n"] += 1
        if calls["n"] == 2:
            raise StorageError("lake unreachable (simulated)")
        return real(lake, key)

    monkeypatch.setattr(discovery, "ingested_version", flaky)
    with pytest.raises(StorageError):
        tick(s3_settings, instance)
    assert instance.get_dynamic_partitions("shards") == []  # the failed tick changed nothing

    retry = tick(s3_settings, instance)  # the daemon retries with the cursor it had
    [batch] = retry.run_requests  # three new shards: one run
    assert requested_keys(instance, batch) == [
        f"drops/2024-08-0{d}/part-r-00000" for d in (7, 8, 9)
    ]
    # Replaying the same tick asks for the same run keys, which the daemon runs once.
    replay = tick(s3_settings, instance)
    assert {r.run_key for r in replay.run_requests} == {r.run_key for r in retry.run_requests}


def test_cost_of_a_tick_grows_with_what_is_new(s3_settings, instance, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from droughtwatch_assets.pipeline.discovery import DiscoveryCursor, discover

    client = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url)
    bucket, prefix = s3_settings.data_root.removeprefix("s3://").split("/", 1)
    held = [
        f"{prefix}/drops/2024-07-{day:02d}/part-r-{part:05d}"
        for day in range(1, 31)
        for part in range(100)
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), held))
    # The 3,000 held objects were seen by earlier ticks: start from the cursor they left.
    store = open_store(s3_settings.data_root, endpoint_url=s3_settings.s3_endpoint_url)
    cursor = discover(
        store, DiscoveryCursor(), already_ingested=lambda info: True, max_new=5000
    ).cursor.dumps()

    import droughtwatch_assets.adapters.storage as storage_module

    calls: list[str] = []
    real_client = storage_module._s3_client

    def counting_client(*args, **kwargs):
        c = real_client(*args, **kwargs)
        c.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
        return c

    upload(s3_settings, "drops/2024-08-01/part-r-00000", b"new shard")
    monkeypatch.setattr(storage_module, "_s3_client", counting_client)
    result = tick(s3_settings, instance, cursor)
    assert [r.partition_key for r in result.run_requests] == ["drops/2024-08-01/part-r-00000"]
    # Two recent folders re-listed (100 keys each: one page) + one listing after the mark,
    # + one lake lookup for the new shard: a handful of calls, not 3,000 objects' worth.
    assert calls.count("ListObjectsV2") <= 4, calls
    assert len(calls) <= 8, calls


def test_local_data_root_sensor(local_settings, instance, sample_shard_path):
    store = open_store(local_settings.data_root)
    store.write_bytes(DROP, sample_shard_path.read_bytes())
    result = tick(local_settings, instance)
    assert list(run_requests(result)) == [DROP]


@pytest.mark.parametrize("interval", [5, 10, 30])
def test_the_daemon_ticks_the_sensor_every_interval_despite_its_loops_jitter(interval):
    """Dagster's daemon looks every MIN_INTERVAL_LOOP_TIME seconds whether the sensor is due, a
    little earlier or later each time. Asked with the interval itself, a look 0.3 s early found
    it not due and the tick waited a whole loop more (10 s instead of 5); the sensor's minimum
    interval leaves room for that, and still never lets it tick a second sooner than that."""
    from types import SimpleNamespace

    from dagster._core.scheduler.instigation import SensorInstigatorData
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME, is_under_min_interval

    from droughtwatch_assets.defs.ingest.sensors import TICK_JITTER_S

    settings = Settings.from_env({"DROUGHTWATCH_SENSOR_INTERVAL": str(interval)})
    sensor_def = dg.Definitions(sensors=[build_drop_sensor(settings)]).get_sensor_def("drop_sensor")
    sensor = SimpleNamespace(min_interval_seconds=sensor_def.minimum_interval_seconds)  # as served

    def due(seconds_since_last_tick: float) -> bool:
        started = time.time() - seconds_since_last_tick
        state = SimpleNamespace(
            instigator_data=SensorInstigatorData(last_tick_start_timestamp=started)
        )
        return not is_under_min_interval(state, sensor)

    assert interval % MIN_INTERVAL_LOOP_TIME == 0  # the loop can hit these intervals exactly
    assert due(interval - 0.3) and due(interval + 0.3)  # a look a little early or late
    assert not due(interval - TICK_JITTER_S - 0.3)
