"""The shard assets as one op: from a raw shard to its monitoring row, many shards per run.

raw_tfrecords, filtered_images, spectral_indices, batch_predictions and monitoring_metrics keep
one partition per shard: each shard gets its own materialization of each asset, with its own
metadata, and its own check results on its partition. What a run covers is a range of those
partitions (a backfill's chunk, a sensor tick's new shards, a CLI batch), and the op
``process_shards`` works through them a few at a time with bounded memory.

Why one op and not one per domain: a run that ingests and then scores (``drop_job``) would need
the ingest step's outputs to reach the scoring step, and Dagster turns an output into a
materialization of every partition in the run's range, a bad shard included. Here each
shard's materializations are reported only when that shard's work is in the lake, so a bad shard
fails its own checks, is named in the run's failure, and never hides or blocks the good shards
beside it. The domain work stays in the domain modules (``defs.ingest``, ``defs.inference``,
``defs.monitoring``); this module only walks the shards.

Re-running a failed or killed run (re-execution from the UI, or the step's own retry) redoes only
the shards and assets that did not materialize in it.
"""

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import dagster as dg
import pandas as pd
import sqlalchemy as sa
import xarray as xr

from droughtwatch_assets.adapters.storage import ObjectNotFound, StorageError
from droughtwatch_assets.core.images import CLOUD_MAX_FRACTION, CloudPolicy
from droughtwatch_assets.core.variants import SERVING_VARIANT, get_variant
from droughtwatch_assets.defs.inference import assets as inference
from droughtwatch_assets.defs.ingest import assets as ingest
from droughtwatch_assets.defs.keys import SERVING_MODEL
from droughtwatch_assets.defs.monitoring import assets as monitoring
from droughtwatch_assets.defs.partitions import shards
from droughtwatch_assets.defs.resources import MetricsDbResource, MlflowResource, StorageResource
from droughtwatch_assets.eventlog import write_buffered_events
from droughtwatch_assets.pipeline import lake
from droughtwatch_assets.pipeline.monitoring import quality_shares

INGEST = frozenset(ingest.KEYS)
SCORING = frozenset({inference.PREDICTIONS, monitoring.MONITORING})
# Shards scored together: a real shard (81 images) alone fills a third of a 256-image batch.
CHUNK = 8
# Transient faults (S3 or the tracking store away for a moment) fail the step after every other
# shard is done; its retry redoes only the shards that did not materialize.
TRANSIENT_RETRIES = dg.RetryPolicy(max_retries=3, delay=1, backoff=dg.Backoff.EXPONENTIAL)


class ShardConfig(dg.Config):
    cloud_policy: CloudPolicy = "flag"
    """Ingest: 'flag' keeps cloudy images with cloudy=True; 'remove' drops them."""
    max_cloud_fraction: float = CLOUD_MAX_FRACTION
    """Ingest: an image is cloudy when more than this fraction of its pixels is cloudy."""
    variant: str | None = None
    """Predictions: None scores with the serving model (the version serving_model recorded); a
    variant's name, with that variant's champion now."""
    model_format: str = "onnx"
    """Predictions: score the model's ONNX export with onnxruntime (no TensorFlow in the run),
    or "keras" for the Keras model; a version with no export is scored from Keras."""
    drift_threshold: float = monitoring.DRIFT_THRESHOLD
    """Monitoring: prediction drift above which the prediction_drift check warns."""
    performance_drop: float = monitoring.PERFORMANCE_DROP
    """Monitoring: how far the estimated accuracy may fall below the model's validation
    accuracy before the estimated_performance check warns."""


def is_transient(error: BaseException) -> bool:
    """A fault a retry may cure: storage or a database away, not bad data or a missing input."""
    if isinstance(error, ObjectNotFound):
        return False
    return isinstance(
        error, StorageError | sa.exc.OperationalError | ConnectionError | TimeoutError
    )


def completed(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, set[dg.AssetKey]]:
    """The assets each partition already materialized in this run (an earlier attempt of the
    step) and in the failed or canceled runs it re-executes. A re-execution of a run that
    succeeded redoes everything, as a user asking for it expects."""
    done: dict[str, set[dg.AssetKey]] = defaultdict(set)
    current: dg.DagsterRun | None = run
    while current is not None:
        cursor = None
        while True:
            page = instance.get_records_for_run(
                current.run_id,
                cursor=cursor,
                of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
                limit=1000,
            )
            for record in page.records:
                materialization = record.asset_materialization
                if materialization is not None and materialization.partition is not None:
                    done[materialization.partition].add(materialization.asset_key)
            if not page.has_more:
                break
            cursor = page.cursor
        parent = current.parent_run_id and instance.get_run_by_id(current.parent_run_id)
        current = (
            parent
            if parent
            and parent.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
            else None
        )
    return done


class _ShardRun:
    """One run of the op: the shards, what each still needs, and what failed."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        config: ShardConfig,
        storage: StorageResource,
        mlflow: MlflowResource,
        metrics_db: MetricsDbResource,
    ):
        self.context = context
        self.config = config
        self.data, self.lake = storage.data_store(), storage.lake_store()
        self.mlflow, self.metrics_db = mlflow, metrics_db
        self.selected = frozenset(context.selected_asset_keys)
        self.failures: dict[str, BaseException] = {}
        self.rejected: dict[str, list[str]] = defaultdict(list)  # shard -> failed blocking checks
        self._champion: inference.Champion | None = None
        self._references: monitoring.References | None = None

    @property
    def champion(self) -> inference.Champion:
        if self._champion is None:
            tracking = self.mlflow.tracking()
            self._champion = self._resolve(tracking)
            self._references = monitoring.References(tracking)
        return self._champion

    def _resolve(self, tracking) -> inference.Champion:
        """The model that scores this run: the serving model's recorded version (the champion
        of its variant when serving_model was never materialized), or run config's variant's
        champion."""
        if self.config.variant is not None:
            return inference.Champion(
                tracking, get_variant(self.config.variant), model_format=self.config.model_format
            )
        record = self.context.instance.get_latest_materialization_event(SERVING_MODEL)
        if record is None or record.asset_materialization is None:
            return inference.Champion(
                tracking, get_variant(SERVING_VARIANT), model_format=self.config.model_format
            )
        metadata = record.asset_materialization.metadata
        return inference.Champion(
            tracking,
            get_variant(metadata["variant"].value),
            str(metadata["version"].value),
            model_format=self.config.model_format,
        )

    def noting(self, events: Iterable) -> Iterator:
        """`events`, passed on; a failed blocking check is noted against its shard, so the run's
        failure names the shard (Dagster's own error names only the checks)."""
        for event in events:
            if isinstance(event, dg.AssetCheckEvaluation) and event.blocking and not event.passed:
                name = f"{event.asset_key.to_user_string()}.{event.check_name}"
                reason = f": {event.description}" if event.description else ""
                self.rejected[event.partition or "-"].append(name + reason)
            yield event

    def fail(self, key: str, error: BaseException) -> None:
        self.failures[key] = error
        self.context.log.error(f"shard {key} failed: {type(error).__name__}: {error}")

    def ingest_shard(self, key: str, todo: set[dg.AssetKey]) -> ingest.Ingested | None:
        try:
            return ingest.ingest_one(
                key,
                todo,
                self.data,
                self.lake,
                cloud_policy=self.config.cloud_policy,
                max_cloud_fraction=self.config.max_cloud_fraction,
            )
        except Exception as exc:  # one shard's fault never stops the others
            self.fail(key, exc)
            return None

    def score(self, batch: list[tuple[str, set[dg.AssetKey], ingest.Ingested]]) -> Iterator:
        """Predictions and monitoring for shards whose ingest is in the lake, scored together."""
        champion = self.champion
        champion.check()
        inputs: list[tuple[str, set[dg.AssetKey], xr.Dataset, xr.Dataset]] = []
        for key, todo, ingested in batch:
            try:
                filtered = ingested.filtered
                if filtered is None:
                    filtered = lake.read(self.lake, lake.FILTERED_IMAGES, key, xr.Dataset)
                indices = ingested.indices
                if indices is None:
                    indices = lake.read(self.lake, lake.SPECTRAL_INDICES, key, xr.Dataset)
            except ObjectNotFound as exc:
                self.fail(key, ObjectNotFound(f"{exc}: ingest partition {key!r} first"))
                continue
            except Exception as exc:
                self.fail(key, exc)
                continue
            inputs.append((key, todo, filtered, indices))
        predict = [(f, i) for _, todo, f, i in inputs if inference.PREDICTIONS in todo]
        probabilities = iter(champion.predict(predict)) if predict else iter(())
        engine = self.metrics_db.engine() if monitoring.MONITORING in self.selected else None
        for key, todo, filtered, indices in inputs:
            try:
                if inference.PREDICTIONS in todo:
                    frame, events = inference.store_predictions(
                        key, filtered, next(probabilities), champion, self.lake
                    )
                    yield from events
                else:
                    frame = lake.read(self.lake, lake.BATCH_PREDICTIONS, key, pd.DataFrame)
                if monitoring.MONITORING in todo and frame is not None:
                    assert engine is not None and self._references is not None
                    quality = quality_shares(
                        ingest.read_report(self.lake, key).records,
                        filtered["cloudy"].values,
                        indices["evi_guarded_fraction"].values,
                    )
                    yield from monitoring.monitor_one(
                        key,
                        frame,
                        indices,
                        self._references,
                        engine,
                        run_id=self.context.run.run_id,
                        drift_threshold=self.config.drift_threshold,
                        performance_drop=self.config.performance_drop,
                        quality=quality,
                    )
            except Exception as exc:
                self.fail(key, exc)


def process(
    context: dg.AssetExecutionContext,
    config: ShardConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
    metrics_db: MetricsDbResource,
) -> Iterator:
    run = _ShardRun(context, config, storage, mlflow, metrics_db)
    keys = list(context.partition_keys)
    done = completed(context.instance, context.run)
    todo = {key: set(run.selected - done.get(key, set())) for key in keys}
    redone = sum(1 for key in keys if todo[key] != set(run.selected))
    if redone:
        context.log.info(
            f"{redone} of {len(keys)} shards already materialized some of these assets in this "
            "run or the failed run it re-executes: only what is missing is done again"
        )
    no_champion: inference.NoChampion | None = None
    finished = 0
    for chunk in _chunks(keys, CHUNK):
        ingested_chunk: list[tuple[str, ingest.Ingested]] = []
        try:
            for key in chunk:
                if not todo[key]:
                    continue
                ingested = ingest.Ingested()
                if todo[key] & INGEST:
                    ingested = run.ingest_shard(key, todo[key] & INGEST)
                    if ingested is None:
                        continue
                    # Recorded by Dagster before the generator resumes.
                    yield from run.noting(ingested.events)
                    if not todo[key] & SCORING:
                        ingested.filtered = ingested.indices = None  # only its report is kept
                ingested_chunk.append((key, ingested))
        except BaseException:
            # Interrupted mid-chunk (a terminate, which Dagster turns into a retry first): the
            # shards whose events are recorded get their reports too, or a retry, which skips
            # what materialized, would leave them without one.
            for _ in _committed(run, ingested_chunk):
                pass
            raise
        scoring = []
        for key, ingested in _committed(run, ingested_chunk):
            if todo[key] & SCORING and no_champion is None:
                scoring.append((key, todo[key] & SCORING, ingested))
        if scoring:
            try:
                yield from run.noting(run.score(scoring))
            except inference.NoChampion as exc:
                no_champion = exc  # the shards' ingest goes on; the run fails at the end
        finished += len(chunk)
        context.log.info(f"{finished}/{len(keys)} shards done")
    problems = [f"{key}: {error}" for key, error in run.failures.items()]
    problems += [f"{key} failed {'; '.join(checks)}" for key, checks in run.rejected.items()]
    if no_champion is not None:
        problems.insert(0, str(no_champion))
    if problems:
        raise dg.Failure(
            description=f"{len(problems)} problem(s) in this run; every other shard landed.\n"
            + "\n".join(problems),
            metadata={"failed_shards": sorted({*run.failures, *run.rejected})},
            allow_retries=no_champion is None
            and any(is_transient(e) for e in run.failures.values()),
        )


def _committed(
    run: _ShardRun, chunk: list[tuple[str, ingest.Ingested]]
) -> Iterator[tuple[str, ingest.Ingested]]:
    """The chunk's shards whose ingest is committed and passed its blocking checks.

    A shard's raw report, which tells discovery the shard is in, is written only after the
    shard's events are in the event log. The chunk's events are written first, together: one
    transaction per database for the chunk's shards, not one per shard (about 0.25 ms less per
    event on this project's machines)."""
    if any(ingested.report is not None for _, ingested in chunk):
        try:
            write_buffered_events(run.context.instance)
        except Exception as exc:
            for key, ingested in chunk:
                if ingested.report is not None:
                    run.fail(key, exc)
            chunk = [(key, ingested) for key, ingested in chunk if ingested.report is None]
    for key, ingested in chunk:
        try:
            ingested.commit(run.lake)
        except Exception as exc:
            run.fail(key, exc)
            continue
        if ingested.ok:  # a shard that failed a blocking check goes no further
            yield key, ingested


def _chunks(keys: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def build_shard_assets() -> dg.AssetsDefinition:
    """The op that materializes the shard assets.

    A backfill (from the UI, or `dagster asset materialize --partition-range`, which Dagster
    allows only under this policy) is one run over its whole range: the op streams the shards
    with bounded memory. The sensor and the CLI split their work into runs of at most
    DROUGHTWATCH_SHARDS_PER_RUN themselves (`droughtwatch_assets.pipeline.batching`)."""

    @dg.multi_asset(
        name="process_shards",
        specs=[*ingest.SPECS, inference.SPEC, monitoring.SPEC],
        check_specs=[*ingest.CHECK_SPECS, *inference.CHECK_SPECS, *monitoring.CHECK_SPECS],
        partitions_def=shards,
        can_subset=True,
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=TRANSIENT_RETRIES,
    )
    def process_shards(
        context: dg.AssetExecutionContext,
        config: ShardConfig,
        storage: StorageResource,
        mlflow: MlflowResource,
        metrics_db: MetricsDbResource,
    ) -> Iterator:
        yield from process(context, config, storage, mlflow, metrics_db)

    return process_shards
