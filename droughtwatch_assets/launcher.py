"""The embedded instance's run launcher: runs forked from a process that has already imported
the code, instead of a fresh interpreter each.

Dagster's ``DefaultRunLauncher`` asks the code server to start every run, and the code server
spawns a new Python process for it: the interpreter, Dagster and this project's imports again,
about 3 s on the 2-core machines here before a run's first shard, for every sensor tick's runs,
every lone drop and every run launched from the UI. This launcher starts the run worker as a
fork of a server process (``multiprocessing``'s forkserver, the same one the CLI's workers use:
``droughtwatch_assets.runs``) that imported the definitions and the instance's storage once, so
a run starts in a fraction of a second. The run then executes exactly as Dagster's run worker
executes it (``core_execute_run``), with the same engine events.

- **Code changes.** The server's imports are of the code as it was when it started. Before each
  launch the launcher compares the package's source files (names, sizes, modification times)
  with what the server imported and starts a new server when they differ, so a run never
  executes stale code after an edit (``dagster dev`` reloads its code location the same way).
- **The first run** after the daemon starts is as quick as the rest: the instance's run
  coordinator (``QueuedRunCoordinator`` below, Dagster's with the same config) starts the warm
  process when the daemon starts, while nothing waits for it.
- **Other code locations**, and machines other than Linux (no forkserver, or no ``/proc`` to
  tell a worker's process from a later one with its pid): Dagster's own launching, unchanged.
- **Termination** from the UI sends the worker SIGINT, which Dagster's run worker turns into a
  canceled run, as it does for the code server's termination request; again every 2 s while
  the run goes on, because Dagster drops an interrupt that lands at some points of a step.
- **Health.** The worker's pid and start time are on the run (``droughtwatch/worker``), so run
  monitoring can tell a dead worker from a live one.

It is for the embedded, single-machine instance that ``droughtwatch home`` writes; deployments
use their platform's launcher (``infra/``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dagster import _check as check
from dagster._core.launcher import (
    CheckRunHealthResult,
    DefaultRunLauncher,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.run_coordinator import QueuedRunCoordinator as DagsterQueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from droughtwatch_assets import runs

PACKAGE = Path(__file__).resolve().parent
INTERRUPT_AGAIN_S = 2.0
INTERRUPT_TRIES = 15


def source_fingerprint(package: Path = PACKAGE) -> tuple:
    """What the package's code is now: every source file's path, size and modification time."""
    found = []
    for path in sorted(package.rglob("*.py")):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed while listed
        found.append((str(path.relative_to(package)), stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def forks_this_run(run: DagsterRun) -> bool:
    """A run of this project's code location, on a machine that can fork a warm server and tell
    its workers' processes apart (Linux: forkserver, and /proc for termination and health)."""
    origin = run.job_code_origin
    if (
        origin is None
        or runs.worker_start_method() != "forkserver"
        or runs.process_start(os.getpid()) is None
    ):
        return False
    pointer = origin.repository_origin.code_pointer
    return getattr(pointer, "module", None) == runs.DEFINITIONS_MODULE


class ForkingRunLauncher(RunLauncher, ConfigurableClass):
    """Runs of this project's code as forks of a warm process (module docstring)."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._lock = threading.Lock()
        self._fingerprint: tuple | None = None
        self._default: DefaultRunLauncher | None = None
        self._workers: dict[str, Any] = {}  # run id -> multiprocessing.Process
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: dict
    ) -> ForkingRunLauncher:
        return cls(inst_data=inst_data)

    def _dagster_default(self) -> DefaultRunLauncher:
        if self._default is None:
            self._default = DefaultRunLauncher()
            self._default.register_instance(self._instance)
        return self._default

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if not forks_this_run(run):
            self._dagster_default().launch_run(context)
            return
        with self._lock:
            fingerprint = source_fingerprint(PACKAGE)
            if fingerprint != self._fingerprint:
                if self._fingerprint is not None:
                    runs.stop_workers()  # the code changed: the next fork imports it afresh
                self._fingerprint = fingerprint
            process = runs.worker_context().Process(
                target=runs.launched_worker,
                args=(serialize_value(self._instance.get_ref()), run.run_id),
                name=f"dagster run {run.run_id[:8]}",
            )
            process.start()
            for run_id in [r for r, p in self._workers.items() if not p.is_alive()]:
                del self._workers[run_id]
            self._workers[run.run_id] = process
        self._instance.add_run_tags(run.run_id, {runs.WORKER_TAG: runs.worker_tag(process.pid)})

    def warm(self) -> None:
        """Start the warm process now, in the background, so the first launch need not wait for
        its imports."""

        def start() -> None:
            with self._lock:
                self._fingerprint = source_fingerprint(PACKAGE)
                runs.start_fork_server()

        threading.Thread(target=start, name="warm run launcher", daemon=True).start()

    def _pid(self, run: DagsterRun) -> int | None:
        """The worker's pid, if the process on the run's tag is still that worker."""
        worker = runs.tagged_worker(run.tags.get(runs.WORKER_TAG, ""))
        return worker[0] if worker is not None and worker[1] else None

    def terminate(self, run_id: str) -> bool:
        check.str_param(run_id, "run_id")
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        if not forks_this_run(run):
            return self._dagster_default().terminate(run_id)
        self._instance.report_run_canceling(run)
        pid = self._pid(run)
        if pid is None:
            self._instance.report_engine_event(
                "The run's worker process is gone: nothing to terminate.", run, cls=type(self)
            )
            return False
        threading.Thread(
            target=self._interrupt, args=(run_id, pid), name="terminate", daemon=True
        ).start()
        return True

    def _interrupt(self, run_id: str, pid: int) -> None:
        """SIGINT the worker, which Dagster's run worker turns into a canceled run, again every
        INTERRUPT_AGAIN_S while the run goes on (Dagster drops an interrupt that lands at some
        points between steps' code), up to INTERRUPT_TRIES times."""
        for _ in range(INTERRUPT_TRIES):
            run = self._instance.get_run_by_id(run_id)
            if run is None or run.is_finished or self._pid(run) != pid:
                return
            os.kill(pid, signal.SIGINT)
            time.sleep(INTERRUPT_AGAIN_S)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if not forks_this_run(run):
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "not launched by this launcher")
        if self._pid(run) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, "the run's worker process is gone")

    def join(self, timeout: int = 30) -> None:
        for process in list(self._workers.values()):
            process.join(timeout)

    def dispose(self) -> None:
        if self._default is not None:
            self._default.dispose()


def in_daemon_process() -> bool:
    """This process is the Dagster daemon: ``dagster-daemon run``, or ``dagster dev``'s
    ``python -m dagster._daemon run``."""
    first = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return first.name == "dagster-daemon" or first.parts[-2:] == ("_daemon", "__main__.py")


class QueuedRunCoordinator(DagsterQueuedRunCoordinator):
    """Dagster's QueuedRunCoordinator (the same config) that, in the daemon, warms the
    instance's ForkingRunLauncher as soon as the daemon starts dequeuing."""

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        if in_daemon_process() and isinstance(instance.run_launcher, ForkingRunLauncher):
            instance.run_launcher.warm()
