"""The run engine of the command line: the Dagster home, runs over batches of shards, outcomes.

Runs started here are created the way the UI creates them, from the code location
``droughtwatch`` (the same name ``dagster dev`` and ``workspace.yaml`` give it), so they carry
its origin and job snapshot: the UI lists them under their job, on its timeline, and re-executes
them like its own. They then execute as a run worker would: one alone in this process, several
in worker processes that each create and execute their own batch's run.

A run records which process executes it (``droughtwatch/worker``: host, pid and the process's
start time). A process that dies mid-run (``kill -9``) cannot say so itself; ``fail_orphaned_runs``
(called by every command that starts runs, and by the drop sensor) marks such runs failed, so
none stays "started" forever.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from droughtwatch_assets.pipeline import batching
from droughtwatch_assets.settings import Settings

if TYPE_CHECKING:
    import dagster as dg

LOCATION_NAME = "droughtwatch"
DEFINITIONS_MODULE = "droughtwatch_assets.definitions"
WORKER_TAG = "droughtwatch/worker"
TRIGGER_TAG = "droughtwatch/trigger"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"

EMBEDDED_HEADER = "# The embedded default instance"
EMBEDDED_INSTANCE_YAML = """\
# The embedded default instance: SQLite storage in this folder, written by `droughtwatch home`
# (and rewritten by it while this first line stays: edit the line away to keep your changes).
# The repository's dagster.yaml is the same instance for Dagster's own commands.
telemetry:
  enabled: false
run_storage:
  module: dagster._core.storage.runs
  class: SqliteRunStorage
  config:
    base_dir: {history}
# Dagster's SQLite event log, with pooled connections and no fsync per event
# (droughtwatch_assets/eventlog.py).
event_log_storage:
  module: droughtwatch_assets.eventlog
  class: PooledSqliteEventLogStorage
  config:
    base_dir: {events}
schedule_storage:
  module: dagster._core.storage.schedules
  class: SqliteScheduleStorage
  config:
    base_dir: {schedules}
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {home}
compute_logs:
  module: dagster._core.storage.local_compute_log_manager
  class: LocalComputeLogManager
  config:
    base_dir: {compute_logs}
# Runs start as forks of a process that has already imported the code, not as a fresh
# interpreter each (about 3 s sooner; droughtwatch_assets/launcher.py).
run_launcher:
  module: droughtwatch_assets.launcher
  class: ForkingRunLauncher
# Runs wait in a queue and start {runs} at a time, one per core of the machine that wrote this
# file (each run is a process that works through its shards); a dequeued run starts within a
# second.
run_coordinator:
  # Dagster's, which in the daemon also starts the run launcher's warm process.
  module: droughtwatch_assets.launcher
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
concurrency:
  runs:
    max_concurrent_runs: {runs}
  pools:
    # The only pool is "training": one training at a time, never two on a small machine.
    default_limit: 1
"""

WORKSPACE_YAML = """\
# The code location of `make dev` (which starts `dg dev -w workspace.yaml` in this folder, so
# that Dagster reads this folder's dagster.yaml), written by `droughtwatch home`.
load_from:
  - python_module:
      module_name: {module}
      location_name: {location}
      working_directory: {source}
"""


def embedded_instance_yaml(home: Path | str, runs: int) -> str:
    """The embedded instance's dagster.yaml, every storage under ``home`` (Dagster's own
    layout of a DAGSTER_HOME)."""
    home = Path(home)
    paths = {
        "home": home,
        "history": home / "history",
        "events": home / "history" / "runs",
        "schedules": home / "schedules",
        "compute_logs": home / "storage",
    }
    return EMBEDDED_INSTANCE_YAML.format(
        runs=runs, **{name: json.dumps(str(path)) for name, path in paths.items()}
    )


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Step-by-step DEBUG events stay in the instance (and the UI); the terminal shows warnings
and the summary tables."""


def prepare_dagster_home() -> Path:
    """DAGSTER_HOME, or the embedded default under DROUGHTWATCH_HOME, created if missing.

    A ``dagster.yaml`` that is missing, or still starts with EMBEDDED_HEADER, is (re)written
    for this folder and this machine; any other is the user's and left alone. ``workspace.yaml``
    (the code location, for ``make dev``) is always rewritten.
    """
    home = Settings.from_env().dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    current = config.read_text() if config.exists() else EMBEDDED_HEADER
    if current.startswith(EMBEDDED_HEADER):
        wanted = embedded_instance_yaml(home, batching.default_parallelism())
        if current != wanted:
            config.write_text(wanted)
    source = Path(__file__).resolve().parent.parent  # the checkout, or site-packages
    workspace = WORKSPACE_YAML.format(
        module=DEFINITIONS_MODULE, location=LOCATION_NAME, source=json.dumps(str(source))
    )
    if not (home / "workspace.yaml").exists() or (home / "workspace.yaml").read_text() != workspace:
        (home / "workspace.yaml").write_text(workspace)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def instance() -> dg.DagsterInstance:
    """The instance of DAGSTER_HOME (prepared if needed), one per home in this process: building
    one costs about half a second."""
    return _instance(str(prepare_dagster_home()))


@functools.cache
def _instance(dagster_home: str) -> dg.DagsterInstance:
    import dagster as dg

    from droughtwatch_assets.eventlog import share_alembic_scripts

    share_alembic_scripts()  # before the first storage opens its database
    return dg.DagsterInstance.from_config(dagster_home)


# --- outcomes


@dataclass
class ShardOutcome:
    """What a run did to one partition (a shard, or a variant for training)."""

    key: str
    ok: bool
    metadata: dict = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)
    warned_checks: list[str] = field(default_factory=list)
    error: str = ""


def _value(value: Any) -> Any:
    return getattr(value, "value", value)


def outcomes(inst: dg.DagsterInstance, run_id: str, keys: Sequence[str]) -> list[ShardOutcome]:
    """Per-partition outcomes of a run, from its events: metadata of every materialization (as
    ``asset.label``), failed and warned checks, and why a partition failed. A partition is ok
    when it failed no check, the run's failure does not name it, and every asset the run was
    to materialize for it did materialize."""
    import dagster as dg

    run = inst.get_run_by_id(run_id)
    assert run is not None
    by_key = {key: ShardOutcome(key, True) for key in keys}
    materialized: dict[str, set[str]] = {key: set() for key in keys}
    failure_lines: list[str] = []
    kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.STEP_FAILURE}
    for record in inst.all_logs(run_id, of_type=kinds):
        event = record.dagster_event
        if event is None:
            continue
        if event.is_step_materialization:
            mat = event.step_materialization_data.materialization
            if mat.partition in by_key:
                name = mat.asset_key.to_user_string()
                materialized[mat.partition].add(name)
                for label, value in mat.metadata.items():
                    by_key[mat.partition].metadata[f"{name}.{label}"] = _value(value)
        elif event.is_step_failure:
            data = event.step_failure_data
            failure = data.user_failure_data
            text = (failure.description if failure else None) or _root_cause(data.error)
            failure_lines = [line for line in text.splitlines() if line.strip()]
    for evaluation in _failed_checks(inst, run_id):
        outcome = by_key.get(evaluation.partition)
        if outcome is None:
            continue
        name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
        if evaluation.severity == dg.AssetCheckSeverity.WARN:
            outcome.warned_checks.append(name)
        else:
            outcome.failed_checks.append(name)
            outcome.ok = False
            outcome.error = outcome.error or (evaluation.description or "")
    if run.status == dg.DagsterRunStatus.SUCCESS:
        return list(by_key.values())
    expected = _planned_assets(inst, run)
    general = [line for line in failure_lines if not line.startswith(tuple(by_key))]
    for outcome in by_key.values():
        named = [line for line in failure_lines if line.startswith(f"{outcome.key}: ")]
        if named:
            outcome.ok, outcome.error = False, named[0].split(": ", 1)[1]
        elif outcome.ok and not expected <= materialized[outcome.key]:
            outcome.ok = False
            outcome.error = general[-1] if general else f"run {run.status.value.lower()}"
    return list(by_key.values())


def _failed_checks(inst: dg.DagsterInstance, run_id: str) -> list:
    """The run's failed check evaluations, in the order they were recorded.

    Dagster's SQL event logs (SQLite, PostgreSQL) index every check execution with its status:
    the failed ones are a few rows there, where the run's events hold every evaluation (seven a
    shard, most of what reading the outcomes cost). Any other storage: from the run's events."""
    import dagster as dg
    import sqlalchemy as sa
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable as Executions
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster._serdes import deserialize_value

    storage = inst.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        kind = dg.DagsterEventType.ASSET_CHECK_EVALUATION
        return [
            record.dagster_event.asset_check_evaluation_data
            for record in inst.all_logs(run_id, of_type=kind)
            if record.dagster_event and not record.dagster_event.asset_check_evaluation_data.passed
        ]
    query = (
        sa.select(Executions.c.evaluation_event)
        .where(
            Executions.c.run_id == run_id,
            Executions.c.execution_status == AssetCheckExecutionRecordStatus.FAILED.value,
        )
        .order_by(Executions.c.evaluation_event_storage_id)
    )
    with storage.index_connection() as conn:
        rows = conn.execute(query).fetchall()
    evaluations = []
    for (text,) in rows:
        event = deserialize_value(text, dg.EventLogEntry).dagster_event
        if event is not None and event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluations.append(event.asset_check_evaluation_data)
    return evaluations


def _planned_assets(inst: dg.DagsterInstance, run: dg.DagsterRun) -> set[str]:
    """The assets a run's plan materializes."""
    from droughtwatch_assets.pipeline.layout import UNPARTITIONED

    if not run.execution_plan_snapshot_id:
        return set()
    plan = inst.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    return {
        output.properties.asset_key.to_user_string()
        for step in plan.steps
        for output in step.outputs
        if output.properties is not None and output.properties.asset_key is not None
    } - UNPARTITIONED  # materialized once per run, not per partition


def _root_cause(error: Any) -> str:
    """The innermost error's message: Dagster wraps user errors in its own."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else ""


# --- creating and executing runs


def _current_code_location():
    """The code location for this process's current settings: the definitions module is
    reloaded when the environment changed since it was imported."""
    import importlib

    import droughtwatch_assets.definitions as module

    if Settings.from_env() != module.SETTINGS:
        from dagster._core.definitions.reconstruct import ReconstructableJob

        importlib.reload(module)
        _code_location.cache_clear()
        # Dagster keeps the last definitions it loaded for a job's origin, which the reload
        # does not change: a run executed here would get the old settings' resources.
        ReconstructableJob.get_repository_definition.cache_clear()
        ReconstructableJob.get_definition.cache_clear()
    return _code_location(os.environ["DAGSTER_HOME"])


@functools.cache
def _code_location(dagster_home: str):
    """The droughtwatch code location loaded in this process, named as the UI names it."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.remote_representation.code_location import InProcessCodeLocation
    from dagster._core.storage.defs_state.base import set_defs_state_storage
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=DEFINITIONS_MODULE, working_directory=os.getcwd()),
        location_name=LOCATION_NAME,
    )
    inst = instance()
    # Loading reads Dagster's process-wide "current" definitions-state storage, which another
    # instance entered in this process (and since gone) may have left behind: use this one's.
    with set_defs_state_storage(inst.defs_state_storage):
        return InProcessCodeLocation(origin, instance=inst)


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def worker_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or '-'}"


def tagged_worker(tag: str) -> tuple[int, bool] | None:
    """The pid a WORKER_TAG names and whether that process still runs (the same pid and start
    time), or None when the tag names no process on this host."""
    host, _, rest = tag.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid), started != "-" and process_start(int(pid)) == started


def fail_orphaned_runs(inst: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs that a process on this host was executing (or had created, to
    execute next) and that process is gone (killed, crashed); returns their ids."""
    import dagster as dg

    host = socket.gethostname()
    orphans = []
    records = inst.get_run_records(
        filters=dg.RunsFilter(
            # NOT_STARTED: a worker killed between creating its batch's run and executing it.
            statuses=[
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ],
            tags={TRIGGER_TAG: "cli"},
        )
    )
    for record in records:
        run = record.dagster_run
        worker = tagged_worker(run.tags.get(WORKER_TAG, ""))
        if worker is None or worker[1]:
            continue  # not executed on this host, or still running
        pid = worker[0]
        inst.report_run_failed(
            run,
            f"the droughtwatch process that executed this run (pid {pid} on {host}) is gone: "
            "killed or crashed mid-run. Its shards that landed are kept; run the command again "
            "(or re-execute this run) to do the rest.",
        )
        orphans.append(run.run_id)
    return orphans


def partition_tags(batch: Sequence[str]) -> dict[str, str]:
    """The run tags that name a batch's partitions: one key, or a range first...last."""
    if not batch:
        return {}  # an unpartitioned job
    if len(batch) == 1:
        return {"dagster/partition": batch[0]}
    return {RANGE_START: batch[0], RANGE_END: batch[-1]}


def create_run(
    job_name: str,
    batch: Sequence[str],
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> dg.DagsterRun:
    """A run of `job_name` over the batch's partitions, created as the UI creates one."""
    from dagster._core.definitions.selector import JobSubsetSelector

    inst = instance()
    location = _current_code_location()
    repo = location.get_repository("__repository__")
    remote_job = location.get_job(
        JobSubsetSelector(
            location_name=location.name,
            repository_name=repo.name,
            job_name=job_name,
            op_selection=None,
        )
    )
    config = {**QUIET, **(run_config or {})}
    plan = location.get_execution_plan(
        remote_job, config, step_keys_to_execute=None, known_state=None, instance=inst
    )
    snapshot = plan.execution_plan_snapshot
    return inst.create_run(
        job_name=job_name,
        run_id=run_id or str(uuid.uuid4()),
        run_config=config,
        resolved_op_selection=remote_job.resolved_op_selection,
        step_keys_to_execute=snapshot.step_keys_to_execute,
        op_selection=None,
        status=None,
        root_run_id=None,
        parent_run_id=None,
        tags={**remote_job.tags, TRIGGER_TAG: "cli", **(tags or {}), **partition_tags(batch)},
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )


def execute(run: dg.DagsterRun) -> dg.DagsterRun:
    """Execute a created run in this process, as a run worker does; returns it as it ended."""
    from dagster._core.execution.api import execute_run
    from dagster._core.origin import JobPythonOrigin
    from dagster._utils.hosted_user_process import recon_job_from_origin

    inst = instance()
    inst.add_run_tags(run.run_id, {WORKER_TAG: worker_tag()})
    origin = run.job_code_origin
    assert isinstance(origin, JobPythonOrigin)
    execute_run(recon_job_from_origin(origin), inst.get_run_by_id(run.run_id), inst)
    ended = inst.get_run_by_id(run.run_id)
    assert ended is not None
    return ended


def run_batches(
    job_name: str,
    keys: Sequence[str],
    *,
    settings: Settings,
    run_config: Mapping[str, Any] | None = None,
    progress: Any = None,
    parallel: int | None = None,
) -> list[ShardOutcome]:
    """Run `job_name` over the shard partitions `keys` in batches of contiguous partitions (at
    most DROUGHTWATCH_SHARDS_PER_RUN each), up to `parallel` (default: one per core) at a time;
    per-shard outcomes in `keys`' order. A failed batch never stops the others. `progress` (a
    tqdm bar) advances as shards materialize.

    One batch at a time runs in this process. More run in worker processes, forked from a
    clean server process that imported the definitions once (never from this process: it may
    hold TensorFlow's threads, which do not survive a fork). Each worker creates its batch's run
    (as the UI creates one) and executes it, then sends the batch's outcomes back: this process
    never imports the definitions, and runs start as soon as the server is ready."""
    from droughtwatch_assets.defs.partitions import shards

    inst = instance()
    fail_orphaned_runs(inst)
    order = inst.get_dynamic_partitions(shards.name)
    workers = max(1, parallel or batching.default_parallelism())
    batches = batching.contiguous_batches(
        keys, order, max_per_run=settings.shards_per_run, parallel=workers
    )
    pool = _Workers(inst, min(workers, len(batches)), progress)
    try:
        for batch in batches:
            pool.wait_for_room()
            pool.start(job_name, batch, run_config)
        pool.wait_for_room(0)
    finally:
        pool.stop()
    results: dict[str, ShardOutcome] = {}
    for run_id, batch, sent in pool.done:
        for outcome in sent if sent is not None else _outcomes_of(inst, run_id, batch):
            results[outcome.key] = outcome
    return [results[key] for key in keys]


def _outcomes_of(inst: dg.DagsterInstance, run_id: str, batch: Sequence[str]) -> list:
    """The outcomes of a run whose worker sent none (it died): from the run's events, or, when
    it died before it created the run, a failure for each shard."""
    if inst.get_run_by_id(run_id) is not None:
        return outcomes(inst, run_id, batch)
    error = "its worker process ended before it created the run (its error is printed above)"
    return [ShardOutcome(key, False, error=error) for key in batch]


def _worker(
    dagster_home: str,
    command: str,
    job_name: str,
    batch: Sequence[str],
    run_config: Mapping[str, Any] | None,
    run_id: str,
    results: Any,
) -> None:
    """A worker process: create the batch's run and execute it, then send the batch's outcomes
    on `results`; die with the command that started it."""
    _freeze_inherited_objects()
    threading.Thread(target=_exit_with, args=(command,), daemon=True).start()
    os.environ["DAGSTER_HOME"] = dagster_home
    run = create_run(
        job_name, batch, run_config=run_config, tags={WORKER_TAG: worker_tag()}, run_id=run_id
    )
    execute(run)
    results.send(outcomes(instance(), run_id, batch))
    results.close()


def _freeze_inherited_objects() -> None:
    """Keep the objects a worker inherits from the fork server (the imported code: about
    250,000) out of its garbage collections: each full collection of a run walked all of them
    again (0.1-0.25 s per run), and touching them copied the pages the fork shares."""
    import gc

    gc.freeze()


def _exit_with(command: str) -> None:
    """Kill this process as soon as `command` (a worker_tag) is gone: a killed command leaves no
    worker behind. (A worker's parent is the fork server, which outlives the command while any
    worker runs, so the kernel's parent-death signal cannot do this.)"""
    _, pid, started = command.rsplit(":", 2)
    if started == "-":
        return  # no /proc to tell (not Linux): the worker ends with its run
    while process_start(int(pid)) == started:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


# What a worker imports before its first shard, beyond the definitions: the instance's storage
# classes (named in dagster.yaml, imported when the instance is built) and the run executor.
# Imported once by the fork server, they cost each worker nothing (0.6 s each otherwise).
WORKER_PRELOAD = (
    DEFINITIONS_MODULE,
    "droughtwatch_assets.eventlog",
    "dagster._core.instance.factory",
    "dagster._core.storage.legacy_storage",
    "dagster._core.storage.root",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.schedules.sqlite",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.run_coordinator",
    "dagster._core.launcher",
    "dagster._core.secrets.env_file",
    "dagster._core.execution.api",
    "dagster._utils.hosted_user_process",
    "dagster._daemon",
    "dagster._grpc.server",  # loading the code location in a worker (0.03 s)
    "upath.core",  # the instance's definitions-state storage (0.06 s)
    "upath.implementations.local",
)


def worker_context() -> Any:
    """forkserver where there is one (Linux): its server imports the definitions and the
    instance's storage once, in a fresh process, and each worker is a fork of it that starts in
    milliseconds."""
    if worker_start_method() != "forkserver":
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["droughtwatch_assets.preload"])  # WORKER_PRELOAD, GC off
    return context


def worker_start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def stop_workers() -> None:
    """Stop the fork server (workers it started go on): the next worker starts a new one, which
    imports the code afresh."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # noqa: SLF001 (no public way; Python's own tests use it)


def launched_worker(instance_ref: str, run_id: str) -> None:
    """A run worker started by the embedded instance's launcher (droughtwatch_assets.launcher):
    execute the run as Dagster's run worker does, with the same engine events."""
    import dagster as dg
    from dagster._core.events import EngineEventData
    from dagster._core.instance.ref import InstanceRef
    from dagster._grpc.impl import core_execute_run
    from dagster._serdes import deserialize_value
    from dagster._utils.hosted_user_process import recon_job_from_origin
    from dagster._utils.interrupts import capture_interrupts

    _freeze_inherited_objects()
    with (
        capture_interrupts(),
        dg.DagsterInstance.from_ref(deserialize_value(instance_ref, InstanceRef)) as inst,
    ):
        run = inst.get_run_by_id(run_id)
        assert run is not None, f"run {run_id} not found"
        pid = os.getpid()
        inst.report_engine_event(
            f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
        )
        try:
            for _ in core_execute_run(
                recon_job_from_origin(run.job_code_origin), run, inst, inject_env_vars=True
            ):
                pass
        except BaseException:  # noqa: S110 (core_execute_run recorded it on the run)
            pass
        finally:
            inst.report_engine_event(f"Process for run exited (pid: {pid}).", run)


def start_fork_server() -> None:
    """Start the fork server now, where there is one; it imports WORKER_PRELOAD in its own
    process while this one goes on."""
    if worker_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def start_workers() -> None:
    """Start the fork server now, when there is one and more than one core, so its imports
    overlap with what the command does before its first run (listing, creating runs)."""
    if batching.default_parallelism() > 1:
        start_fork_server()


def materialized_since(
    inst: dg.DagsterInstance, run_id: str, cursor: int | None
) -> tuple[set[str], int | None]:
    """The partitions the run materialized after `cursor` (None: from its start), and the new
    cursor. It reads two columns of Dagster's SQL event log (SQLite or PostgreSQL), not the
    events: a progress bar's look each second costs next to nothing. A run its worker has not
    created yet has none (and a look never creates its SQLite database: the worker does)."""
    import dagster as dg
    import sqlalchemy as sa
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable as events
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = inst.event_log_storage
    assert isinstance(storage, SqlEventLogStorage), type(storage)
    run = inst.get_run_by_id(run_id)
    if run is None or run.status == dg.DagsterRunStatus.NOT_STARTED:
        return set(), cursor  # not created yet, or still being created: nothing to read

    query = sa.select(events.c.id, events.c.partition).where(
        events.c.run_id == run_id,
        events.c.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION.value,
        events.c.id > (cursor or 0),
    )
    with storage.run_connection(run_id) as conn:
        rows = conn.execute(query).fetchall()
    return {row.partition for row in rows if row.partition}, max(
        (row.id for row in rows), default=cursor
    )


class _Workers:
    """Executes runs: in this process when `size` is 1, else in up to `size` worker processes.
    The progress bar moves as their shards materialize."""

    def __init__(self, inst: dg.DagsterInstance, size: int, progress: Any) -> None:
        self.inst = inst
        self.size = size
        self.progress = progress
        self.context = worker_context() if size > 1 else None
        if self.context is not None:
            start_workers()
        self.active: dict[Any, _Entry] = {}  # a worker's sentinel -> its entry
        self.done: list[tuple[str, Sequence[str], list[ShardOutcome] | None]] = []
        self._lock = threading.Lock()

    def start(
        self, job_name: str, batch: Sequence[str], run_config: Mapping[str, Any] | None
    ) -> None:
        if self.context is None:
            self._execute_here(create_run(job_name, batch, run_config=run_config), batch)
            return
        run_id = str(uuid.uuid4())
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker,
            args=(
                os.environ["DAGSTER_HOME"],
                worker_tag(),
                job_name,
                list(batch),
                dict(run_config or {}),
                run_id,
                writer,
            ),
            name=f"droughtwatch run {run_id[:8]}",
        )
        process.start()
        writer.close()  # the worker holds the only writer: its exit is the reader's end
        self.active[process.sentinel] = _Entry(process, run_id, batch, reader)

    def _execute_here(self, run: dg.DagsterRun, batch: Sequence[str]) -> None:
        entry = _Entry(None, run.run_id, batch, None)
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(1.0):
                self._advance(entry)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            execute(run)
        finally:
            stop.set()
            watcher.join()
        self._finish(entry)

    def wait_for_room(self, free: int = 1) -> None:
        """Wait until at most `size - free` workers are busy (0: until all are done)."""
        from multiprocessing.connection import wait

        limit = self.size - free if free else 0
        while len(self.active) > limit:
            readers = {e.reader: e for e in self.active.values() if e.reader is not None}
            for ready in wait([*readers, *self.active], timeout=1.0):
                if ready in readers:
                    readers[ready].receive()
                    continue
                entry = self.active.pop(ready)
                entry.receive()
                entry.process.join()
                if entry.process.exitcode != 0:
                    fail_orphaned_runs(self.inst)  # a worker that died mid-run left it started
                self._finish(entry)
            for entry in self.active.values():
                self._advance(entry)

    def _advance(self, entry: _Entry) -> None:
        """Move the progress bar by the entry's shards that materialized since the last look."""
        if self.progress is None or getattr(self.progress, "disable", False):
            return  # no bar, or one tqdm hides (output is not a terminal)
        partitions, entry.cursor = materialized_since(self.inst, entry.run_id, entry.cursor)
        with self._lock:
            new = (partitions & set(entry.batch)) - entry.seen
            entry.seen |= new
            self.progress.update(len(new))

    def _finish(self, entry: _Entry) -> None:
        if self.progress is not None:
            with self._lock:
                self.progress.update(len(entry.batch) - len(entry.seen))
                entry.seen |= set(entry.batch)
        self.done.append((entry.run_id, entry.batch, entry.outcomes))

    def stop(self) -> None:
        """On an interrupt: end the workers (their runs are then failed as orphaned)."""
        for entry in self.active.values():
            entry.process.terminate()
        for entry in self.active.values():
            entry.process.join(10)
        if self.active:
            self.active.clear()
            fail_orphaned_runs(self.inst)


@dataclass
class _Entry:
    """A batch in flight: its worker (None: this process), run, and what came back so far."""

    process: Any
    run_id: str
    batch: Sequence[str]
    reader: Any  # the worker's end of the outcomes pipe, until it is read
    seen: set[str] = field(default_factory=set)
    cursor: int | None = None
    outcomes: list[ShardOutcome] | None = None

    def receive(self) -> None:
        """Read the outcomes the worker sent, if it sent any (it may have died instead)."""
        if self.reader is None:
            return
        try:
            if self.reader.poll():
                self.outcomes = self.reader.recv()
        except (EOFError, OSError):
            pass  # it ended without sending: the outcomes come from its run's events
        self.reader.close()
        self.reader = None


def run_one(
    job_name: str,
    partition: str,
    *,
    run_config: Mapping[str, Any] | None = None,
) -> ShardOutcome:
    """One run of `job_name` for one partition (a variant, for training_job)."""
    inst = instance()
    fail_orphaned_runs(inst)
    run = create_run(job_name, [partition], run_config=run_config)
    execute(run)
    [outcome] = outcomes(inst, run.run_id, [partition])
    return outcome
