"""Where droughtwatch keeps things: one place that reads the environment.

Every setting has an embedded default under ``DROUGHTWATCH_HOME`` (``.droughtwatch/`` in the
working directory), so a laptop run needs no configuration; ``.env.example`` documents them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = ".droughtwatch"
# A run costs a process start before its first shard (about a second under the CLI, a few
# seconds under a run launcher, more as a pod) and a real shard about 0.1 s of a core: 250 is
# half a minute of work, and 1,200 shards on two cores are 6 runs, not 12.
DEFAULT_SHARDS_PER_RUN = 250


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
    shards_per_run: int = DEFAULT_SHARDS_PER_RUN  # the most shards one ingest/drop/rescore run

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("DROUGHTWATCH_HOME") or DEFAULT_HOME).expanduser().resolve()
        return cls(
            home=home,
            data_root=env.get("DROUGHTWATCH_DATA_ROOT") or str(home / "data"),
            lake=env.get("DROUGHTWATCH_LAKE") or str(home / "lake"),
            s3_endpoint_url=env.get("DROUGHTWATCH_S3_ENDPOINT_URL") or None,
            sensor_interval_s=int(env.get("DROUGHTWATCH_SENSOR_INTERVAL") or 30),
            sqs_queue_url=env.get("DROUGHTWATCH_SQS_QUEUE_URL") or None,
            training_gpus=int(env.get("DROUGHTWATCH_TRAINING_GPUS") or 0),
            ecs_gpu_capacity_provider=env.get("DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER")
            or "droughtwatch-gpu",
            shards_per_run=_positive(env, "DROUGHTWATCH_SHARDS_PER_RUN", DEFAULT_SHARDS_PER_RUN),
        )

    @property
    def dagster_home(self) -> Path:
        """The embedded Dagster instance (SQLite) used when DAGSTER_HOME is not set."""
        return self.home / "dagster"


def _positive(env, name: str, default: int) -> int:
    text = env.get(name) or str(default)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {text!r}")
    return value
