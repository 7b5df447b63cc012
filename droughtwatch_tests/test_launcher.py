"""The embedded instance's run launcher: runs forked from a warm process, as Dagster's own."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

from droughtwatch_assets import launcher, runs
from droughtwatch_assets.cli import main
from droughtwatch_assets.settings import Settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch, sample_shard_path: Path) -> Path:
    """A home whose data root holds 40 copies of the real sample shard, discovered."""
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for i in range(40):
        target = tmp_path / "data" / "train" / f"part-r-{i:05d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_shard_path, target)
    assert main(["discover"]) == 0
    yield tmp_path
    runs.stop_workers()  # the next test's server imports its own settings


def _launch(keys: list[str]) -> tuple[dg.DagsterInstance, dg.DagsterRun]:
    inst = runs.instance()
    run = runs.create_run("ingest_job", keys)
    inst.launch_run(run.run_id, workspace=None)  # what the daemon does with a dequeued run
    return inst, run


def _wait(inst: dg.DagsterInstance, run_id: str, timeout: float = 120) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while True:
        run = inst.get_run_by_id(run_id)
        if run.is_finished:
            return run
        assert time.monotonic() < deadline, f"run still {run.status} after {timeout} s"
        time.sleep(0.2)


def _engine_messages(inst: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        e.message
        for e in inst.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if e.message
    ]


def test_a_launched_run_is_a_fork_that_executes_like_dagsters_run_worker(home):
    inst, run = _launch(["train/part-r-00000", "train/part-r-00001"])
    assert isinstance(inst.run_launcher, launcher.ForkingRunLauncher)
    ended = _wait(inst, run.run_id)
    assert ended.status == dg.DagsterRunStatus.SUCCESS
    [started] = [m for m in _engine_messages(inst, run.run_id) if m.startswith("Started process")]
    pid = int(started.split("pid: ")[1].rstrip(")."))
    assert pid != os.getpid()
    assert ended.tags[runs.WORKER_TAG].split(":")[1] == str(pid)  # what health checks read
    # The worker records its exit, then exits, just after the run's last event.
    deadline = time.monotonic() + 30
    while inst.run_launcher.check_run_worker_health(ended).status != WorkerStatus.NOT_FOUND:
        assert time.monotonic() < deadline, "the worker still runs 30 s after its run ended"
        time.sleep(0.1)
    assert any(m == f"Process for run exited (pid: {pid})." for m in _engine_messages(
        inst, run.run_id))  # fmt: skip
    done = inst.get_materialized_partitions(dg.AssetKey("spectral_indices"))
    assert done == {"train/part-r-00000", "train/part-r-00001"}


def test_a_code_change_starts_a_new_server_before_the_next_run(home, tmp_path, monkeypatch):
    package = tmp_path / "package"
    package.mkdir()
    (package / "module.py").write_text("A = 1\n")
    monkeypatch.setattr(launcher, "PACKAGE", package)
    inst, first = _launch(["train/part-r-00000"])
    assert _wait(inst, first.run_id).status == dg.DagsterRunStatus.SUCCESS
    server = forkserver._forkserver._forkserver_pid
    assert server is not None
    _, second = _launch(["train/part-r-00001"])  # nothing changed: the same server
    assert forkserver._forkserver._forkserver_pid == server
    assert _wait(inst, second.run_id).status == dg.DagsterRunStatus.SUCCESS

    (package / "module.py").write_text("A = 22\n")  # an edit, as in `dagster dev`
    _, third = _launch(["train/part-r-00002"])
    assert forkserver._forkserver._forkserver_pid not in (None, server)
    assert _wait(inst, third.run_id).status == dg.DagsterRunStatus.SUCCESS


def test_terminating_a_launched_run_cancels_it(home):
    """The shard op retries transient faults, and Dagster applies an op's retry policy to an
    interrupt too: the first interrupts become retries, and the launcher interrupts again every
    INTERRUPT_AGAIN_S until one lands while the step waits to retry, which cancels the run. The
    run must outlast that (a few seconds): 200 shards, the fixture's 40 five times over."""
    for copy in range(40, 200):  # hard links: no more disk
        source = home / "data" / "train" / f"part-r-{copy % 40:05d}"
        os.link(source, home / "data" / "train" / f"part-r-{copy:05d}")
    assert main(["discover"]) == 0
    keys = [f"train/part-r-{i:05d}" for i in range(200)]
    inst, run = _launch(keys)
    deadline = time.monotonic() + 60
    # Once its shards are landing (an interrupt before the step's code runs is Dagster's to
    # honour or drop, as with its own launcher).
    while not runs.materialized_since(inst, run.run_id, None)[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    current = inst.get_run_by_id(run.run_id)
    assert inst.run_launcher.check_run_worker_health(current).status == WorkerStatus.RUNNING
    assert inst.run_launcher.terminate(run.run_id)
    ended = _wait(inst, run.run_id)
    assert ended.status == dg.DagsterRunStatus.CANCELED
    done = inst.get_materialized_partitions(dg.AssetKey("spectral_indices"))
    assert len(done) < len(keys)  # stopped part-way, what landed is kept
    assert not inst.run_launcher.terminate(run.run_id)  # finished: nothing to do


def _run_of(module: str) -> dg.DagsterRun:
    origin = JobPythonOrigin(
        "ingest_job",
        RepositoryPythonOrigin(sys.executable, ModuleCodePointer(module, "defs", os.getcwd())),
    )
    return dg.DagsterRun(job_name="ingest_job", run_id="r", job_code_origin=origin)


def _collector_state(conn) -> None:
    """Run in a worker: what it inherited from the fork server."""
    import gc

    conn.send((gc.isenabled(), gc.get_freeze_count(), runs.DEFINITIONS_MODULE in sys.modules))
    conn.close()


def _in_a_new_worker(target) -> Any:
    """What `target(conn)` sends, run in a worker of a fork server of this test's own."""
    runs.stop_workers()
    context = runs.worker_context()
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(writer,))
    process.start()
    writer.close()
    sent = reader.recv()
    process.join(30)
    runs.stop_workers()
    return sent


@pytest.mark.skipif(runs.worker_start_method() != "forkserver", reason="no forkserver here")
def test_workers_start_with_the_code_imported_and_frozen_and_the_collector_on():
    enabled, frozen, imported = _in_a_new_worker(_collector_state)
    assert imported  # the definitions came with the fork
    assert enabled  # off only while the server imported them (preload.py)
    assert frozen > 100_000  # what they allocated, kept out of the workers' collections


def _page_faults_of_reused_buffers(conn) -> None:
    """Run in a worker: the page faults of twenty shards' worth of buffers, each shard five of
    4 MB (about a thousand pages each) held together, then freed, as a shard's are."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        buffers = [np.ones(4 << 20, np.uint8) for _ in range(5)]
        del buffers
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    conn.close()


@pytest.mark.skipif(runs.worker_start_method() != "forkserver", reason="no forkserver here")
def test_workers_reuse_the_memory_they_free():
    """By default glibc gives buffers this large back to the kernel when they are freed, and the
    kernel faults in each of their pages again for the next: in the workers, freed memory stays
    in the heap for the next shard."""
    if not _glibc():
        pytest.skip("not glibc")
    faults = _in_a_new_worker(_page_faults_of_reused_buffers)
    assert faults < 5_000  # about 40,000 when each buffer is mapped afresh


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


def test_a_preload_module_that_is_gone_is_skipped_as_the_fork_server_skips_it():
    """(In a process of its own: importing preload freezes the importer's objects.)"""
    script = (
        "import gc, sys; import droughtwatch_assets.preload as p; "
        "p.preload(('no_such_module_here', 'colorsys')); "
        "print(gc.isenabled(), 'colorsys' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]  # the rest imported, the collector back on


def test_only_this_projects_runs_are_forked():
    assert launcher.forks_this_run(_run_of(runs.DEFINITIONS_MODULE))
    assert not launcher.forks_this_run(_run_of("someone_elses.definitions"))
    assert not launcher.forks_this_run(dg.DagsterRun(job_name="j", run_id="r"))


def test_without_proc_runs_go_through_dagsters_launcher(monkeypatch):
    monkeypatch.setattr(runs, "process_start", lambda pid: None)  # as on macOS
    assert not launcher.forks_this_run(_run_of(runs.DEFINITIONS_MODULE))


def test_the_source_fingerprint_follows_edits(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    before = launcher.source_fingerprint(tmp_path)
    assert launcher.source_fingerprint(tmp_path) == before
    (tmp_path / "a.py").write_text("x = 12\n")
    assert launcher.source_fingerprint(tmp_path) != before
    (tmp_path / "b.py").write_text("")
    assert len(launcher.source_fingerprint(tmp_path)) == 2


@pytest.mark.parametrize(
    ("argv", "daemon"),
    [
        (["/venv/bin/dagster-daemon", "run"], True),
        (["/venv/lib/python3.11/site-packages/dagster/_daemon/__main__.py", "run"], True),
        (["/venv/bin/dagster-webserver", "-p", "3000"], False),
        (["/venv/bin/droughtwatch", "discover"], False),
        ([], False),
    ],
)
def test_the_daemon_is_told_apart_by_its_command(argv, daemon, monkeypatch):
    monkeypatch.setattr(sys, "argv", argv)
    assert launcher.in_daemon_process() is daemon


def test_the_daemon_starts_the_warm_process_when_it_starts_dequeuing(tmp_path, monkeypatch):
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    runs.stop_workers()
    assert forkserver._forkserver._forkserver_pid is None
    monkeypatch.setattr(sys, "argv", ["/venv/bin/dagster-daemon", "run"])
    inst = runs.instance()
    assert isinstance(inst.run_coordinator, launcher.QueuedRunCoordinator)  # the daemon's first
    deadline = time.monotonic() + 30
    while forkserver._forkserver._forkserver_pid is None:
        assert time.monotonic() < deadline, "no warm process 30 s after the daemon started"
        time.sleep(0.1)
    runs.stop_workers()


def test_runs_are_created_whatever_state_storage_another_instance_left(home, tmp_path):
    """Dagster keeps a process-wide "current" definitions-state storage that entering an
    instance sets; one left behind by an instance since collected must not break create_run."""
    import gc

    from dagster._core.storage.defs_state.base import set_defs_state_storage

    (tmp_path / "other").mkdir()
    other = dg.DagsterInstance.from_config(str(tmp_path / "other"))
    stale = other.defs_state_storage
    other.dispose()
    del other
    gc.collect()
    with set_defs_state_storage(stale):
        runs._code_location.cache_clear()
        run = runs.create_run("ingest_job", ["train/part-r-00000"])
    assert run.tags[runs.TRIGGER_TAG] == "cli"


def test_a_cli_worker_killed_mid_run_fails_only_its_own_batch(home, monkeypatch):
    """`droughtwatch discover --materialize`'s workers each create and execute one batch's run
    and send its outcomes back. One killed mid-run (`kill -9`, the OOM killer): the command goes
    on, the other batches land, the dead one's run is failed and its shards are reported from
    the run's own events (what landed before the kill is ok, the rest failed)."""
    keys = [f"train/part-r-{i:05d}" for i in range(40)]
    inst = runs.instance()
    started: list = []
    start = runs._Workers.start

    def recording(self, *args):
        start(self, *args)
        started.append(list(self.active.values())[-1])

    monkeypatch.setattr(runs._Workers, "start", recording)

    def kill_the_first_mid_run() -> None:
        deadline = time.monotonic() + 120
        while not started or not runs.materialized_since(inst, started[0].run_id, None)[0]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(started[0].process.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_first_mid_run)
    killer.start()
    settings = dataclasses.replace(Settings.from_env(), shards_per_run=10)
    outcomes = runs.run_batches("ingest_job", keys, settings=settings, parallel=2)
    killer.join()

    assert [o.key for o in outcomes] == keys
    killed = started[0]
    assert inst.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
    landed = inst.get_materialized_partitions(dg.AssetKey("spectral_indices"))
    for outcome in outcomes:
        if outcome.key in killed.batch:
            assert outcome.ok == (outcome.key in landed), outcome
        else:
            assert outcome.ok, outcome
            assert outcome.key in landed
    assert not set(killed.batch) <= landed  # it did die mid-run
    assert len(started) == 4 and all(e.outcomes is not None for e in started[1:])


def test_a_shards_report_lands_only_once_its_events_are_in_the_database(home, monkeypatch):
    """The raw report in the lake tells discovery a shard is in, so it is written only once the
    shard's events are in the event log's files, as another process (the next command, the
    webserver) reads them: the embedded event log buffers a run's shard events."""
    import json
    import sqlite3

    from droughtwatch_assets.defs.ingest.assets import Ingested

    index = Path(os.environ["DAGSTER_HOME"]) / "history" / "runs" / "index.db"
    found: dict[str, int] = {}
    commit = Ingested.commit

    def checked(self, lake_store):
        key = json.loads(bytes(self.report[1]))["key"]
        conn = sqlite3.connect(index)  # not the run's connection: what another process sees
        [(found[key],)] = conn.execute(
            "SELECT count(*) FROM event_logs WHERE partition = ? AND dagster_event_type = ?",
            (key, "ASSET_MATERIALIZATION"),
        ).fetchall()
        conn.close()
        commit(self, lake_store)

    monkeypatch.setattr(Ingested, "commit", checked)
    keys = [f"train/part-r-{i:05d}" for i in range(4)]
    settings = dataclasses.replace(Settings.from_env(), shards_per_run=10)
    outcomes = runs.run_batches("ingest_job", keys, settings=settings, parallel=1)  # here
    assert all(o.ok for o in outcomes)
    assert found == {key: 3 for key in keys}  # raw, filtered and indices, before the report


def test_outcomes_name_each_shards_failed_and_warned_checks(home, monkeypatch):
    """A run's outcomes read its failed check results from the event log's index of check
    executions (a few rows, not every evaluation): the bad shard is failed by name with its
    check's reason, the others warn, and a storage without that index, read from every check
    event, gives the same outcomes."""
    from dagster._core.storage.event_log import sql_event_log

    from droughtwatch_assets.defs.ingest import checks as ingest_checks

    keys = [f"train/part-r-{i:05d}" for i in range(3)]
    bad = home / "data" / keys[1]
    bad.write_bytes(bad.read_bytes()[:100_000])  # cut mid-record
    monkeypatch.setattr(ingest_checks, "BLANK_WARN_FRACTION", -1.0)  # every kept shard warns
    settings = dataclasses.replace(Settings.from_env(), shards_per_run=10)
    outcomes = runs.run_batches("ingest_job", keys, settings=settings, parallel=1)  # here

    by_key = {o.key: o for o in outcomes}
    assert not by_key[keys[1]].ok
    assert "raw_tfrecords:schema_and_labels" in by_key[keys[1]].failed_checks
    assert by_key[keys[1]].error  # the check's description: why the shard does not decode
    assert by_key[keys[1]].warned_checks == []  # it never reached the filter
    for key in (keys[0], keys[2]):
        assert by_key[key].ok and by_key[key].failed_checks == [], by_key[key]
        assert by_key[key].warned_checks == ["filtered_images:blank_fraction"]
    inst = runs.instance()
    [run] = inst.get_runs()
    assert runs.outcomes(inst, run.run_id, keys) == outcomes
    monkeypatch.setattr(sql_event_log, "SqlEventLogStorage", type("NotSql", (), {}))
    assert runs.outcomes(inst, run.run_id, keys) == outcomes


def test_a_worker_that_died_before_its_run_existed_fails_its_shards(home):
    [outcome] = runs._outcomes_of(runs.instance(), "no-such-run", ["train/part-r-00000"])
    assert not outcome.ok
    assert outcome.error.startswith("its worker process ended before it created the run")


def test_a_run_whose_worker_died_before_executing_it_is_failed(home):
    """A worker killed between creating its batch's run and executing it leaves the run not
    started: the next command marks it failed, as it does a run killed mid-way."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tag = runs.worker_tag(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    run = runs.create_run("ingest_job", ["train/part-r-00000"], tags={runs.WORKER_TAG: tag})
    inst = runs.instance()
    assert inst.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.NOT_STARTED
    assert runs.fail_orphaned_runs(inst) == [run.run_id]
    assert inst.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
