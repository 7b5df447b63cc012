"""Resources shared by every domain: the data root and lake stores, and the lake IO manager."""

import functools
import os
from typing import Any

import dagster as dg
import sqlalchemy as sa

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.adapters.storage import Store, open_store
from droughtwatch_assets.adapters.tracking import (
    Tracking,
    default_artifact_root,
    default_tracking_uri,
    default_ui_url,
)
from droughtwatch_assets.defs.alerts import AlertsResource
from droughtwatch_assets.pipeline import lake
from droughtwatch_assets.settings import ENV, Settings


class StorageResource(dg.ConfigurableResource):
    """The data root (where raw shards arrive) and the lake (where outputs live).

    Either may be a local folder or an ``s3://bucket/prefix`` URI; ``s3_endpoint_url`` points
    at MinIO, moto or another S3-compatible server (empty: AWS). With ``sqs_queue_url`` the
    drop sensor reads the data root's S3 event notifications instead of listing it.
    """

    data_root: str
    lake: str
    s3_endpoint_url: str | None = None
    sqs_queue_url: str | None = None
    checkpoints: str | None = None
    """A local folder where a training keeps its last epoch until its model is in MLflow (a
    killed training resumes from it); None: no checkpoints."""

    def data_store(self) -> Store:
        return open_store(self.data_root, endpoint_url=self.s3_endpoint_url)

    def lake_store(self) -> Store:
        return open_store(self.lake, endpoint_url=self.s3_endpoint_url)


class LakeIOManager(dg.ConfigurableIOManager):
    """Stores asset outputs in the lake (the layout and encodings of
    ``droughtwatch_assets.pipeline.lake``: Datasets as Arrow IPC, DataFrames as Parquet, dicts as
    JSON), one object per asset and partition, written atomically."""

    lake: str
    s3_endpoint_url: str | None = None

    def _store(self) -> Store:
        return open_store(self.lake, endpoint_url=self.s3_endpoint_url)

    @staticmethod
    def _where(context: dg.OutputContext | dg.InputContext) -> tuple[str, str | None]:
        partition = None
        if context.has_asset_partitions:
            partition_keys = list(context.asset_partition_keys)
            if len(partition_keys) != 1:
                raise dg.DagsterInvariantViolationError(
                    f"{context.asset_key.to_user_string()}: the lake stores one partition per "
                    f"object; got {len(partition_keys)} partitions in one step"
                )
            partition = partition_keys[0]
        return "/".join(context.asset_key.path), partition

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        url, size = lake.write(self._store(), *self._where(context), obj)
        context.add_output_metadata({"path": dg.MetadataValue.path(url), "stored_bytes": size})

    def load_input(self, context: dg.InputContext) -> Any:
        wanted = context.dagster_type.typing_type
        kind = wanted if wanted in lake.SUFFIXES else dict
        return lake.read(self._store(), *self._where(context), kind)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry through droughtwatch's own ``Tracking`` wrapper.

    Not dagster-mlflow: its end-of-run hook leaves MLflow runs RUNNING when only some assets of
    a job are materialized, and a later run in the same process reuses that MLflow run (see
    ``droughtwatch_assets.adapters.tracking``). Here every training starts and ends its own run.
    """

    tracking_uri: str
    artifact_root: str | None = None
    experiment: str = "droughtwatch"
    s3_endpoint_url: str | None = None
    ui_url: str | None = None  # the MLflow UI that Dagster's links to runs open

    def tracking(self) -> Tracking:
        if self.s3_endpoint_url:
            # MLflow's S3 artifact client reads its own variable, not ours.
            os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", self.s3_endpoint_url)
        return Tracking(self.tracking_uri, self.artifact_root, self.experiment, self.ui_url)


class MetricsDbResource(dg.ConfigurableResource):
    """The monitoring database: SQLite under DROUGHTWATCH_HOME, or any SQLAlchemy URL."""

    url: str

    def engine(self) -> sa.Engine:
        return _engine(self.url)


@functools.cache
def _engine(url: str) -> sa.Engine:
    # One pooled engine per database per process: a new engine per call would pile up
    # PostgreSQL connections.
    return metricsdb.connect(url)


def configured(settings: Settings, field: str, default: Any = None) -> Any:
    """A resource field's value: ``dg.EnvVar`` naming the variable when the setting came from
    the environment (the UI and GraphQL then show the name, never the value: a database URL
    carries its password), else the setting itself, or `default` where that is None."""
    if field in settings.environment:
        return dg.EnvVar(ENV[field])
    value = getattr(settings, field)
    return default if value is None else value


def build_resources(settings: Settings) -> dict[str, Any]:
    endpoint = configured(settings, "s3_endpoint_url")
    lake_root = configured(settings, "lake")
    return {
        "mlflow": MlflowResource(
            tracking_uri=configured(
                settings, "mlflow_tracking_uri", default_tracking_uri(settings)
            ),
            artifact_root=configured(
                settings, "mlflow_artifact_root", default_artifact_root(settings)
            ),
            s3_endpoint_url=endpoint,
            ui_url=configured(settings, "mlflow_ui_url", default_ui_url(settings)),
        ),
        "metrics_db": MetricsDbResource(
            url=configured(settings, "metrics_db_url", metricsdb.database_url(settings))
        ),
        "storage": StorageResource(
            data_root=configured(settings, "data_root"),
            lake=lake_root,
            s3_endpoint_url=endpoint,
            sqs_queue_url=configured(settings, "sqs_queue_url"),
            checkpoints=str(settings.home / "checkpoints"),
        ),
        "io_manager": LakeIOManager(lake=lake_root, s3_endpoint_url=endpoint),
        "alerts": AlertsResource(
            webhook_url=configured(settings, "alert_webhook_url"),
            slack_webhook_url=configured(settings, "alert_slack_webhook_url"),
            email_to=configured(settings, "alert_email_to"),
            email_from=configured(settings, "alert_email_from"),
            smtp_url=configured(settings, "smtp_url"),
            dagster_ui_url=configured(settings, "dagster_ui_url"),
        ),
    }
