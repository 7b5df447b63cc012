"""Tracking against a real MLflow SQLite store (no server): runs, artifacts, registry, aliases."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import mlflow
import numpy as np
import pytest
import yaml

from droughtwatch_assets.adapters import tracking as tr
from droughtwatch_assets.settings import Settings

# MLflow 3 sends usage telemetry from a background thread; nothing here may reach the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One SQLite store per module: creating one runs MLflow's migrations (~2 s)."""
    home = tmp_path_factory.mktemp("mlflow")
    yield f"sqlite:///{home}/mlflow.db", (home / "artifacts").as_uri()


@pytest.fixture(scope="module")
def tracking(store: tuple[str, str]) -> tr.Tracking:
    return tr.Tracking(*store)


def test_default_uris(tmp_path: Path):
    env = {"DROUGHTWATCH_HOME": str(tmp_path)}
    settings = Settings.from_env(env)
    assert tr.default_tracking_uri(settings) == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert (tmp_path / "mlflow").is_dir()
    assert tr.default_artifact_root(settings) == (tmp_path / "mlflow" / "artifacts").as_uri()

    env["MLFLOW_TRACKING_URI"] = "http://mlflow.internal:5000"
    settings = Settings.from_env(env)
    assert tr.default_tracking_uri(settings) == "http://mlflow.internal:5000"
    assert tr.default_artifact_root(settings) is None  # the server decides
    env["DROUGHTWATCH_MLFLOW_ARTIFACTS"] = "s3://models/mlflow"
    assert tr.default_artifact_root(Settings.from_env(env)) == "s3://models/mlflow"


def test_links_to_runs_open_the_ui_and_never_carry_credentials(tmp_path: Path):
    env = {"DROUGHTWATCH_HOME": str(tmp_path)}
    # The embedded store: the UI `make mlflow-ui` and `make dev` serve.
    assert tr.default_ui_url(Settings.from_env(env)) == "http://127.0.0.1:5000"
    env["MLFLOW_TRACKING_URI"] = "https://bob:s3cr3t@mlflow.internal:5000/"
    assert tr.default_ui_url(Settings.from_env(env)) == "https://mlflow.internal:5000/"
    env["DROUGHTWATCH_MLFLOW_UI_URL"] = "https://mlflow.example.org"
    assert tr.default_ui_url(Settings.from_env(env)) == "https://mlflow.example.org"
    assert tr.without_credentials("http://a:b@h:1/p?q=1") == "http://h:1/p?q=1"
    assert tr.without_credentials("http://h:1/p") == "http://h:1/p"
    assert tr.model_name("ndvi") == "droughtwatch-ndvi"


def test_run_records_everything_and_ends_finished(tracking: tr.Tracking):
    client = tracking.client
    with tracking.run(run_name="baseline-train", tags={"dagster_run_id": "d-1"}) as run:
        run.log_params(
            {
                "variant": {"name": "baseline", "bands": ["B2", "B3"], "epochs": 2},
                "shards": ["train/part-r-00000", "train/part-r-00001"],
            }
        )
        run.log_history({"loss": [1.2, 0.9, 0.7], "val_accuracy": [0.5, 0.6, 0.65]})
        run.log_metrics({"accuracy": np.float32(0.66), "macro_f1": 0.41, "recall_3": 0.2})
        run.log_figure_confusion([[50, 3, 2, 1], [4, 10, 1, 0], [2, 2, 9, 1], [1, 0, 2, 5]])
        run.log_dict({"shards": ["train/part-r-00000"], "count": np.int64(81)}, "shards.json")
        assert client.get_run(run.run_id).info.status == "RUNNING"
        assert run.url.startswith("file://") and run.run_id in run.url

    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "baseline-train"
    assert got.data.tags["dagster_run_id"] == "d-1"
    assert got.data.params["variant.name"] == "baseline"
    assert json.loads(got.data.params["variant.bands"]) == ["B2", "B3"]
    assert got.data.params["variant.epochs"] == "2"
    assert json.loads(got.data.params["shards"])[1] == "train/part-r-00001"
    assert got.data.metrics["accuracy"] == pytest.approx(0.66)
    assert got.data.metrics["macro_f1"] == pytest.approx(0.41)
    assert "loss" not in got.data.metrics  # history is prefixed, never mixed with the finals
    history = client.get_metric_history(run.run_id, "epoch_val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.5),
        (1, 0.6),
        (2, 0.65),
    ]
    assert len(client.get_metric_history(run.run_id, "epoch_loss")) == 3

    png = Path(client.download_artifacts(run.run_id, "confusion_matrix.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    shards = json.loads(Path(client.download_artifacts(run.run_id, "shards.json")).read_text())
    assert shards == {"shards": ["train/part-r-00000"], "count": 81}


def test_exception_ends_the_run_failed_and_is_reraised(tracking: tr.Tracking):
    with (
        pytest.raises(RuntimeError, match="out of memory"),
        tracking.run(run_name="doomed", tags={}) as run,
    ):
        run.log_metrics({"accuracy": 0.1})
        raise RuntimeError("out of memory")
    assert tracking.client.get_run(run.run_id).info.status == "FAILED"


def test_runs_in_sequence_are_distinct_and_closed(tracking: tr.Tracking, store):
    with tracking.run(run_name="first", tags={}) as first:
        first.log_metrics({"accuracy": 0.5})
    # A second Tracking object on the same store in the same process.
    other = tr.Tracking(*store)
    assert other.experiment_id == tracking.experiment_id
    with other.run(run_name="second", tags={}) as second:
        pass
    assert first.run_id != second.run_id
    statuses = {tracking.client.get_run(r).info.status for r in (first.run_id, second.run_id)}
    assert statuses == {"FINISHED"}
    assert "accuracy" not in tracking.client.get_run(second.run_id).data.metrics


def test_bad_inputs_give_clear_errors(tracking: tr.Tracking):
    with tracking.run(run_name="bad", tags={}) as run:
        with pytest.raises(ValueError, match="metric 'accuracy' is not a number"):
            run.log_metrics({"accuracy": "high"})
        with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(4, 4\)"):
            run.log_figure_confusion([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="exactly one of alias and version"):
        tracking.model_uri("baseline")


def test_alias_lookup_on_unknown_model_is_none(tracking: tr.Tracking):
    assert tracking.alias_version("never-trained", "champion") is None


def _tiny_keras_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(23)
    return keras.Sequential(
        [
            keras.Input((65, 65, 4)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )


def _train_and_log(tracking: tr.Tracking, variant: str, model, x, metrics) -> tuple[str, str]:
    with tracking.run(run_name=f"{variant}-train", tags={"variant": variant}) as run:
        run.log_metrics(metrics)
        uri = run.log_keras_model(model, input_example=x)
    return uri, run.run_id


def test_keras_model_register_alias_load_and_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store
):
    # Run from an empty folder: MLflow must not fall back to ./mlflow.db or ./mlruns.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tr.TRACKING_ENV, raising=False)
    tracking = tr.Tracking(*store)
    global_uri_before = mlflow.get_tracking_uri()

    model = _tiny_keras_model()
    x = np.random.default_rng(0).random((3, 65, 65, 4), dtype=np.float32)
    uri, run_id = _train_and_log(tracking, "tiny", model, x, {"accuracy": 0.7, "macro_f1": 0.5})
    assert uri.startswith("models:/m-")
    assert tracking.register(uri, "tiny", run_id=run_id, tags={"dagster_run_id": "d-9"}) == "1"
    assert tracking.alias_version("tiny", "challenger") is None
    tracking.set_alias("tiny", "challenger", "1")
    assert tracking.alias_version("tiny", "challenger") == "1"
    tracking.set_alias("tiny", "champion", "1")
    assert tracking.version_metrics("tiny", "1") == {"accuracy": 0.7, "macro_f1": 0.5}
    assert tracking.version_run_id("tiny", "1") == run_id

    # Validation metrics under val_* names win over plain ones in the listing.
    uri2, run_id2 = _train_and_log(
        tracking, "tiny", model, x, {"accuracy": 0.9, "val_accuracy": 0.6, "val_macro_f1": 0.4}
    )
    assert tracking.register(uri2, "tiny", run_id=run_id2) == "2"
    tracking.set_alias("tiny", "challenger", "2")
    assert tracking.alias_version("tiny", "challenger") == "2"
    assert tracking.alias_version("tiny", "champion") == "1"

    loaded = tracking.load_model("tiny", alias="champion")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert tracking.load_model("tiny", version="2").output_shape == (None, 4)

    # The model carries a tensor signature and one input example.
    (mlmodel,) = [
        p
        for p in Path(store[1].removeprefix("file://")).rglob("MLmodel")
        if run_id in p.read_text()
    ]
    spec = yaml.safe_load(mlmodel.read_text())
    assert "keras" in spec["flavors"]
    inputs = json.loads(spec["signature"]["inputs"])
    assert inputs[0]["tensor-spec"]["shape"] == [-1, 65, 65, 4]
    example = json.loads((mlmodel.parent / "input_example.json").read_text())
    assert np.asarray(example).shape == (1, 65, 65, 4)

    (listed,) = [m for m in tracking.list_models() if m["variant"] == "tiny"]
    assert listed["name"] == "droughtwatch-tiny"
    assert [
        (v["version"], v["aliases"], v["run_id"], v["accuracy"], v["macro_f1"])
        for v in listed["versions"]
    ] == [("1", ["champion"], run_id, 0.7, 0.5), ("2", ["challenger"], run_id2, 0.6, 0.4)]
    assert all(isinstance(v["created"], int) for v in listed["versions"])

    # The process-wide MLflow state is as we found it, and nothing landed in the cwd.
    assert mlflow.get_tracking_uri() == global_uri_before
    assert tr.TRACKING_ENV not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_artifacts_on_s3(
    store, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, s3_bucket: str
):
    # MLflow's S3 client reads MLFLOW_S3_ENDPOINT_URL (or boto3's AWS_ENDPOINT_URL_S3).
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_endpoint)
    tracking = tr.Tracking(
        store[0], artifact_root=f"s3://{s3_bucket}/mlflow", experiment=f"s3-{s3_bucket}"
    )
    with tracking.run(run_name="s3", tags={}) as run:
        run.log_dict({"ok": True}, "shards.json")
    assert run.url == f"s3://{s3_bucket}/mlflow/{run.run_id}/artifacts"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    body = s3.get_object(Bucket=s3_bucket, Key=f"mlflow/{run.run_id}/artifacts/shards.json")
    assert json.loads(body["Body"].read()) == {"ok": True}


def test_run_url_on_a_tracking_server(tracking: tr.Tracking):
    server = tr.Tracking.__new__(tr.Tracking)
    server.tracking_uri, server.experiment_id = "http://bob:pw@mlflow.internal:5000/", "7"
    server.ui_url = None
    assert server.run_url("abc") == "http://mlflow.internal:5000/#/experiments/7/runs/abc"
    server.ui_url = "https://mlflow.example.org"
    assert server.run_url("abc") == "https://mlflow.example.org/#/experiments/7/runs/abc"


def test_the_ui_opens_on_droughtwatchs_training_runs_with_no_stray_experiment(tmp_path: Path):
    """The experiment says it trains models (MLflow 3's UI otherwise shows GenAI pages), the
    link to it picks the model-training view, and the embedded store's empty Default
    experiment (artifacts in ./mlruns of whichever folder opened the store) is retired."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = tr.Tracking(uri, (tmp_path / "artifacts").as_uri(), ui_url="http://127.0.0.1:5000")
    client = tracking.client
    experiment = client.get_experiment(tracking.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracking.experiment_url() == (
        f"http://127.0.0.1:5000/#/experiments/{tracking.experiment_id}/runs"
        "?workflowType=machine_learning"
    )
    active = [e.name for e in client.search_experiments()]
    assert active == ["droughtwatch"]
    assert client.get_experiment("0").lifecycle_stage == "deleted"
    # Opening the store again changes nothing; an untagged experiment gets the tag.
    client.delete_experiment_tag(tracking.experiment_id, "mlflow.experimentKind")
    again = tr.Tracking(uri, (tmp_path / "artifacts").as_uri())
    assert again.experiment_id == tracking.experiment_id
    tags = client.get_experiment(again.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert again.experiment_url() is None  # no UI address known for a SQLite store
    assert not (Path.cwd() / "mlruns").exists()
