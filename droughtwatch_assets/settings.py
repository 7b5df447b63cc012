"""Where droughtwatch keeps things: the one place that reads the environment.

Every setting has an embedded default under ``DROUGHTWATCH_HOME`` (``.droughtwatch/`` in the
working directory), so a laptop run needs no configuration; ``.env.example`` documents them all.
Nothing else in the package reads these variables: the CLI builds ``Settings.from_env()`` once per
command and the code location once when it loads (``droughtwatch_assets.definitions``), and
everything else is handed the Settings.

``Settings.environment`` names the fields whose value came from the process environment: the
code location hands those to its resources as ``dg.EnvVar``, so Dagster's UI and GraphQL show
the variable's name, never its value (a database URL carries a password).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOME = ".droughtwatch"
# A run costs a process start before its first shard (about a second under the CLI, a few
# seconds under a run launcher, more as a pod) and a real shard about 0.1 s of a core: 250 is
# half a minute of work, and 1,200 shards on two cores are 6 runs, not 12.
DEFAULT_SHARDS_PER_RUN = 250

# The variable each setting is read from.
ENV = {
    "home": "DROUGHTWATCH_HOME",
    "data_root": "DROUGHTWATCH_DATA_ROOT",
    "lake": "DROUGHTWATCH_LAKE",
    "s3_endpoint_url": "DROUGHTWATCH_S3_ENDPOINT_URL",
    "sensor_interval_s": "DROUGHTWATCH_SENSOR_INTERVAL",
    "sqs_queue_url": "DROUGHTWATCH_SQS_QUEUE_URL",
    "training_gpus": "DROUGHTWATCH_TRAINING_GPUS",
    "ecs_gpu_capacity_provider": "DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER",
    "worker_image": "DROUGHTWATCH_WORKER_IMAGE",
    "shards_per_run": "DROUGHTWATCH_SHARDS_PER_RUN",
    "metrics_db_url": "DROUGHTWATCH_METRICS_DB_URL",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_artifact_root": "DROUGHTWATCH_MLFLOW_ARTIFACTS",
    "mlflow_ui_url": "DROUGHTWATCH_MLFLOW_UI_URL",
    "alert_webhook_url": "DROUGHTWATCH_ALERT_WEBHOOK_URL",
    "alert_slack_webhook_url": "DROUGHTWATCH_ALERT_SLACK_WEBHOOK_URL",
    "alert_email_to": "DROUGHTWATCH_ALERT_EMAIL_TO",
    "alert_email_from": "DROUGHTWATCH_ALERT_EMAIL_FROM",
    "smtp_url": "DROUGHTWATCH_SMTP_URL",
    "dagster_ui_url": "DROUGHTWATCH_DAGSTER_UI_URL",
}


@dataclass(frozen=True)
class Settings:
    home: Path
    data_root: str  # where raw shards arrive: a local folder or s3://bucket/prefix
    lake: str  # where assets store their outputs: a local folder or s3://bucket/prefix
    s3_endpoint_url: str | None  # None: boto3's own resolution (AWS, or AWS_ENDPOINT_URL_S3)
    sensor_interval_s: int = 30  # seconds between drop-sensor ticks
    sqs_queue_url: str | None = None  # S3 event notifications: the sensor reads them, no listing
    training_gpus: int = 0  # GPUs each training run asks its run launcher for (ECS, Kubernetes)
    ecs_gpu_capacity_provider: str = "droughtwatch-gpu"  # where ECS places GPU training runs
    # The image ingest and inference runs ask the run launcher for (Kubernetes, ECS): one built
    # with TF=none. None: every run gets the code location's image.
    worker_image: str | None = None
    shards_per_run: int = DEFAULT_SHARDS_PER_RUN  # the most shards one ingest/drop/rescore run
    metrics_db_url: str | None = None  # None: SQLite at $DROUGHTWATCH_HOME/metrics.db
    mlflow_tracking_uri: str | None = None  # None: SQLite under $DROUGHTWATCH_HOME/mlflow
    mlflow_artifact_root: str | None = None  # None: the tracking server's, or under the home
    mlflow_ui_url: str | None = None  # where Dagster's links to MLflow runs point
    # Alerts (run failures, failed blocking checks, drift): any of these destinations, or none.
    alert_webhook_url: str | None = None  # POSTed a JSON alert
    alert_slack_webhook_url: str | None = None  # a Slack incoming webhook
    alert_email_to: str | None = None  # comma-separated addresses, sent through smtp_url
    alert_email_from: str | None = None  # None: droughtwatch@<this host>
    smtp_url: str | None = None  # smtp://[user:password@]host[:port], smtps:// for TLS
    dagster_ui_url: str = "http://127.0.0.1:3000"  # where alerts' links point
    environment: frozenset[str] = frozenset()  # fields read from this process's environment
    # DAGSTER_HOME, Dagster's own variable (None: the embedded instance under the home). Not
    # compared: the CLI sets it for Dagster once it has prepared the embedded instance.
    instance_home: Path | None = field(default=None, compare=False)

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> Settings:
        """The settings of this process's environment, or of `environ` (then no field counts as
        read from the environment: a ``dg.EnvVar`` would read this process's instead)."""
        env = os.environ if environ is None else environ
        home = Path(env.get(ENV["home"]) or DEFAULT_HOME).expanduser().resolve()
        return cls(
            home=home,
            data_root=env.get(ENV["data_root"]) or str(home / "data"),
            lake=env.get(ENV["lake"]) or str(home / "lake"),
            s3_endpoint_url=env.get(ENV["s3_endpoint_url"]) or None,
            sensor_interval_s=int(env.get(ENV["sensor_interval_s"]) or 30),
            sqs_queue_url=env.get(ENV["sqs_queue_url"]) or None,
            training_gpus=int(env.get(ENV["training_gpus"]) or 0),
            ecs_gpu_capacity_provider=env.get(ENV["ecs_gpu_capacity_provider"])
            or "droughtwatch-gpu",
            worker_image=env.get(ENV["worker_image"]) or None,
            shards_per_run=_positive(env, ENV["shards_per_run"], DEFAULT_SHARDS_PER_RUN),
            metrics_db_url=env.get(ENV["metrics_db_url"]) or None,
            mlflow_tracking_uri=env.get(ENV["mlflow_tracking_uri"]) or None,
            mlflow_artifact_root=env.get(ENV["mlflow_artifact_root"]) or None,
            mlflow_ui_url=env.get(ENV["mlflow_ui_url"]) or None,
            alert_webhook_url=env.get(ENV["alert_webhook_url"]) or None,
            alert_slack_webhook_url=env.get(ENV["alert_slack_webhook_url"]) or None,
            alert_email_to=env.get(ENV["alert_email_to"]) or None,
            alert_email_from=env.get(ENV["alert_email_from"]) or None,
            smtp_url=env.get(ENV["smtp_url"]) or None,
            dagster_ui_url=env.get(ENV["dagster_ui_url"]) or "http://127.0.0.1:3000",
            environment=frozenset(
                name for name, variable in ENV.items() if environ is None and env.get(variable)
            ),
            instance_home=Path(env["DAGSTER_HOME"]).resolve() if env.get("DAGSTER_HOME") else None,
        )

    @property
    def dagster_home(self) -> Path:
        """DAGSTER_HOME, else the embedded Dagster instance (SQLite) under the home."""
        return self.instance_home or self.home / "dagster"


def _positive(env, name: str, default: int) -> int:
    text = env.get(name) or str(default)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {text!r}")
    return value
