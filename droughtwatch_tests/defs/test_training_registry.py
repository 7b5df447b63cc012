"""Training, MLflow tracking and the registry gate, end to end on a tiny generated corpus.

A few hundred generated records, a couple of epochs on the CPU: the real Keras training, a real
MLflow store (SQLite under the test's home) and the real metrics database.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.adapters.storage import open_store
from droughtwatch_assets.adapters.tracking import (
    Tracking,
    default_artifact_root,
    default_tracking_uri,
)
from droughtwatch_assets.core.synthetic import iter_benchmark_shards
from droughtwatch_assets.definitions import build_definitions
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.defs.helpers import ingest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def settings(home: Path) -> Settings:
    return Settings(home, str(home / "data"), str(home / "lake"), None)


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def corpus(settings: Settings, instance) -> list[str]:
    """1,200 train and 400 val generated records, ingested through the real ingest job."""
    store = open_store(settings.data_root)
    keys = []
    for shard in iter_benchmark_shards(
        train_records=1200, val_records=400, records_per_shard=400, seed=7
    ):
        store.write_bytes(shard.key, shard.data)
        keys.append(shard.key)
    for key in keys:
        assert ingest(settings, instance, key).success
    return keys


def train(settings, instance, variant: str, **config) -> dg.ExecuteInProcessResult:
    job = build_definitions(settings).resolve_job_def("training_job")
    run_config = {"ops": {"trained_model": {"config": config}}} if config else {}
    return job.execute_in_process(
        partition_key=variant, instance=instance, raise_on_error=False, run_config=run_config
    )


def materialization(result, asset: str) -> dict:
    [event] = [
        e.step_materialization_data.materialization
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key == dg.AssetKey(asset)
    ]
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def gate(result) -> dg.AssetCheckEvaluation:
    [evaluation] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"
    ]
    return evaluation


def tracking(settings) -> Tracking:
    return Tracking(default_tracking_uri(settings), default_artifact_root(settings))


def test_baseline_trains_registers_and_is_promoted(settings, instance, corpus):
    result = train(settings, instance, "baseline", epochs=2)
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    corpus_meta = materialization(result, "training_corpus")
    assert (corpus_meta["train_shards"], corpus_meta["val_shards"]) == (3, 1)

    trained = materialization(result, "trained_model")
    assert trained["train_records"] > 1100  # 1,200 less the blank images
    assert 0.0 < trained["val_accuracy"] <= 1.0
    assert "true \\ predicted" in trained["confusion_matrix"]
    for k in range(4):
        assert f"precision_{k}" in trained and f"recall_{k}" in trained
    # Calibration on the val shards: a temperature, the ECE before and (cross-fitted) after.
    assert trained["temperature"] > 0
    assert 0 <= trained["val_ece_calibrated"] <= 1 and 0 <= trained["val_ece"] <= 1
    assert trained["reliability"].startswith("| confidence bin | images |")

    # The MLflow run: the whole variant, per-epoch history, metrics, artifacts, lineage tags.
    client = MlflowClient(default_tracking_uri(settings))
    run = client.get_run(trained["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    # A link the UI opens: the run's page in the MLflow UI, not a file path.
    assert trained["mlflow_run"] == (
        f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    assert run.data.params["learning_rate"] == "0.0005"
    assert run.data.params["features"] == "B2,B3,B4,B5" or "B2" in run.data.params["features"]
    assert run.data.params["epochs"] == "2"
    assert run.data.tags["dagster.partition"] == "baseline"
    assert run.data.tags["dagster.run_id"] == result.run_id
    history = client.get_metric_history(run.info.run_id, "epoch_val_loss")
    assert [m.step for m in history] == [0, 1]
    assert {"val_accuracy", "val_macro_f1", "val_precision_0", "val_recall_3"} <= set(
        run.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "shards.json", "calibration.json",
            "reliability_diagram.png"} <= artifacts  # fmt: skip
    calibration = json.loads(
        Path(client.download_artifacts(run.info.run_id, "calibration.json")).read_text()
    )
    assert calibration["temperature"] == pytest.approx(trained["temperature"])
    assert sum(calibration["reliability"]["counts"]) == trained["val_records"]
    assert run.data.metrics["val_ece_calibrated"] == pytest.approx(trained["val_ece_calibrated"])
    shards = json.loads(Path(client.download_artifacts(run.info.run_id, "shards.json")).read_text())
    assert shards["train"] == ["train/part-r-00000", "train/part-r-00001", "train/part-r-00002"]
    assert shards["val"] == ["val/part-r-00000"]

    # The registry: version 1 is challenger and, through the gate, champion.
    registered = materialization(result, "registered_model")
    assert registered["version"] == "1" and registered["promoted"] is True
    assert gate(result).passed
    assert gate(result).metadata["champion"] == dg.MetadataValue.text("none")  # there was none
    t = tracking(settings)
    assert t.alias_version("baseline", "challenger") == "1"
    assert t.alias_version("baseline", "champion") == "1"
    # The registry's version page says what it is and what the gate decided.
    version = client.get_model_version("droughtwatch-baseline", "1")
    assert version.description.startswith("baseline, 2 epochs on corpus ")
    assert "promoted to champion (promoted: macro_f1" in version.description
    assert version.tags["gate"] == "promoted" and version.tags["epochs"] == "2"
    assert version.tags["val_macro_f1"] == f"{trained['val_macro_f1']:.4f}"
    assert version.tags["corpus_fingerprint"] == corpus_meta["fingerprint"]
    assert version.tags["dagster_run_id"] == result.run_id
    # Its ONNX export, stored at registration, carries the fitted temperature, not 1.
    from droughtwatch_assets.core.portable import OnnxModel

    assert trained["temperature"] != pytest.approx(1.0)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = t.download_onnx("baseline", "1", Path(tmp))
        assert OnnxModel(onnx_path).temperature == pytest.approx(trained["temperature"])
    # The decision is in the metrics database with its numbers and reason.
    engine = metricsdb.connect(metricsdb.database_url(settings))
    [row] = metricsdb.promotion_history(engine, "droughtwatch-baseline")
    assert row["promoted"] and row["challenger_version"] == "1"
    assert row["champion_version"] is None and row["dagster_run_id"] == result.run_id


def test_serving_metadata_links_the_registry_only_when_it_has_a_page():
    from droughtwatch_assets.defs.registry.assets import serving_metadata

    assert serving_metadata("droughtwatch-baseline", "baseline", "3", None) == {
        "model_name": "droughtwatch-baseline", "variant": "baseline", "version": "3",
    }  # fmt: skip
    linked = serving_metadata("droughtwatch-baseline", "baseline", "3", "http://h/#/models/x")
    assert linked["registry"] == dg.MetadataValue.url("http://h/#/models/x")


def test_untrained_dummy_is_refused(settings, instance, corpus):
    result = train(settings, instance, "dummy")
    assert not result.success  # the blocking gate fails the step
    evaluation = gate(result)
    assert not evaluation.passed
    assert "margin" in (evaluation.description or "")
    t = tracking(settings)
    assert t.alias_version("dummy", "challenger") == "1"
    assert t.alias_version("dummy", "champion") is None
    engine = metricsdb.connect(metricsdb.database_url(settings))
    [row] = metricsdb.promotion_history(engine, "droughtwatch-dummy")
    assert not row["promoted"] and "margin" in row["reason"]


def test_worse_challenger_is_refused_and_champion_stays(settings, instance, corpus):
    # An untrained baseline (0 epochs) against the champion of the first test.
    result = train(settings, instance, "baseline", epochs=0)
    assert not result.success
    evaluation = gate(result)
    assert not evaluation.passed
    champion_score = evaluation.metadata["champion"].value  # the champion's own, re-measured
    assert (
        isinstance(champion_score, float)
        and champion_score > evaluation.metadata["challenger"].value
    )
    t = tracking(settings)
    assert t.alias_version("baseline", "challenger") == "2"
    assert t.alias_version("baseline", "champion") == "1"
    refused = MlflowClient(default_tracking_uri(settings)).get_model_version(
        "droughtwatch-baseline", "2"
    )
    assert refused.tags["gate"] == "refused" and ": refused (" in refused.description
    engine = metricsdb.connect(metricsdb.database_url(settings))
    newest = metricsdb.promotion_history(engine, "droughtwatch-baseline")[0]
    assert newest["challenger_version"] == "2" and not newest["promoted"]
    assert newest["champion_version"] == "1"


def test_schedule_skips_when_no_labelled_shard_changed(settings, instance, corpus):
    defs = build_definitions(settings)
    baseline_daily = defs.get_schedule_def("baseline_daily")
    context = dg.build_schedule_context(
        instance=instance, resources={"storage": defs.resources["storage"]}
    )
    # baseline was trained on exactly this corpus (its last training recorded the fingerprint)
    skipped = baseline_daily(context)
    assert isinstance(skipped, dg.SkipReason) and "no labelled shard changed" in str(
        skipped.skip_message
    )
    # A new labelled shard: the schedule asks for a run keyed by the new fingerprint.
    store = open_store(settings.data_root)
    [extra] = list(iter_benchmark_shards(train_records=100, val_records=0, seed=99))
    store.write_bytes("train/part-r-00099", extra.data)
    assert ingest(settings, instance, "train/part-r-00099").success
    request = baseline_daily(context)
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "baseline" and request.run_key.startswith("baseline@")


def test_models_command_lists_versions_aliases_and_decisions(settings, corpus, capsys, monkeypatch):
    from droughtwatch_assets.cli import main

    monkeypatch.setenv("DROUGHTWATCH_HOME", str(settings.home))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "compact_resnet" in out  # the variants
    assert "droughtwatch-baseline" in out and "v1" in out and "champion" in out
    assert "challenger" in out  # v2 of baseline holds it after the refused retrain
    assert "refused" in out and "promoted" in out  # the decision history


KILLED_TRAINING = """
import sys
import dagster as dg
from droughtwatch_assets.definitions import build_definitions
from droughtwatch_assets.settings import Settings

from pathlib import Path

home = Path(sys.argv[1])
settings = Settings(home, str(home / "data"), str(home / "lake"), None)
job = build_definitions(settings).resolve_job_def("training_job")
with dg.instance_for_test() as instance:
    job.execute_in_process(
        partition_key="useful", instance=instance,
        run_config={"ops": {"trained_model": {"config": {"epochs": 6}}}},
    )
"""


def test_a_killed_training_resumes_where_it_stopped_in_the_same_mlflow_run(
    settings, instance, corpus, home
):
    """kill -9 after the second epoch's checkpoint; the next training of the same variant and
    corpus starts at that epoch, continues the same MLflow run (every epoch's metrics present
    live, step by step) and ends it FINISHED; the checkpoint is then removed."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", KILLED_TRAINING, str(home)])
    checkpoints = home / "checkpoints"
    deadline, epoch = time.monotonic() + 300, 0
    try:
        while epoch < 2:
            assert proc.poll() is None, "the training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of epoch 2 within 300 s"
            for meta in checkpoints.glob("useful-*/training_metadata.json"):
                with contextlib.suppress(ValueError, OSError):  # being written
                    epoch = json.loads(meta.read_text())["epoch"]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [folder] = checkpoints.glob("useful-*")
    killed_run = (folder / "mlflow_run_id").read_text()
    client = MlflowClient(default_tracking_uri(settings))
    assert client.get_run(killed_run).info.status == "RUNNING"  # kill -9: nobody could end it
    logged = {m.step for m in client.get_metric_history(killed_run, "epoch_loss")}
    assert logged >= {0, 1}  # live, while it trained

    result = train(settings, instance, "useful", epochs=6)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    trained = materialization(result, "trained_model")
    assert trained["mlflow_run_id"] == killed_run
    assert trained["resumed_from_epoch"] >= 2 and trained["epochs_done"] == 6
    run = client.get_run(killed_run)
    assert run.info.status == "FINISHED" and run.data.tags["droughtwatch.attempts"] == "2"
    steps = [m.step for m in client.get_metric_history(killed_run, "epoch_val_loss")]
    assert set(steps) == set(range(6))
    assert not folder.exists()
    logs = [e.message for e in result.all_events if e.event_type_value == "LOGS_CAPTURED"] + [
        r.user_message for r in instance.all_logs(result.run_id) if r.user_message
    ]
    assert any("resumed from the checkpoint of epoch" in m for m in logs)
    assert any("useful epoch 6/6" in m for m in logs)


def test_early_stopping_keeps_the_best_epoch(settings, corpus):
    """A patience of 1 on a long training stops it once validation loss stalls."""
    import dataclasses

    from droughtwatch_assets.core.training import train_variant
    from droughtwatch_assets.core.variants import get_variant
    from droughtwatch_assets.pipeline.corpus import corpus_manifest, shard_sources

    variant = dataclasses.replace(get_variant("baseline"), epochs=25, early_stopping_patience=1)
    lake = open_store(settings.lake)
    manifest = corpus_manifest(lake)
    seen: list[int] = []
    result = train_variant(
        variant,
        shard_sources(lake, manifest.train, variant),
        shard_sources(lake, manifest.val, variant),
        on_epoch=lambda epoch, logs: seen.append(epoch),
    )
    assert result.stopped_early and result.epochs_done < 25
    assert seen == list(range(result.epochs_done)) == list(range(len(result.history["loss"])))
    val_loss = result.history["val_loss"]
    # Stopped one epoch after the best (patience 1): the last epoch did not improve on it.
    assert val_loss[-1] >= min(val_loss[:-1])


def test_every_path_ends_its_mlflow_run(settings, instance, corpus):
    """The paths where dagster-mlflow's run would stay RUNNING (README, "MLflow"): assets
    materialized without a job's end-of-run hook (the UI's Materialize, `dagster asset
    materialize`, `dg launch`, automation all run an implicit asset job), and a second Dagster run
    in the same process. Here each Dagster run gets its own MLflow run, FINISHED when the step
    ends; a failing step leaves it FAILED."""
    defs = build_definitions(settings)
    assets = [defs.resolve_assets_def(name) for name in ("training_corpus", "trained_model")]
    client = MlflowClient(default_tracking_uri(settings))
    run_ids = []
    for _ in range(2):  # twice in this process
        result = dg.materialize(
            assets, instance=instance, partition_key="nd",
            run_config={"ops": {"trained_model": {"config": {"epochs": 1}}}},
        )  # fmt: skip
        assert result.success
        run_ids.append(materialization(result, "trained_model")["mlflow_run_id"])
    assert run_ids[0] != run_ids[1]
    assert [client.get_run(r).info.status for r in run_ids] == ["FINISHED", "FINISHED"]

    # A training that fails inside its MLflow run (max_records=0 reads nothing to validate on).
    failed = dg.materialize(
        assets, instance=instance, partition_key="nd", raise_on_error=False,
        run_config={"ops": {"trained_model": {"config": {"epochs": 1, "max_records": 0}}}},
    )  # fmt: skip
    assert not failed.success
    experiment = client.get_experiment_by_name("droughtwatch")
    statuses = {r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert "RUNNING" not in statuses


SCORE_WITHOUT_TENSORFLOW = """
import sys
from droughtwatch_assets import runs
from droughtwatch_assets.settings import Settings

runs.prepare_dagster_home()
settings = Settings.from_env()
drop, val = "drops/2026-12-01/part-r-00000", "val/part-r-00000"
runs.instance().add_dynamic_partitions("shards", [drop, val])
for job, key in (("drop_job", drop), ("rescore_job", val)):
    [outcome] = runs.run_batches(job, [key], settings=settings, parallel=1)
    assert outcome.ok, outcome
    print(job, outcome.metadata["batch_predictions.model_format"])
print(sorted(m for m in ("tensorflow", "keras", "tf2onnx", "onnx") if m in sys.modules))
[outcome] = runs.run_batches(
    "rescore_job", [val], settings=settings, parallel=1,
    run_config={"ops": {"process_shards": {"config": {"model_format": "keras"}}}},
)
print("keras scoring:", outcome.ok, outcome.error.replace("\\n", " "))
"""


def test_registration_exports_onnx_and_scoring_needs_no_tensorflow(settings, corpus, home):
    """Every registered version gets model.onnx (its temperature inside, checked against Keras
    at registration). A drop run and a rescore run, in a fresh process as run workers of an image
    built with TF=none (every module only the cpu extra brings fails to import, as it would
    there), ingest and score from that export; scoring with Keras there fails, saying why."""
    import os
    import subprocess
    import sys
    import tempfile

    from droughtwatch_assets.core.portable import OnnxModel
    from droughtwatch_tests.worker_image import blocked_modules, blocker, tensorflow_side

    track = tracking(settings)
    version = track.alias_version("baseline", "champion")
    assert version is not None  # trained by the first test of this module
    with tempfile.TemporaryDirectory() as tmp:
        path = track.download_onnx("baseline", version, Path(tmp))
        assert path is not None and path.name == "model.onnx"
        assert OnnxModel(path).temperature == pytest.approx(track.temperature("baseline", version))
    tags = track.client.get_model_version("droughtwatch-baseline", version).tags
    assert float(tags["onnx_max_abs_diff"]) <= 1e-4

    store = open_store(settings.data_root)
    store.write_bytes("drops/2026-12-01/part-r-00000", store.read_bytes("val/part-r-00000"))
    blocked = blocked_modules(tensorflow_side())
    assert {"tensorflow", "keras", "onnx", "tf2onnx"} <= set(blocked)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME",)}
    env["DROUGHTWATCH_HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-c", blocker(blocked) + SCORE_WITHOUT_TENSORFLOW],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-4:]
    assert lines[:3] == ["drop_job onnx", "rescore_job onnx", "[]"], out.stdout[-2000:]
    assert lines[3].startswith("keras scoring: False"), lines[3]
    assert "is not installed in this environment" in lines[3]
    assert "--build-arg TF=cpu" in lines[3]
