"""MLflow tracking and model registry for droughtwatch trainings: a thin wrapper over MlflowClient.

Plain Python (no Dagster): the Dagster resource wraps :class:`Tracking`. Embedded default: a
SQLite store and a local artifact folder under DROUGHTWATCH_HOME; ``MLFLOW_TRACKING_URI`` and
``DROUGHTWATCH_MLFLOW_ARTIFACTS`` point it at a tracking server and an S3 bucket instead.

Why not dagster-mlflow: its legacy ``@resource`` starts one MLflow run per Dagster run and
ends it in an end-of-run hook. When a job materializes only some of its assets that hook
leaves the MLflow run RUNNING, and a later Dagster run in the same process picks the open run
up again and logs into it (seen with Dagster 1.13 and dagster-mlflow 0.29). Here every
training opens its own run explicitly and closes it FINISHED or FAILED, whatever happens.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import tempfile
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from droughtwatch_assets.core.frameworks import quiet_import

if TYPE_CHECKING:
    from mlflow.entities import Metric

EXPERIMENT = "droughtwatch"
# MLflow 3's UI shows an experiment as a GenAI one (traces, judges) unless told it trains models.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# ... and opens on its GenAI pages unless the link chooses the model-training view.
ML_VIEW = "workflowType=machine_learning"
MODEL_PREFIX = "droughtwatch-"
# Per-epoch Keras history is logged as epoch_<key> (epoch_loss, epoch_val_accuracy, ...): Keras
# names its per-epoch validation metrics val_accuracy, the same names as the final validation
# metrics a training logs once, and MLflow would mix the two series under one key.
HISTORY_PREFIX = "epoch_"
CALIBRATION = "calibration.json"  # a trained model's temperature, ECE and reliability bins
ONNX_ARTIFACT = "model.onnx"  # the registered model as ONNX, with its temperature inside
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own, which its URI setters write
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
MODEL_ARTIFACT_NAME = "model"

_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
# MLflow's fluent layer (log_model, load_model, and the registry's resolution of models:/ URIs)
# reads one process-wide tracking URI; Tracking objects on different URIs take turns.
_GLOBAL_URI_LOCK = threading.RLock()


class _Settings(Protocol):  # droughtwatch_assets.settings.Settings, or anything shaped like it
    home: Path
    mlflow_tracking_uri: str | None
    mlflow_artifact_root: str | None
    mlflow_ui_url: str | None


EMBEDDED_UI_URL = "http://127.0.0.1:5000"  # `make mlflow-ui` and `make dev` serve it there


def without_credentials(url: str) -> str:
    """`url` without a user or password (http://user:secret@host -> http://host)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def default_ui_url(settings: _Settings) -> str:
    """Where a browser opens MLflow: ``DROUGHTWATCH_MLFLOW_UI_URL``; else the tracking server
    (without credentials); else the embedded store's UI on this machine."""
    if settings.mlflow_ui_url:
        return settings.mlflow_ui_url
    uri = settings.mlflow_tracking_uri or ""
    if uri.startswith(("http://", "https://")):
        return without_credentials(uri)
    return EMBEDDED_UI_URL


def default_tracking_uri(settings: _Settings) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else SQLite at ``$DROUGHTWATCH_HOME/mlflow/mlflow.db``."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    folder = settings.home / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def default_artifact_root(settings: _Settings) -> str | None:
    """Where new experiments keep artifacts.

    ``DROUGHTWATCH_MLFLOW_ARTIFACTS`` (e.g. ``s3://bucket/mlflow``) when set; else None for a
    remote http(s) tracking server (the server's own default, e.g. its proxied artifact store);
    else the local folder ``$DROUGHTWATCH_HOME/mlflow/artifacts``.
    """
    if settings.mlflow_artifact_root:
        return settings.mlflow_artifact_root
    if (settings.mlflow_tracking_uri or "").startswith(("http://", "https://")):
        return None
    return (settings.home / "mlflow" / "artifacts").as_uri()


def model_name(variant: str) -> str:
    """The registered model name of a variant."""
    return f"{MODEL_PREFIX}{variant}"


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings become dotted keys; lists and other values become JSON or str."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=_json_default)
    return flat


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON: {value!r}")


def _metric_value(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metric {key!r} is not a number: {value!r}") from e


# Chatter, not news: store creation and schema migration (INFO), and "Failed to resolve
# installed pip version" (WARNING) in environments made by uv, which have no pip.
_NOISY = {
    "mlflow.store.db.utils": logging.WARNING,
    "alembic": logging.WARNING,
    "mlflow.utils.environment": logging.ERROR,
}


@contextmanager
def _quiet() -> Iterator[None]:
    loggers = {logging.getLogger(name): level for name, level in _NOISY.items()}
    saved = {lg: lg.level for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, level in saved.items():
            lg.setLevel(level)


def _pip_requirements() -> list[str]:
    """Pinned requirements for the logged model; passing them skips MLflow's inference, which
    re-imports the model in a subprocess (seconds of TensorFlow start-up per log)."""
    requirements = []
    for dist in ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy"):
        try:
            requirements.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return requirements


def _headline(metrics: Mapping[str, float], key: str) -> float | None:
    """A validation metric of a run: ``val_<key>`` when logged, else plain ``<key>``."""
    return metrics.get(f"val_{key}", metrics.get(key))


class ActiveRun:
    """One open MLflow run: what a training logs. Ended by :meth:`Tracking.run`, never here."""

    def __init__(self, tracking: Tracking, run_id: str, experiment_id: str):
        self._tracking = tracking
        self._client = tracking.client
        self.run_id = run_id
        self.experiment_id = experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; nested mappings are flattened to dotted keys (``variant.bands``)."""
        from mlflow.entities import Param

        entries = [Param(k, v) for k, v in _flatten(params).items()]
        for i in range(0, len(entries), _BATCH):
            self._client.log_batch(self.run_id, params=entries[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metrics (at ``step`` when given, else step 0)."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        entries = [Metric(k, _metric_value(k, v), now, step or 0) for k, v in metrics.items()]
        self._log_metric_entries(entries)

    def log_history(self, history: Mapping[str, Sequence[float]]) -> None:
        """Keras ``History.history``: each key as ``epoch_<key>``, one value per epoch (step)."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        entries = [
            Metric(f"{HISTORY_PREFIX}{key}", _metric_value(key, value), now, epoch)
            for key, values in history.items()
            for epoch, value in enumerate(values)
        ]
        self._log_metric_entries(entries)

    def _log_metric_entries(self, entries: list[Metric]) -> None:
        for i in range(0, len(entries), 1000):  # MLflow's limit per log_batch call
            self._client.log_batch(self.run_id, metrics=entries[i : i + 1000])

    def log_figure_confusion(
        self,
        confusion: Sequence[Sequence[int]],
        labels: Sequence[str] = ("0", "1", "2", "3"),
        name: str = "confusion_matrix.png",
    ) -> None:
        """A confusion matrix (rows: true class, columns: predicted class) as a PNG artifact."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        matrix = np.asarray(confusion)
        n = len(labels)
        if matrix.shape != (n, n):
            raise ValueError(f"confusion matrix has shape {matrix.shape}, expected ({n}, {n})")
        # Figure without pyplot: no global figure registry, no GUI backend, safe in workers.
        fig = Figure(figsize=(4.5, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax)
        ax.set_xticks(range(n), labels)
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion matrix")
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            colour = "white" if count > threshold else "black"
            ax.text(j, i, f"{count}", ha="center", va="center", color=colour)
        fig.tight_layout()
        self._client.log_figure(self.run_id, fig, name)

    def log_figure_reliability(
        self, calibration: Mapping[str, Any], name: str = "reliability_diagram.png"
    ) -> None:
        """The reliability diagram of ``calibration.json``'s bins: accuracy against confidence
        per bin, before and after temperature scaling, with the diagonal of perfect
        calibration."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
        for key, label, marker in (
            ("reliability", f"model (ECE {calibration['ece']:.3f})", "o"),
            ("reliability_calibrated",
             f"T = {calibration['temperature']:.2f} (ECE {calibration['ece_calibrated']:.3f})",
             "s"),
        ):  # fmt: skip
            bins = calibration[key]
            points = [(c, a) for c, a, n in zip(bins["confidence"], bins["accuracy"],
                                                bins["counts"], strict=True) if n]  # fmt: skip
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=marker, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title("reliability on the validation shards")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        self._client.log_figure(self.run_id, fig, name)

    def log_dict(self, obj: Any, name: str) -> None:
        """A JSON artifact (numpy scalars and arrays are converted)."""
        text = json.dumps(obj, indent=2, default=_json_default)
        self._client.log_text(self.run_id, text, name)

    def log_keras_model(self, model: Any, *, input_example: np.ndarray) -> str:
        """Log a Keras model with a signature and one input example; returns its model URI.

        The URI looks like ``models:/m-<hex>`` (an MLflow 3 LoggedModel linked to this run);
        pass it to :meth:`Tracking.register`. Only the first row of ``input_example`` is stored
        (one 65 x 65 x 4 float image is already ~0.3 MB of JSON).
        """
        keras = quiet_import("keras")

        # MLflow checks the example with model.predict: no progress bar in logs and terminals.
        keras.utils.disable_interactive_logging()
        return self._tracking._log_keras_model(self, model, input_example)

    @property
    def url(self) -> str:
        """A link to the run: the UI page on a tracking server, else the run's artifact URI."""
        return self._tracking.run_url(self.run_id)


class Tracking:
    """Runs, models and the registry of one MLflow tracking store."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | None = None,
        experiment: str = EXPERIMENT,
        ui_url: str | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self.experiment = experiment
        self.ui_url = ui_url
        from mlflow import MlflowClient  # here, not at import: ingest runs never load MLflow

        with _quiet():
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self.experiment_id = self._ensure_experiment()

    def _ensure_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            for key, value in EXPERIMENT_KIND.items():
                if found.tags.get(key) != value:
                    self.client.set_experiment_tag(found.experiment_id, key, value)
            return found.experiment_id
        self._retire_default_experiment()
        try:
            return self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_root, tags=EXPERIMENT_KIND
            )
        except MlflowException as e:
            # Another process created it between our lookup and our create.
            if e.error_code != "RESOURCE_ALREADY_EXISTS" and e.get_http_status_code() != 409:
                raise
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _retire_default_experiment(self) -> None:
        """On the embedded SQLite store, delete (softly) MLflow's own ``Default`` experiment
        while it is empty: it would be listed beside droughtwatch's and keeps its artifacts in
        ``./mlruns`` of whatever folder first opened the store. A tracking server's is left."""
        from mlflow.exceptions import MlflowException

        if not self.tracking_uri.startswith("sqlite:"):
            return
        try:
            default = self.client.get_experiment("0")
            empty = not self.client.search_runs(["0"], max_results=1, run_view_type=3)
            if default.lifecycle_stage == "active" and empty:
                self.client.delete_experiment("0")
        except MlflowException:
            pass  # no Default experiment: nothing to retire

    def _ui_base(self) -> str | None:
        """The MLflow UI's address: the one given, else a tracking server's (without
        credentials); None for a store with no UI address known."""
        if self.ui_url is not None:
            return self.ui_url.rstrip("/")
        if self.tracking_uri.startswith(("http://", "https://")):
            return without_credentials(self.tracking_uri).rstrip("/")
        return None

    def experiment_url(self) -> str | None:
        """The experiment's training runs in the MLflow UI (model-training view), when there is
        a UI address."""
        base = self._ui_base()
        if base is None:
            return None
        return f"{base}/#/experiments/{self.experiment_id}/runs?{ML_VIEW}"

    @contextmanager
    def _global_uri(self) -> Iterator[None]:
        """Point MLflow's process-wide tracking and registry URI here for one call."""
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        with _GLOBAL_URI_LOCK, _quiet():
            saved_env = {k: os.environ.get(k) for k in (TRACKING_ENV, REGISTRY_ENV)}
            saved_tracking = tracking_utils._tracking_uri
            saved_registry = registry_utils._registry_uri
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(saved_tracking)
                registry_utils._registry_uri = saved_registry
                # The setters also write (or unset) the environment variables: put them back.
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    @contextmanager
    def run(
        self, *, run_name: str, tags: Mapping[str, str], resume: str | None = None
    ) -> Iterator[ActiveRun]:
        """Open a new MLflow run, or `resume` an unfinished one of this experiment (a training
        that was killed: it continues in the same run); it ends FINISHED on success, FAILED on
        an exception (re-raised), KILLED on an interrupt. A finished run is never reused."""
        active = self._resumable(resume, tags) if resume else None
        if active is None:
            created = self.client.create_run(
                self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
            )
            active = ActiveRun(self, created.info.run_id, self.experiment_id)
        try:
            yield active
        except Exception:
            self.client.set_terminated(active.run_id, "FAILED")
            raise
        except BaseException:
            self.client.set_terminated(active.run_id, "KILLED")
            raise
        self.client.set_terminated(active.run_id, "FINISHED")

    def _resumable(self, run_id: str, tags: Mapping[str, str]) -> ActiveRun | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.experiment_id != self.experiment_id or run.info.status == "FINISHED":
            return None
        self.client.update_run(run_id, status="RUNNING")
        attempts = int(run.data.tags.get("droughtwatch.attempts", "1")) + 1
        for key, value in {**tags, "droughtwatch.attempts": attempts}.items():
            self.client.set_tag(run_id, key, str(value))
        return ActiveRun(self, run_id, self.experiment_id)

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI (never with the tracking URI's credentials); without
        a UI address, its artifact location."""
        from mlflow.exceptions import MlflowException

        base = self._ui_base()
        if base is not None:
            return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}"
        try:
            return self.client.get_run(run_id).info.artifact_uri or f"mlflow:/runs/{run_id}"
        except MlflowException:
            return f"mlflow:/runs/{run_id}"

    def version_ui_url(self, variant: str, version: str) -> str | None:
        """The model version's page in the MLflow UI, when there is a UI address."""
        base = self._ui_base()
        if base is None:
            return None
        return f"{base}/#/models/{model_name(variant)}/versions/{version}"

    def _log_keras_model(self, run: ActiveRun, model: Any, input_example: np.ndarray) -> str:
        quiet_import("keras")  # mlflow.keras imports it
        import mlflow.keras
        from mlflow.models import Model, infer_signature

        example = np.asarray(input_example)[:1]
        signature = infer_signature(example, model.predict(example, verbose=0))

        def save_model(path: str, **kwargs: Any) -> None:
            # mlflow.keras.save_model (3.17) writes the input example before it creates the
            # model folder, so log_model with an input example fails; create the folder first.
            os.makedirs(path, exist_ok=True)
            mlflow.keras.save_model(path=path, **kwargs)

        flavor = types.SimpleNamespace(__name__="mlflow.keras", save_model=save_model)
        with self._global_uri():
            logged = self.client.create_logged_model(
                self.experiment_id, name=MODEL_ARTIFACT_NAME, source_run_id=run.run_id
            )
            info = Model.log(
                artifact_path=None,
                name=MODEL_ARTIFACT_NAME,
                flavor=flavor,
                model=model,
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                run_id=run.run_id,
                model_id=logged.model_id,
            )
        return info.model_uri

    def register(
        self, model_uri: str, variant: str, *, run_id: str, tags: Mapping[str, str] | None = None
    ) -> str:
        """Register ``model_uri`` as a new version of ``droughtwatch-<variant>``; its version."""
        from mlflow.exceptions import MlflowException

        name = model_name(variant)
        with self._global_uri():
            try:
                self.client.create_registered_model(name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = self.client.create_model_version(
                name,
                source=model_uri,
                run_id=run_id,
                tags={k: str(v) for k, v in (tags or {}).items()},
            )
        return str(version.version)

    def describe_version(
        self, variant: str, version: str, description: str, tags: Mapping[str, object]
    ) -> None:
        """What the registry's version page shows: a description and tags."""
        name = model_name(variant)
        self.client.update_model_version(name, str(version), description=description)
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_alias(self, variant: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name(variant), alias, str(version))

    def alias_version(self, variant: str, alias: str) -> str | None:
        """The version the alias points at; None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            registered = self.client.get_registered_model(model_name(variant))
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST" or e.get_http_status_code() == 404:
                return None
            raise
        version = (registered.aliases or {}).get(alias)
        return None if version is None else str(version)

    def load_dict(self, run_id: str, name: str) -> dict[str, Any]:
        """A JSON artifact of a run (as written by ``ActiveRun.log_dict``)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, name, tmp)
            return json.loads(Path(path).read_text())

    def log_onnx(self, run_id: str, path: Path) -> None:
        """Store an ONNX export (named ONNX_ARTIFACT) with the run that trained the model."""
        if path.name != ONNX_ARTIFACT:
            raise ValueError(f"the ONNX artifact must be named {ONNX_ARTIFACT}, got {path.name}")
        self.client.log_artifact(run_id, str(path))

    def download_onnx(self, variant: str, version: str, folder: Path) -> Path | None:
        """The version's ONNX export, downloaded into `folder`; None for a version registered
        before ONNX exports existed."""
        from mlflow.exceptions import MlflowException

        run_id = self.version_run_id(variant, version)
        try:
            names = {a.path for a in self.client.list_artifacts(run_id)}
            if ONNX_ARTIFACT not in names:
                return None
            return Path(self.client.download_artifacts(run_id, ONNX_ARTIFACT, str(folder)))
        except (MlflowException, OSError):
            return None

    def temperature(self, variant: str, version: str) -> float:
        """The temperature a model version is served with (its run's ``calibration.json``);
        1.0, no scaling, for a version trained before calibration existed."""
        from mlflow.exceptions import MlflowException

        try:
            calibration = self.load_dict(self.version_run_id(variant, version), CALIBRATION)
        except (MlflowException, OSError):
            return 1.0
        return float(calibration.get("temperature", 1.0))

    def version_run_id(self, variant: str, version: str) -> str:
        return self.client.get_model_version(model_name(variant), str(version)).run_id

    def version_metrics(self, variant: str, version: str) -> dict[str, float]:
        """The (latest) metrics of the run that produced the version."""
        run_id = self.version_run_id(variant, version)
        return dict(self.client.get_run(run_id).data.metrics)

    def model_uri(
        self, variant: str, *, alias: str | None = None, version: str | None = None
    ) -> str:
        if (alias is None) == (version is None):
            raise ValueError("give exactly one of alias and version")
        name = model_name(variant)
        return f"models:/{name}@{alias}" if alias is not None else f"models:/{name}/{version}"

    def load_model(
        self, variant: str, *, alias: str | None = None, version: str | None = None
    ) -> Any:
        """The Keras model of a registered version, by alias or version number."""
        quiet_import("keras")  # mlflow.keras imports it
        import mlflow.keras

        from droughtwatch_assets.core.models import custom_objects

        custom_objects()  # registers the augmentation layers some networks are saved with
        uri = self.model_uri(variant, alias=alias, version=version)
        with self._global_uri():
            return mlflow.keras.load_model(uri)

    def list_models(self) -> list[dict[str, Any]]:
        """Every registered droughtwatch-* model with its versions, aliases and metrics.

        ``accuracy`` and ``macro_f1`` are the producing run's ``val_accuracy`` and
        ``val_macro_f1`` (or plain ``accuracy`` / ``macro_f1`` when those are absent).
        """
        models = []
        registered = self._all_pages(
            self.client.search_registered_models, filter_string=f"name LIKE '{MODEL_PREFIX}%'"
        )
        for rm in sorted(registered, key=lambda m: m.name):
            by_version: dict[str, list[str]] = {}
            for alias, version in (rm.aliases or {}).items():
                by_version.setdefault(str(version), []).append(alias)
            versions = []
            mvs = self._all_pages(self.client.search_model_versions, f"name = '{rm.name}'")
            for mv in sorted(mvs, key=lambda v: int(v.version)):
                metrics = self._run_metrics(mv.run_id)
                versions.append(
                    {
                        "version": str(mv.version),
                        "aliases": sorted(by_version.get(str(mv.version), [])),
                        "created": mv.creation_timestamp,  # epoch milliseconds
                        "run_id": mv.run_id,
                        "accuracy": _headline(metrics, "accuracy"),
                        "macro_f1": _headline(metrics, "macro_f1"),
                    }
                )
            models.append(
                {"name": rm.name, "variant": rm.name[len(MODEL_PREFIX) :], "versions": versions}
            )
        return models

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except MlflowException:
            return {}  # the run was deleted; the version stays listed

    @staticmethod
    def _all_pages(search: Any, *args: Any, **kwargs: Any) -> list[Any]:
        items: list[Any] = []
        token = None
        while True:
            page = search(*args, **kwargs, page_token=token)
            items.extend(page)
            token = page.token
            if not token:
                return items


__all__ = [
    "EXPERIMENT",
    "HISTORY_PREFIX",
    "ActiveRun",
    "Tracking",
    "default_artifact_root",
    "default_tracking_uri",
    "model_name",
]
