"""Every asset check made to pass and made to fail, through the real Dagster execution.

| asset | check | blocking | fails when |
|---|---|---|---|
| raw_tfrecords | schema_and_labels | ERROR | a record does not decode |
| raw_tfrecords | has_records | ERROR | the shard holds no record |
| filtered_images | kept_fraction | ERROR | under 50 % of the images survive the filters |
| filtered_images | pixels_schema | ERROR | not uint8 (image, band, y, x), B1..B11, 65 x 65 |
| filtered_images | blank_fraction | WARN | over 10 % of the images are blank |
| spectral_indices | finite_values | ERROR | a NaN or infinity in a per-image statistic |
| spectral_indices | index_ranges | ERROR | a code below -127, an index statistic outside [-1, 1] |
| batch_predictions | probabilities_sum_to_one | ERROR | a row's P_0..P_3 do not sum to 1 |
| batch_predictions | one_row_per_kept_image | ERROR | predictions and kept images differ |
| monitoring_metrics | prediction_drift | WARN | prediction drift above 0.25 |
| monitoring_metrics | estimated_performance | WARN | CBPE accuracy more than 0.05 below val |
| registered_model | promotion_gate | ERROR | any of the gate's three rules refuses |

Each case asserts the check's passed flag, its severity, the metadata it reports (literal values
for hand-built inputs), the partition it was recorded against, and, for a blocking check, that
nothing downstream of it was written while the passing case writes it. The shard checks run in
`ingest_job` and `drop_job`; the scoring checks with a stand-in champion whose probabilities are
written out here (no training), and once with a real trained champion; the promotion gate with
a real champion and a challenger that only the re-measured champion refuses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.adapters.storage import open_store
from droughtwatch_assets.core.drift import reference_profile
from droughtwatch_assets.core.tfrecord import encode_shard
from droughtwatch_assets.definitions import build_definitions
from droughtwatch_assets.pipeline import lake as lakes
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.defs.helpers import copy_sample, ingest

pytestmark = pytest.mark.slow

SIDE = 65
B2, B4, B5, B6, B10, B11 = 1, 3, 4, 5, 9, 10
ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
SUCCEEDED, FAILED = (
    AssetCheckExecutionRecordStatus.SUCCEEDED,
    AssetCheckExecutionRecordStatus.FAILED,
)
# The per-image statistics of spectral_indices, in the order the Dataset holds them.
STATS = [
    "ndvi_mean", "ndvi_std", "ndmi_mean", "ndmi_std", "evi_mean", "evi_std",
    "evi_guarded_fraction", *(f"B{i}_mean" for i in range(1, 12)),
]  # fmt: skip
INDEX_STATS = ["ndvi_mean", "ndvi_std", "ndmi_mean", "ndmi_std", "evi_mean", "evi_std"]


# Helpers --------------------------------------------------------------------------------------


def home_settings(home: Path) -> Settings:
    return Settings(home, str(home / "data"), str(home / "lake"), None)


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e
        for e in result.get_asset_check_evaluations()
    }


def values(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {
        e.step_materialization_data.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    }


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            texts.append(data.user_failure_data.description if data.user_failure_data else "")
            texts.append(data.error.message if data.error else "")
    return "\n".join(t for t in texts if t)


def recorded(
    instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult, asset: str, check: str
) -> list[tuple[str | None, AssetCheckExecutionRecordStatus]]:
    """The check's executions the instance holds for this run: (partition, status)."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
    return [(r.partition, r.status) for r in history if r.run_id == result.run_id]


def assert_check(
    evaluation: dg.AssetCheckEvaluation, *, passed: bool, severity, partition: str, metadata: dict
) -> None:
    assert evaluation.passed is passed
    assert evaluation.severity == severity
    assert evaluation.blocking is (severity == ERROR)
    assert evaluation.partition == partition
    assert values(evaluation) == pytest.approx(metadata, abs=1e-6)


def land(n: int) -> np.ndarray:
    """Clear land: B4 = 50, B5 = 150, B6 = 100, B2 = 40, warm thermal bands, others 60."""
    images = np.full((n, 11, SIDE, SIDE), 60, dtype=np.uint8)
    images[:, B2], images[:, B4], images[:, B5], images[:, B6] = 40, 50, 150, 100
    images[:, B10] = images[:, B11] = 205
    return images


def put_shard(settings: Settings, key: str, kept: int, blank: int) -> None:
    """A hand-built shard: `kept` land images, then `blank` all-zero ones, labels 0..3 in turn."""
    images = np.concatenate([land(kept), np.zeros((blank, 11, SIDE, SIDE), np.uint8)])
    labels = [i % 4 for i in range(kept + blank)]
    path = Path(settings.data_root) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_shard(images, labels, [f"img-{i}" for i in range(len(labels))]))


def in_lake(settings: Settings, key: str) -> set[str]:
    store = open_store(settings.lake)
    suffixes = {
        "raw_tfrecords": ".json", "filtered_images": ".arrow", "spectral_indices": ".arrow",
        "batch_predictions": ".parquet",
    }  # fmt: skip
    return {asset for asset, suffix in suffixes.items() if store.exists(f"{asset}/{key}{suffix}")}


def monitoring_rows(settings: Settings, key: str) -> list[dict]:
    engine = metricsdb.connect(metricsdb.database_url(settings))
    table = metricsdb.monitoring_metrics
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.shard_key == key)).mappings()
        return [dict(r) for r in rows]


# The ingest checks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest_world(tmp_path_factory):
    settings = home_settings(tmp_path_factory.mktemp("ingest-checks"))
    with dg.instance_for_test() as instance:
        yield settings, instance


def test_every_ingest_check_passes_on_a_clean_shard_with_10_percent_blank(ingest_world):
    """18 land images and 2 blank ones: kept 90 %, blank exactly 10 % (the warning's limit)."""
    settings, instance = ingest_world
    key = "train/part-r-00001"
    put_shard(settings, key, kept=18, blank=2)
    result = ingest(settings, instance, key)
    assert result.success
    checks = checks_of(result)
    assert_check(
        checks["raw_tfrecords:schema_and_labels"],
        passed=True, severity=ERROR, partition=key, metadata={"error": ""},
    )  # fmt: skip
    assert_check(
        checks["raw_tfrecords:has_records"],
        passed=True, severity=ERROR, partition=key, metadata={"records": 20},
    )  # fmt: skip
    assert_check(
        checks["filtered_images:kept_fraction"],
        passed=True, severity=ERROR, partition=key,
        metadata={"kept_fraction": 0.9, "threshold": 0.5, "records_in": 20, "records_kept": 18},
    )  # fmt: skip
    assert_check(
        checks["filtered_images:blank_fraction"],
        passed=True, severity=WARN, partition=key,
        metadata={"blank_fraction": 0.1, "threshold": 0.1},
    )  # fmt: skip
    assert_check(
        checks["filtered_images:pixels_schema"],
        passed=True, severity=ERROR, partition=key,
        metadata={
            "dtype": "uint8", "dims": "('image', 'band', 'y', 'x')", "shape": "(18, 11, 65, 65)"
        },
    )  # fmt: skip
    assert_check(
        checks["spectral_indices:finite_values"],
        passed=True, severity=ERROR, partition=key,
        metadata={f"non_finite_{name}": 0 for name in STATS},
    )  # fmt: skip
    assert_check(
        checks["spectral_indices:index_ranges"],
        passed=True, severity=ERROR, partition=key,
        metadata={
            **{f"out_of_range_{name}": 0 for name in INDEX_STATS},
            **{f"below_min_{name}": 0 for name in ("ndvi", "ndmi", "evi")},
        },
    )  # fmt: skip
    assert len(checks) == 7
    # Recorded against the shard's partition, as the UI's check pages read them.
    for name in checks:
        asset, check = name.split(":")
        assert recorded(instance, result, asset, check) == [(key, SUCCEEDED)]
    assert materialized(result) == {"raw_tfrecords", "filtered_images", "spectral_indices"}
    assert in_lake(settings, key) == {"raw_tfrecords", "filtered_images", "spectral_indices"}


def test_blank_fraction_above_10_percent_warns_and_blocks_nothing(ingest_world):
    settings, instance = ingest_world
    key = "train/part-r-00002"
    put_shard(settings, key, kept=17, blank=3)  # 15 % blank
    result = ingest(settings, instance, key)
    assert result.success  # a warning never fails the run
    checks = checks_of(result)
    assert_check(
        checks["filtered_images:blank_fraction"],
        passed=False, severity=WARN, partition=key,
        metadata={"blank_fraction": 0.15, "threshold": 0.1},
    )  # fmt: skip
    assert recorded(instance, result, "filtered_images", "blank_fraction") == [(key, FAILED)]
    assert values(checks["filtered_images:kept_fraction"])["kept_fraction"] == pytest.approx(0.85)
    assert all(c.passed for name, c in checks.items() if name != "filtered_images:blank_fraction")
    assert in_lake(settings, key) == {"raw_tfrecords", "filtered_images", "spectral_indices"}


def test_kept_fraction_below_50_percent_fails_and_writes_nothing_downstream(ingest_world):
    settings, instance = ingest_world
    key = "train/part-r-00003"
    put_shard(settings, key, kept=9, blank=11)  # 45 % kept
    result = ingest(settings, instance, key, raise_on_error=False)
    assert not result.success
    checks = checks_of(result)
    assert_check(
        checks["filtered_images:kept_fraction"],
        passed=False, severity=ERROR, partition=key,
        metadata={"kept_fraction": 0.45, "threshold": 0.5, "records_in": 20, "records_kept": 9},
    )  # fmt: skip
    assert recorded(instance, result, "filtered_images", "kept_fraction") == [(key, FAILED)]
    assert f"{key} failed filtered_images.kept_fraction" in failure_text(result)
    assert "spectral_indices:finite_values" not in checks  # the indices never ran
    assert materialized(result) == {"raw_tfrecords"}
    assert in_lake(settings, key) == {"raw_tfrecords"}  # its report only


def test_an_empty_shard_fails_has_records_and_writes_nothing_downstream(ingest_world):
    settings, instance = ingest_world
    key = "train/part-r-00004"
    path = Path(settings.data_root) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    result = ingest(settings, instance, key, raise_on_error=False)
    assert not result.success
    checks = checks_of(result)
    assert_check(
        checks["raw_tfrecords:has_records"],
        passed=False, severity=ERROR, partition=key, metadata={"records": 0},
    )  # fmt: skip
    assert_check(  # zero records decode fine: only has_records refuses
        checks["raw_tfrecords:schema_and_labels"],
        passed=True, severity=ERROR, partition=key, metadata={"error": ""},
    )  # fmt: skip
    assert recorded(instance, result, "raw_tfrecords", "has_records") == [(key, FAILED)]
    assert set(checks) == {"raw_tfrecords:has_records", "raw_tfrecords:schema_and_labels"}
    assert in_lake(settings, key) == {"raw_tfrecords"}


def test_a_truncated_shard_fails_schema_and_labels_naming_the_record(ingest_world):
    settings, instance = ingest_world
    key = "train/part-r-00005"
    put_shard(settings, key, kept=3, blank=0)
    path = Path(settings.data_root) / key
    path.write_bytes(path.read_bytes()[:-100])  # the third record loses its tail
    result = ingest(settings, instance, key, raise_on_error=False)
    assert not result.success
    checks = checks_of(result)
    schema = checks["raw_tfrecords:schema_and_labels"]
    assert (schema.passed, schema.severity, schema.partition) == (False, ERROR, key)
    meta = values(schema)
    assert meta["error_record"] == 2
    assert key in meta["error"] and "record 2" in meta["error"]
    assert schema.description == meta["error"]
    assert_check(
        checks["raw_tfrecords:has_records"],
        passed=False, severity=ERROR, partition=key, metadata={"records": 0},
    )  # fmt: skip
    assert recorded(instance, result, "raw_tfrecords", "schema_and_labels") == [(key, FAILED)]
    assert in_lake(settings, key) == {"raw_tfrecords"}


def test_pixels_of_the_wrong_kind_fail_pixels_schema(ingest_world, monkeypatch):
    from droughtwatch_assets.defs.ingest import assets

    real = assets.filter_shard

    def uint16_pixels(decoded, **kwargs):
        ds, stats = real(decoded, **kwargs)
        return ds.assign(pixels=ds["pixels"].astype(np.uint16)), stats

    monkeypatch.setattr(assets, "filter_shard", uint16_pixels)
    settings, instance = ingest_world
    key = "train/part-r-00006"
    put_shard(settings, key, kept=10, blank=0)
    result = ingest(settings, instance, key, raise_on_error=False)
    assert not result.success
    checks = checks_of(result)
    assert_check(
        checks["filtered_images:pixels_schema"],
        passed=False, severity=ERROR, partition=key,
        metadata={
            "dtype": "uint16", "dims": "('image', 'band', 'y', 'x')", "shape": "(10, 11, 65, 65)"
        },
    )  # fmt: skip
    assert checks["filtered_images:kept_fraction"].passed
    assert recorded(instance, result, "filtered_images", "pixels_schema") == [(key, FAILED)]
    assert in_lake(settings, key) == {"raw_tfrecords"}


def broken_indices(monkeypatch, change) -> None:
    from droughtwatch_assets.defs.ingest import assets

    real = assets.shard_indices

    def broken(filtered):
        ds = real(filtered)
        change(ds)
        return ds

    monkeypatch.setattr(assets, "shard_indices", broken)


def test_non_finite_statistics_fail_finite_values_and_the_indices_stay_out(
    ingest_world, monkeypatch
):
    def change(ds):
        ds["ndvi_mean"].values[0] = np.nan
        ds["B3_mean"].values[1] = np.inf
        ds["B3_mean"].values[2] = -np.inf

    broken_indices(monkeypatch, change)
    settings, instance = ingest_world
    key = "train/part-r-00007"
    put_shard(settings, key, kept=10, blank=0)
    result = ingest(settings, instance, key, raise_on_error=False)
    assert not result.success
    checks = checks_of(result)
    expected = {f"non_finite_{name}": 0 for name in STATS}
    expected |= {"non_finite_ndvi_mean": 1, "non_finite_B3_mean": 2}
    assert_check(
        checks["spectral_indices:finite_values"],
        passed=False, severity=ERROR, partition=key, metadata=expected,
    )  # fmt: skip
    assert checks["spectral_indices:index_ranges"].passed  # NaN is not "out of range"
    assert recorded(instance, result, "spectral_indices", "finite_values") == [(key, FAILED)]
    assert f"{key} failed spectral_indices.finite_values" in failure_text(result)
    # The filtered images passed their own checks and landed; the indices did not.
    assert materialized(result) == {"raw_tfrecords", "filtered_images"}
    assert in_lake(settings, key) == {"raw_tfrecords", "filtered_images"}


def test_out_of_range_indices_fail_index_ranges_and_the_indices_stay_out(ingest_world, monkeypatch):
    def change(ds):
        ds["ndmi_std"].values[0] = 1.5  # a statistic above 1
        ds["evi_mean"].values[3] = -1.25  # and one below -1
        ds["evi"].values[0, 0, 0] = -128  # a code below -127
        ds["B5_mean"].values[0] = 150.0  # band means are 0..255: not an index statistic

    broken_indices(monkeypatch, change)
    settings, instance = ingest_world
    key = "train/part-r-00008"
    put_shard(settings, key, kept=10, blank=0)
    result = ingest(settings, instance, key, raise_on_error=False)
    assert not result.success
    checks = checks_of(result)
    expected = {f"out_of_range_{name}": 0 for name in INDEX_STATS}
    expected |= {f"below_min_{name}": 0 for name in ("ndvi", "ndmi", "evi")}
    expected |= {"out_of_range_ndmi_std": 1, "out_of_range_evi_mean": 1, "below_min_evi": 1}
    assert_check(
        checks["spectral_indices:index_ranges"],
        passed=False, severity=ERROR, partition=key, metadata=expected,
    )  # fmt: skip
    assert checks["spectral_indices:finite_values"].passed
    assert recorded(instance, result, "spectral_indices", "index_ranges") == [(key, FAILED)]
    assert in_lake(settings, key) == {"raw_tfrecords", "filtered_images"}


@pytest.mark.parametrize(
    ("kept", "blank", "kept_passes", "blank_passes"),
    [
        (10, 10, True, False),  # kept exactly 50 %: passes; 50 % blank warns
        (9, 11, False, False),  # 45 % kept
        (18, 2, True, True),  # blank exactly 10 %: no warning
        (89, 11, True, False),  # 11 % blank
    ],
)
def test_filter_check_boundaries(kept, blank, kept_passes, blank_passes):
    import xarray as xr

    from droughtwatch_assets.core.images import FilterStats
    from droughtwatch_assets.defs.ingest.checks import filtered_checks

    stats = FilterStats(kept + blank, kept, blank, 0, 0, {})
    ds = xr.Dataset(
        {"pixels": (("image", "band", "y", "x"), np.zeros((kept, 11, SIDE, SIDE), np.uint8))},
        coords={"band": [f"B{i}" for i in range(1, 12)]},
    )
    results = {r.check_name: r for r in filtered_checks("k", ds, stats)}
    assert results["kept_fraction"].passed is kept_passes
    assert results["blank_fraction"].passed is blank_passes
    assert values(results["kept_fraction"])["kept_fraction"] == pytest.approx(kept / (kept + blank))


@pytest.mark.parametrize(
    ("change", "field", "shown"),
    [
        (lambda ds: ds.isel(x=slice(0, 64)), "shape", "(2, 11, 65, 64)"),
        (lambda ds: ds.transpose("image", "y", "x", "band"), "dims", "('image', 'y', 'x', 'band')"),
        (lambda ds: ds.assign_coords(band=[f"B{i}" for i in range(2, 13)]), "dims", None),
        (lambda ds: ds.assign(pixels=ds["pixels"].astype(np.float32)), "dtype", "float32"),
    ],
)
def test_pixels_schema_fails_on_each_part_of_the_schema(change, field, shown):
    import xarray as xr

    from droughtwatch_assets.core.images import FilterStats
    from droughtwatch_assets.defs.ingest.checks import filtered_checks

    ds = xr.Dataset(
        {"pixels": (("image", "band", "y", "x"), np.zeros((2, 11, SIDE, SIDE), np.uint8))},
        coords={"band": [f"B{i}" for i in range(1, 12)]},
    )
    stats = FilterStats(2, 2, 0, 0, 0, {})
    [schema] = [
        r for r in filtered_checks("k", change(ds), stats) if r.check_name == "pixels_schema"
    ]
    assert not schema.passed and schema.severity == ERROR
    if shown is not None:
        assert values(schema)[field] == shown


# batch_predictions and monitoring_metrics, with a stand-in champion -------------------------------

# 79 kept images of the real sample (81 records, 2 blank), labels 46 / 14 / 14 / 5.
CONFIDENT_0 = [0.625, 0.125, 0.125, 0.125]  # exact in binary: predicted class 0 everywhere


def stand_in(rows):
    """A Champion class for the shard op that scores every kept image with `rows(n)`."""
    from droughtwatch_assets.adapters.tracking import model_name

    class StandInChampion:
        def __init__(self, tracking, variant, version=None, model_format="onnx"):
            self.variant, self.name, self.version = variant, model_name(variant.name), "7"
            self.model_format = self.served_format = model_format
            self.temperature = 1.5

        def check(self) -> None:
            pass

        def predict(self, shards_):
            return [np.asarray(rows(f.sizes["image"]), dtype=np.float64) for f, _ in shards_]

    return StandInChampion


def stand_in_references(label_reference, val_accuracy):
    """References for the monitoring step: the given predicted-label distribution on val and
    validation accuracy; NDVI/NDMI references 0..0.99 and 0..0.495 (100 evenly spread)."""

    class StandInReferences:
        """Asked for the references of the model that made the predictions: the stand-in
        champion's variant and version, read back from the predictions file."""

        def __init__(self, tracking):
            pass

        def profiles(self, variant, version):
            assert (variant, version) == ("baseline", "7")
            hundred = np.arange(100) / 100
            return list(label_reference), reference_profile(hundred), reference_profile(hundred / 2)

        def inputs(self, variant, version):
            assert (variant, version) == ("baseline", "7")
            return {}, {}

        def validation(self, variant, version):
            assert (variant, version) == ("baseline", "7")
            return val_accuracy, 0.5

    return StandInReferences


@pytest.fixture(scope="module")
def scoring_world(tmp_path_factory):
    settings = home_settings(tmp_path_factory.mktemp("scoring-checks"))
    with dg.instance_for_test() as instance:
        yield settings, instance


def score_drop(settings, instance, sample_shard_path, key, monkeypatch, *, rows, labels, val):
    from droughtwatch_assets.defs.inference import assets as inference
    from droughtwatch_assets.defs.monitoring import assets as monitoring

    monkeypatch.setattr(inference, "Champion", stand_in(rows))
    monkeypatch.setattr(monitoring, "References", stand_in_references(labels, val))
    copy_sample(Path(settings.data_root), key, sample_shard_path)
    instance.add_dynamic_partitions("shards", [key])
    job = build_definitions(settings).resolve_job_def("drop_job")
    return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


def test_scoring_checks_pass_and_the_monitoring_row_is_written(
    scoring_world, sample_shard_path, monkeypatch
):
    """Predicted label 0 for all 79 kept images; the reference predicted (0.85, 0.15, 0, 0) on
    val, so prediction drift is the JS distance of (1, 0, 0, 0) and (0.85, 0.15, 0, 0):
    m = (0.925, 0.075); KL = 0.85 ln(0.85/0.925) + 0.15 ln 2 = 0.032099 and ln(1/0.925) =
    0.077962; sqrt((0.032099 + 0.077962) / 2) = 0.234585 <= 0.25. CBPE accuracy is the mean
    top probability, 0.625, against validation 0.665: the floor 0.615 is not crossed."""
    settings, instance = scoring_world
    key = "drops/2024-08-01/part-r-00000"
    result = score_drop(
        settings, instance, sample_shard_path, key, monkeypatch,
        rows=lambda n: [CONFIDENT_0] * n, labels=[0.85, 0.15, 0.0, 0.0], val=0.665,
    )  # fmt: skip
    assert result.success, failure_text(result)
    checks = checks_of(result)
    assert_check(
        checks["batch_predictions:probabilities_sum_to_one"],
        passed=True, severity=ERROR, partition=key, metadata={"rows_off": 0, "tolerance": 1e-3},
    )  # fmt: skip
    assert_check(
        checks["batch_predictions:one_row_per_kept_image"],
        passed=True, severity=ERROR, partition=key,
        metadata={"predictions": 79, "kept_images": 79},
    )  # fmt: skip
    assert_check(
        checks["monitoring_metrics:prediction_drift"],
        passed=True, severity=WARN, partition=key,
        metadata={"prediction_drift": 0.234585, "threshold": 0.25},
    )  # fmt: skip
    assert_check(
        checks["monitoring_metrics:estimated_performance"],
        passed=True, severity=WARN, partition=key,
        metadata={"estimated_accuracy": 0.625, "val_accuracy": 0.665, "margin": 0.05},
    )  # fmt: skip
    for name in checks:
        asset, check = name.split(":")
        assert recorded(instance, result, asset, check) == [(key, SUCCEEDED)]
    assert {"batch_predictions", "monitoring_metrics"} <= materialized(result)
    assert "batch_predictions" in in_lake(settings, key)
    frame = lakes.read(open_store(settings.lake), lakes.BATCH_PREDICTIONS, key, pd.DataFrame)
    assert len(frame) == 79 and set(frame["label"]) == {0}
    assert set(frame["model_version"]) == {"7"}
    [row] = monitoring_rows(settings, key)
    # All predicted 0 against the true 46 / 14 / 14 / 5: accuracy 46/79; class 0's F1
    # 2 (46/79) / (1 + 46/79) = 92/125 = 0.736, the other three 0: macro F1 0.184. CBPE's
    # expected confusion puts 79 x (0.625, 0.125, 0.125, 0.125) in column 0: class 0's F1
    # 98.75 / 128.375 = 10/13, so the estimated macro F1 is 10/52.
    assert row["n_predictions"] == 79 and row["class_0_frac"] == 1.0
    assert row["most_common_percentage"] == 100.0 and row["share_missing_values"] == 0.0
    assert row["prediction_drift"] == pytest.approx(0.234585, abs=1e-6)
    assert row["accuracy"] == pytest.approx(46 / 79) and row["macro_f1"] == pytest.approx(0.184)
    assert row["estimated_accuracy"] == 0.625
    assert row["estimated_macro_f1"] == pytest.approx(10 / 52)


def test_drift_above_0_25_and_a_low_estimate_warn_but_the_row_is_written(
    scoring_world, sample_shard_path, monkeypatch
):
    """The same predictions against a reference that predicted (0.8, 0.2, 0, 0):
    m = (0.9, 0.1); KL = 0.8 ln(0.8/0.9) + 0.2 ln 2 = 0.044403 and ln(1/0.9) = 0.105361;
    sqrt((0.044403 + 0.105361) / 2) = 0.273645 > 0.25. Validation accuracy 0.685: the floor
    0.635 is above the estimate 0.625."""
    settings, instance = scoring_world
    key = "drops/2024-08-02/part-r-00000"
    result = score_drop(
        settings, instance, sample_shard_path, key, monkeypatch,
        rows=lambda n: [CONFIDENT_0] * n, labels=[0.8, 0.2, 0.0, 0.0], val=0.685,
    )  # fmt: skip
    assert result.success  # warnings only
    checks = checks_of(result)
    drift = checks["monitoring_metrics:prediction_drift"]
    assert_check(
        drift, passed=False, severity=WARN, partition=key,
        metadata={"prediction_drift": 0.273645, "threshold": 0.25},
    )  # fmt: skip
    assert drift.description == "prediction drift 0.274 > 0.25"
    performance = checks["monitoring_metrics:estimated_performance"]
    assert_check(
        performance, passed=False, severity=WARN, partition=key,
        metadata={"estimated_accuracy": 0.625, "val_accuracy": 0.685, "margin": 0.05},
    )  # fmt: skip
    assert performance.description == "estimated accuracy 0.625 < validation 0.685 - 0.05"
    assert recorded(instance, result, "monitoring_metrics", "prediction_drift") == [(key, FAILED)]
    assert recorded(instance, result, "monitoring_metrics", "estimated_performance") == [
        (key, FAILED)
    ]
    assert "monitoring_metrics" in materialized(result)
    [row] = monitoring_rows(settings, key)
    assert row["prediction_drift"] == pytest.approx(0.273645, abs=1e-6)


def test_probabilities_that_do_not_sum_to_one_fail_and_nothing_is_written(
    scoring_world, sample_shard_path, monkeypatch
):
    def rows(n):
        out = [CONFIDENT_0] * n
        out[0] = out[5] = [0.5, 0.5, 0.25, 0.25]  # sums to 1.5
        out[9] = [0.5, 0.2, 0.1, 0.1]  # sums to 0.9
        return out

    settings, instance = scoring_world
    key = "drops/2024-08-03/part-r-00000"
    result = score_drop(
        settings, instance, sample_shard_path, key, monkeypatch,
        rows=rows, labels=[0.85, 0.15, 0.0, 0.0], val=0.665,
    )  # fmt: skip
    assert not result.success
    checks = checks_of(result)
    assert_check(
        checks["batch_predictions:probabilities_sum_to_one"],
        passed=False, severity=ERROR, partition=key, metadata={"rows_off": 3, "tolerance": 1e-3},
    )  # fmt: skip
    assert checks["batch_predictions:one_row_per_kept_image"].passed
    assert recorded(instance, result, "batch_predictions", "probabilities_sum_to_one") == [
        (key, FAILED)
    ]
    assert f"{key} failed batch_predictions.probabilities_sum_to_one" in failure_text(result)
    # Ingest landed; neither the predictions nor the monitoring row after them did.
    assert materialized(result) == {"raw_tfrecords", "filtered_images", "spectral_indices"}
    assert in_lake(settings, key) == {"raw_tfrecords", "filtered_images", "spectral_indices"}
    assert monitoring_rows(settings, key) == []
    assert "monitoring_metrics:prediction_drift" not in checks


def test_one_prediction_short_fails_one_row_per_kept_image(
    scoring_world, sample_shard_path, monkeypatch
):
    settings, instance = scoring_world
    key = "drops/2024-08-04/part-r-00000"
    result = score_drop(
        settings, instance, sample_shard_path, key, monkeypatch,
        rows=lambda n: [CONFIDENT_0] * (n - 1), labels=[0.85, 0.15, 0.0, 0.0], val=0.665,
    )  # fmt: skip
    assert not result.success
    assert in_lake(settings, key) == {"raw_tfrecords", "filtered_images", "spectral_indices"}
    assert monitoring_rows(settings, key) == []
    checks = checks_of(result)
    assert_check(
        checks["batch_predictions:one_row_per_kept_image"],
        passed=False, severity=ERROR, partition=key,
        metadata={"predictions": 78, "kept_images": 79},
    )  # fmt: skip


@dataclasses.dataclass
class FakeChampion:
    """What store_predictions reads of a Champion."""

    name: str = "droughtwatch-baseline"
    version: str = "3"
    temperature: float = 1.25
    served_format: str | None = "onnx"
    model_format: str = "onnx"


def kept_images(n: int):
    import xarray as xr

    return xr.Dataset(coords={"id": ("image", [f"img-{i}" for i in range(n)])})


def test_store_predictions_counts_every_row_off_including_nan(tmp_path):
    from droughtwatch_assets.adapters.storage import LocalStore
    from droughtwatch_assets.defs.inference.assets import store_predictions

    store = LocalStore(tmp_path)
    probabilities = np.array([CONFIDENT_0] * 6)
    probabilities[1] = [np.nan, 0.5, 0.25, 0.25]
    probabilities[4] = [0.7, 0.1, 0.1, 0.2]  # 1.1
    frame, events = store_predictions("k", kept_images(6), probabilities, FakeChampion(), store)
    assert frame is None and not store.exists("batch_predictions/k.parquet")
    [sums, rows] = events
    assert (sums.passed, sums.severity, values(sums)) == (
        False, ERROR, {"rows_off": 2, "tolerance": 1e-3},
    )  # fmt: skip
    assert (rows.passed, values(rows)) == (True, {"predictions": 6, "kept_images": 6})

    good = np.array([CONFIDENT_0] * 6)
    frame, events = store_predictions("k", kept_images(6), good, FakeChampion(), store)
    assert frame is not None and store.exists("batch_predictions/k.parquet")
    materialization, sums, rows = events
    assert sums.passed and rows.passed
    assert {k: getattr(v, "value", v) for k, v in materialization.metadata.items()} | {
        "path": None, "stored_bytes": None
    } == {
        "model_name": "droughtwatch-baseline", "model_version": "3", "temperature": 1.25,
        "model_format": "onnx", "predictions": 6, "predicted_label_counts": {"0": 6},
        "path": None, "stored_bytes": None,
    }  # fmt: skip


def test_predictions_frame_has_the_earlier_projects_columns():
    """ID, P_0..P_3, label (the argmax), P_label (its probability), then the model."""
    from droughtwatch_assets.defs.inference.assets import predictions_frame

    probabilities = np.array([[0.1, 0.6, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]])
    frame = predictions_frame(np.array(["a", "b"]), probabilities, "droughtwatch-x", "4")
    columns = ["ID", "P_0", "P_1", "P_2", "P_3", "label", "P_label", "model_name", "model_version"]
    assert list(frame.columns) == columns
    assert frame["ID"].tolist() == ["a", "b"]
    assert frame["label"].tolist() == [1, 0] and frame["label"].dtype == np.int8
    assert frame["P_label"].tolist() == [0.6, 0.7]
    assert set(frame["model_name"]) == {"droughtwatch-x"} and set(frame["model_version"]) == {"4"}
    empty = predictions_frame(np.array([], dtype=str), np.empty((0, 4)), "droughtwatch-x", "4")
    assert list(empty.columns) == columns and len(empty) == 0
    assert empty["label"].dtype == np.int8


def test_store_predictions_reports_the_format_that_served(tmp_path):
    """The materialization is the shard's own (its partition), names the stored file and its
    size, and reports the format that actually scored, else the one asked for."""
    from droughtwatch_assets.adapters.storage import LocalStore
    from droughtwatch_assets.defs.inference.assets import store_predictions

    store = LocalStore(tmp_path)
    good = np.array([CONFIDENT_0] * 3)
    fell_back = FakeChampion(served_format="keras", model_format="onnx")
    _, [materialization, *_] = store_predictions("d/k", kept_images(3), good, fell_back, store)
    assert materialization.asset_key == dg.AssetKey("batch_predictions")
    assert materialization.partition == "d/k"
    assert materialization.metadata["model_format"].value == "keras"
    path = materialization.metadata["path"].value
    assert path.endswith("batch_predictions/d/k.parquet")
    assert (
        materialization.metadata["stored_bytes"].value
        == (tmp_path / "batch_predictions/d/k.parquet").stat().st_size
    )
    not_loaded = FakeChampion(served_format=None, model_format="onnx")
    _, [materialization, *_] = store_predictions("d/k", kept_images(3), good, not_loaded, store)
    assert materialization.metadata["model_format"].value == "onnx"


def test_store_predictions_with_a_row_missing_fails_the_row_count_check(tmp_path):
    from droughtwatch_assets.adapters.storage import LocalStore
    from droughtwatch_assets.defs.inference.assets import store_predictions

    store = LocalStore(tmp_path)
    probabilities = np.array([CONFIDENT_0] * 5)
    frame, events = store_predictions("k", kept_images(6), probabilities, FakeChampion(), store)
    assert frame is None and not store.exists("batch_predictions/k.parquet")
    rows = {e.check_name: e for e in events}["one_row_per_kept_image"]
    assert (rows.passed, values(rows)) == (False, {"predictions": 5, "kept_images": 6})


# A real champion: the promotion gate, and scoring ------------------------------------------------


@pytest.fixture(scope="module")
def trained_world(tmp_path_factory):
    """800 train and 400 val generated records (two val shards of 200), ingested in one run,
    and baseline trained for 2 epochs through training_job: version 1, the champion."""
    from droughtwatch_assets.core.synthetic import iter_benchmark_shards
    from droughtwatch_assets.runs import partition_tags

    settings = home_settings(tmp_path_factory.mktemp("gate-checks"))
    store = open_store(settings.data_root)
    keys = []
    for shard in iter_benchmark_shards(
        train_records=800, val_records=400, records_per_shard=200, seed=7
    ):
        store.write_bytes(shard.key, shard.data)
        keys.append(shard.key)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("shards", keys)
        ingested = defs.resolve_job_def("ingest_job").execute_in_process(
            instance=instance, tags=partition_tags(keys)
        )
        assert ingested.success
        trained = defs.resolve_job_def("training_job").execute_in_process(
            partition_key="baseline",
            instance=instance,
            run_config={"ops": {"trained_model": {"config": {"epochs": 2}}}},
            raise_on_error=False,
        )
        assert trained.success, failure_text(trained)
        # What trained_model stored for version 1 (a later test stores a challenger over it).
        value = lakes.read(open_store(settings.lake), lakes.TRAINED_MODEL, "baseline", dict)
        yield settings, instance, trained, value


def test_promotion_gate_passes_the_first_good_model_and_serving_follows(trained_world):
    settings, instance, trained, trained_value = trained_world
    [gate] = [e for e in trained.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    meta = values(gate)
    assert (gate.passed, gate.severity, gate.blocking) == (True, ERROR, True)
    assert gate.asset_key == dg.AssetKey("registered_model")
    assert meta["metric"] == "macro_f1" and meta["champion"] == "none" and meta["margin"] == 0.1
    assert meta["challenger"] == pytest.approx(trained_value["val_metrics"]["macro_f1"])
    assert meta["majority"] == pytest.approx(trained_value["majority_metrics"]["macro_f1"])
    assert gate.description.startswith("promoted: macro_f1 ")
    assert gate.description.endswith("; no champion yet")
    # Downstream of the passing blocking check: serving_model records version 1.
    assert "serving_model" in materialized(trained)
    serving = instance.get_latest_materialization_event(dg.AssetKey("serving_model"))
    assert serving.tags["dagster/data_version"] == "droughtwatch-baseline/1"
    shown = {k: getattr(v, "value", v) for k, v in serving.asset_materialization.metadata.items()}
    assert shown.pop("path").endswith("/lake/serving_model.json") and shown.pop("stored_bytes") > 0
    assert shown == {
        "model_name": "droughtwatch-baseline",
        "variant": "baseline",
        "version": "1",
        # The embedded store's UI (droughtwatch mlflow-ui), on the registered version's page.
        "registry": "http://127.0.0.1:5000/#/models/droughtwatch-baseline/versions/1",
    }


def test_promotion_gate_refuses_a_challenger_worse_than_the_champion_measured_again(
    trained_world,
):
    """A challenger that clears rule 1 (by 0.01) and rule 2 (equal accuracy), so only rule 3
    can refuse it: its macro F1 is 0.02 below what the champion scores when measured again on
    the challenger's own val shard (val/part-r-00001 alone, not the two shards the champion
    was validated on). Without the re-measurement there is no champion to compare with and
    the challenger would be promoted."""
    from droughtwatch_assets.adapters.tracking import (
        Tracking,
        default_artifact_root,
        default_tracking_uri,
    )
    from droughtwatch_assets.core.training import evaluate
    from droughtwatch_assets.core.variants import get_variant
    from droughtwatch_assets.pipeline.corpus import shard_sources

    settings, instance, _, champion_value = trained_world
    store = open_store(settings.lake)
    tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
    assert tracking.alias_version("baseline", "champion") == "1"
    assert champion_value["val_shards"] == ["val/part-r-00000", "val/part-r-00001"]

    variant = get_variant("baseline")
    champion = tracking.load_model("baseline", version="1")
    measured, _, _ = evaluate(
        champion, shard_sources(store, ["val/part-r-00001"], variant), variant
    )
    again = measured.macro_f1
    # The re-measured number is not the champion's recorded one: a gate that compared with
    # the recorded validation metrics would report another champion value.
    assert abs(again - champion_value["val_metrics"]["macro_f1"]) > 1e-3

    challenger_f1 = again - 0.02
    majority_f1 = challenger_f1 - 0.10 - 0.01
    challenger = {
        **champion_value,
        "val_shards": ["val/part-r-00001"],
        "val_metrics": {"accuracy": 0.5, "macro_f1": challenger_f1},
        "majority_metrics": {"accuracy": 0.5, "macro_f1": majority_f1},
    }
    lakes.write(store, lakes.TRAINED_MODEL, "baseline", challenger)
    result = (
        build_definitions(settings)
        .resolve_job_def("training_job")
        .execute_in_process(
            partition_key="baseline",
            instance=instance,
            asset_selection=[dg.AssetKey("registered_model"), dg.AssetKey("serving_model")],
            raise_on_error=False,
        )
    )
    assert not result.success
    [gate] = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    meta = values(gate)
    assert (gate.passed, gate.severity, gate.blocking) == (False, ERROR, True)
    assert meta["champion"] == pytest.approx(again, abs=1e-9)
    assert meta["challenger"] == pytest.approx(challenger_f1)
    assert meta["majority"] == pytest.approx(majority_f1)
    assert (meta["metric"], meta["margin"]) == ("macro_f1", 0.1)
    # Rule 3 alone refuses, with the re-measured number.
    assert gate.description == (
        f"refused: macro_f1 {challenger_f1:.4f} is worse than the champion's {again:.4f} "
        "(tolerance 0.00)"
    )
    # Registered as challenger, never champion; serving_model, downstream of the blocking
    # check, did not run.
    assert tracking.alias_version("baseline", "challenger") == "2"
    assert tracking.alias_version("baseline", "champion") == "1"
    assert "serving_model" not in materialized(result)
    serving = instance.get_latest_materialization_event(dg.AssetKey("serving_model"))
    assert serving.tags["dagster/data_version"] == "droughtwatch-baseline/1"
    engine = metricsdb.connect(metricsdb.database_url(settings))
    newest = metricsdb.promotion_history(engine, "droughtwatch-baseline")[0]
    assert (newest["challenger_version"], newest["champion_version"]) == ("2", "1")
    assert not newest["promoted"]
    assert newest["champion_value"] == pytest.approx(again, abs=1e-9)


def test_scoring_checks_pass_with_the_real_champion(trained_world, sample_shard_path):
    settings, instance, _, _ = trained_world
    key = f"drops/{dt.date(2024, 8, 20).isoformat()}/part-r-00000"
    copy_sample(Path(settings.data_root), key, sample_shard_path)
    instance.add_dynamic_partitions("shards", [key])
    job = build_definitions(settings).resolve_job_def("drop_job")
    result = job.execute_in_process(partition_key=key, instance=instance)
    assert result.success
    checks = checks_of(result)
    assert_check(
        checks["batch_predictions:probabilities_sum_to_one"],
        passed=True, severity=ERROR, partition=key, metadata={"rows_off": 0, "tolerance": 1e-3},
    )  # fmt: skip
    assert_check(
        checks["batch_predictions:one_row_per_kept_image"],
        passed=True, severity=ERROR, partition=key,
        metadata={"predictions": 79, "kept_images": 79},
    )  # fmt: skip
    [row] = monitoring_rows(settings, key)
    drift = checks["monitoring_metrics:prediction_drift"]
    assert drift.severity == WARN and drift.partition == key
    assert values(drift) == pytest.approx(
        {"prediction_drift": row["prediction_drift"], "threshold": 0.25}
    )
    assert drift.passed is (row["prediction_drift"] <= 0.25)
    performance = checks["monitoring_metrics:estimated_performance"]
    assert performance.severity == WARN and performance.partition == key
    assert values(performance)["estimated_accuracy"] == pytest.approx(row["estimated_accuracy"])
    assert values(performance)["margin"] == 0.05
    assert row["model_version"] == "1"
    assert in_lake(settings, key) >= {"batch_predictions"}
