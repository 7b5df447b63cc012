"""The ingest assets materialized in-process, one shard partition at a time, with their checks."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from droughtwatch_assets.adapters.storage import open_store
from droughtwatch_assets.core.imagestack import dataset_from_arrow
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.defs.helpers import copy_sample, ingest

KEY = "train/part-r-00012"


def checks_by_name(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e
        for e in result.get_asset_check_evaluations()
    }


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [mat] = [
        e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key == dg.AssetKey(asset)
    ]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def test_real_sample_shard_through_the_graph(local_settings, instance, sample_shard_path):
    copy_sample(Path(local_settings.data_root), KEY, sample_shard_path)
    result = ingest(local_settings, instance, KEY)
    assert result.success

    checks = checks_by_name(result)
    assert set(checks) == {
        "raw_tfrecords:schema_and_labels",
        "raw_tfrecords:has_records",
        "filtered_images:kept_fraction",
        "filtered_images:blank_fraction",
        "filtered_images:pixels_schema",
        "spectral_indices:finite_values",
        "spectral_indices:index_ranges",
    }
    assert all(c.passed for c in checks.values()), {k: c.passed for k, c in checks.items()}

    raw = metadata(result, "raw_tfrecords")
    assert raw["records"] == 81 and raw["valid"] is True
    assert raw["size_bytes"] == sample_shard_path.stat().st_size

    filtered = metadata(result, "filtered_images")
    assert (filtered["records_in"], filtered["records_kept"], filtered["removed_blank"]) == (
        81,
        79,
        2,
    )
    assert filtered["removed_cloudy"] == 0  # default policy flags cloudy images
    assert filtered["flagged_cloudy"] > 0
    assert filtered["kept_label_counts"] == {"0": 46, "1": 14, "2": 14, "3": 5}

    indices = metadata(result, "spectral_indices")
    assert indices["mean_ndvi"] == pytest.approx(0.251, abs=0.005)

    lake = open_store(local_settings.lake)
    images = dataset_from_arrow(lake.read_bytes(f"filtered_images/{KEY}.arrow"))
    assert images["pixels"].dtype == "uint8" and images.sizes["image"] == 79
    index_ds = dataset_from_arrow(lake.read_bytes(f"spectral_indices/{KEY}.arrow"))
    assert index_ds["ndvi"].dtype == "int8" and index_ds.sizes["image"] == 79
    assert list(index_ds["id"].values) == list(images["id"].values)


def test_materializing_twice_gives_the_same_outputs(local_settings, instance, sample_shard_path):
    copy_sample(Path(local_settings.data_root), KEY, sample_shard_path)
    lake = open_store(local_settings.lake)
    keys = [f"filtered_images/{KEY}.arrow", f"spectral_indices/{KEY}.arrow"]
    assert ingest(local_settings, instance, KEY).success
    first = [lake.read_bytes(k) for k in keys]
    assert ingest(local_settings, instance, KEY).success
    assert [lake.read_bytes(k) for k in keys] == first


def test_remove_policy_drops_cloudy_images(local_settings, instance, sample_shard_path):
    copy_sample(Path(local_settings.data_root), KEY, sample_shard_path)
    config = {"ops": {"process_shards": {"config": {"cloud_policy": "remove"}}}}
    result = ingest(local_settings, instance, KEY, run_config=config)
    assert result.success
    filtered = metadata(result, "filtered_images")
    assert filtered["removed_cloudy"] > 0 and filtered["flagged_cloudy"] == 0
    assert filtered["records_kept"] == 79 - filtered["removed_cloudy"]


def test_corrupt_shard_fails_its_checks_and_stays_out_of_the_lake(
    local_settings: Settings, instance, sample_shard_path
):
    data_root = Path(local_settings.data_root)
    good = "drops/2024-08-07/part-r-00000"
    bad = "drops/2024-08-08/part-r-00000"
    copy_sample(data_root, good, sample_shard_path)
    corrupt = bytearray(sample_shard_path.read_bytes())
    corrupt[200_000] ^= 0xFF  # inside some record's payload: its CRC no longer matches
    (data_root / bad).parent.mkdir(parents=True)
    (data_root / bad).write_bytes(bytes(corrupt))

    bad_result = ingest(local_settings, instance, bad, raise_on_error=False)
    assert not bad_result.success
    checks = checks_by_name(bad_result)
    schema = checks["raw_tfrecords:schema_and_labels"]
    assert not schema.passed
    error = schema.metadata["error"].value
    assert bad in error and "record" in error and "crc" in error.lower()
    lake = open_store(local_settings.lake)
    assert not lake.exists(f"filtered_images/{bad}.arrow")
    assert not lake.exists(f"spectral_indices/{bad}.arrow")

    # The other shard is untouched by the failure and ingests normally.
    assert ingest(local_settings, instance, good).success
    assert lake.exists(f"spectral_indices/{good}.arrow")
    # The bad shard's bytes in the data root are kept as they were, for inspection.
    assert (data_root / bad).read_bytes() == bytes(corrupt)


def materialize_subset(settings, instance, selection: list[str]) -> dg.ExecuteInProcessResult:
    from droughtwatch_assets.definitions import build_definitions

    if not instance.has_dynamic_partition("shards", KEY):
        instance.add_dynamic_partitions("shards", [KEY])
    job = build_definitions(settings).resolve_job_def("ingest_job")
    return job.execute_in_process(
        partition_key=KEY,
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey(name) for name in selection],
    )


def failure_messages(result: dg.ExecuteInProcessResult) -> str:
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            if event.step_failure_data.user_failure_data:
                messages.append(event.step_failure_data.user_failure_data.description or "")
            error = event.step_failure_data.error
            while error is not None:
                messages.append(error.message)
                error = error.cause
    return "\n".join(messages)


def test_shard_rewritten_after_validation_is_refused(local_settings, instance, sample_shard_path):
    path = copy_sample(Path(local_settings.data_root), KEY, sample_shard_path)
    assert materialize_subset(local_settings, instance, ["raw_tfrecords"]).success
    path.write_bytes(path.read_bytes()[:-1000])  # rewritten (truncated) after validation
    second = materialize_subset(local_settings, instance, ["filtered_images"])
    assert not second.success
    assert "changed since raw_tfrecords validated it" in failure_messages(second)
    assert not open_store(local_settings.lake).exists(f"filtered_images/{KEY}.arrow")


def test_subsets_materialize_alone(local_settings, instance, sample_shard_path):
    copy_sample(Path(local_settings.data_root), KEY, sample_shard_path)
    lake = open_store(local_settings.lake)
    # Indices before their filtered images exist: a clear error, nothing written.
    early = materialize_subset(local_settings, instance, ["spectral_indices"])
    assert not early.success
    assert "materialize raw_tfrecords" in failure_messages(
        early
    ) or "materialize filtered_images" in failure_messages(early)
    assert not lake.exists(f"spectral_indices/{KEY}.arrow")

    assert materialize_subset(local_settings, instance, ["raw_tfrecords"]).success
    assert materialize_subset(local_settings, instance, ["filtered_images"]).success
    only_indices = materialize_subset(local_settings, instance, ["spectral_indices"])
    assert only_indices.success
    assert [e.check_name for e in only_indices.get_asset_check_evaluations()] == [
        "finite_values",
        "index_ranges",
    ]
    by_parts = lake.read_bytes(f"spectral_indices/{KEY}.arrow")
    # The same as computing all three in one step.
    assert ingest(local_settings, instance, KEY).success
    assert lake.read_bytes(f"spectral_indices/{KEY}.arrow") == by_parts


def test_ingest_with_data_root_and_lake_in_s3(s3_settings, instance, sample_shard_path):
    from droughtwatch_tests.defs.helpers import put_sample

    put_sample(s3_settings, KEY, sample_shard_path)
    result = ingest(s3_settings, instance, KEY)
    assert result.success
    lake = open_store(s3_settings.lake, endpoint_url=s3_settings.s3_endpoint_url)
    keys = [info.key for info in lake.list("")]
    assert keys == [
        f"filtered_images/{KEY}.arrow",
        f"raw_tfrecords/{KEY}.json",
        f"spectral_indices/{KEY}.arrow",
    ]
    images = dataset_from_arrow(lake.read_bytes(f"filtered_images/{KEY}.arrow"))
    assert images.sizes["image"] == 79


def test_shard_failing_a_blocking_filter_check_writes_nothing(local_settings, instance):
    """A shard of (nearly) all blank images fails kept_fraction: the lake stays clean."""
    import numpy as np

    from droughtwatch_assets.core.tfrecord import write_shard

    key = "drops/2024-08-09/part-r-00000"
    images = np.zeros((10, 11, 65, 65), np.uint8)
    images[:2] = 100  # 2 of 10 images kept: 20 % < 50 %
    path = Path(local_settings.data_root) / key
    path.parent.mkdir(parents=True)
    write_shard(path, images, [0] * 10)
    result = ingest(local_settings, instance, key, raise_on_error=False)
    assert not result.success
    checks = checks_by_name(result)
    assert not checks["filtered_images:kept_fraction"].passed
    assert not checks["filtered_images:blank_fraction"].passed  # the warning fires too
    assert "spectral_indices:finite_values" not in checks  # downstream never ran
    assert checks["filtered_images:kept_fraction"].metadata["records_kept"].value == 2
    materialized = {
        e.step_materialization_data.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }
    assert materialized == {"raw_tfrecords"}  # nothing of it is in the lake, nor claimed to be
    lake = open_store(local_settings.lake)
    assert not lake.exists(f"filtered_images/{key}.arrow")
    assert lake.exists(f"raw_tfrecords/{key}.json")  # the validation report is kept
