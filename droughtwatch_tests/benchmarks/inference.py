"""The inference benchmark: predictions/s of the `baseline` champion on the sample corpus, and the
latency from a drop's upload to its monitoring row with `dagster dev` and the drop sensor running.

Run `python -m droughtwatch_tests.benchmarks.inference --help`; a full run rewrites
docs/benchmarks-inference.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droughtwatch_tests.benchmarks.ingest import machine, measuring_arguments

VARIANT = "baseline"
CHAMPION = "champion"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path(".droughtwatch/bench")
DEFAULT_DOCS = Path("docs/benchmarks-inference.md")
COMMAND = ".venv/bin/python -m droughtwatch_tests.benchmarks.inference"
DEFAULT_SENSOR_INTERVAL = 30  # the code location's default (DROUGHTWATCH_SENSOR_INTERVAL)
# Variables that would point the throwaway home at a user's real services: never inherited.
FOREIGN_ENV = (
    "DROUGHTWATCH_DATA_ROOT",
    "DROUGHTWATCH_LAKE",
    "DROUGHTWATCH_S3_ENDPOINT_URL",
    "DROUGHTWATCH_METRICS_DB_URL",
    "DROUGHTWATCH_MLFLOW_ARTIFACTS",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "DAGSTER_PG_URL",
)
DROP_ROOT = "drop-root"
STUCK_HINT = (
    "The drop sensor did not pick the drop up; its log in dagster dev's output says what it "
    "listed. --separate-drop-root measures the latency with a data root that holds only the "
    "drops."
)
# Every process `dagster dev` starts inherits this variable; it finds stragglers to stop.
TAG_ENV = "DROUGHTWATCH_BENCH_TAG"

Log = Callable[[str], None]


class BenchmarkError(RuntimeError):
    """The benchmark could not measure: the message says which step failed and why."""


def _log(message: str) -> None:
    print(f"[inference-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class BenchSettings:
    train: int = 3_000
    val: int = 1_000
    records_per_shard: int = 500
    drops: int = 3
    records_per_drop: int = 250
    epochs: int = 2
    repeats: int = 3  # timed passes of predict_shard over every shard
    rescore_repeats: int = 2  # in-process rescore_job runs per shard
    latency_drops: int = 3  # 0: no latency phase
    sensor_interval: int = 5
    latency_timeout: float = 180.0
    # Run dagster dev on a data root holding only the timed drops (see STUCK_HINT).
    separate_drop_root: bool = False
    cache_dir: Path = DEFAULT_CACHE
    keep_home: bool = False


# --- the throwaway home


def home_env(home: Path) -> dict[str, str]:
    """The environment of everything the benchmark runs: embedded defaults under `home` only."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update(
        DROUGHTWATCH_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        MLFLOW_DISABLE_TELEMETRY="true",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


@contextlib.contextmanager
def using_home(home: Path) -> Iterator[Any]:
    """Point this process at `home` (the CLI functions read the environment); yields its
    droughtwatch Settings and restores the environment afterwards."""
    from droughtwatch_assets.settings import Settings

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(home_env(home))
    try:
        yield Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _cli(*args: str) -> None:
    from droughtwatch_assets import cli

    code = cli.main(list(args))
    if code != 0:
        raise BenchmarkError(f"`droughtwatch {' '.join(args)}` exited with {code} (output above)")


def champion_version(settings: Any) -> str | None:
    """The version the `baseline` champion alias points at in the home's tracking store."""
    from droughtwatch_assets.adapters.tracking import (
        Tracking,
        default_artifact_root,
        default_tracking_uri,
    )

    tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
    return tracking.alias_version(VARIANT, CHAMPION)


def prepare(bench: BenchSettings, settings: Any, *, log: Log = _log) -> dict[str, Any]:
    """sample-data, discover --materialize and train baseline in the home `settings` point at
    (this process's environment must point there too: see `using_home`); returns step times.

    Raises BenchmarkError when a step fails or the gate refuses to promote the trained model.
    """
    times: dict[str, float] = {}
    steps = [
        (
            "sample-data",
            [
                "sample-data", "--train", str(bench.train), "--val", str(bench.val),
                "--records-per-shard", str(bench.records_per_shard), "--drops", str(bench.drops),
                "--records-per-drop", str(bench.records_per_drop),
            ],
        ),
        ("discover --materialize", ["discover", "--materialize"]),
        (
            f"train {VARIANT} --epochs {bench.epochs}",
            ["train", VARIANT, "--epochs", str(bench.epochs)],
        ),
    ]  # fmt: skip
    for name, args in steps:
        log(f"droughtwatch {name} ...")
        started = time.perf_counter()
        _cli(*args)
        times[name] = time.perf_counter() - started
    version = champion_version(settings)
    if version is None:
        raise BenchmarkError(
            f"training {VARIANT} for {bench.epochs} epochs on {bench.train:,} records promoted no "
            "champion (the gate refused it: see the `registered ...` line above), so there is "
            "nothing to score; try more records (--train) or epochs (--epochs)"
        )
    log(f"{VARIANT} champion: version {version}")
    return times


# --- throughput


def ingested_keys(
    settings: Any, prefixes: Sequence[str] = ("train/", "val/", "drops/")
) -> list[str]:
    """Shards whose spectral indices are in the lake, in key order."""
    from droughtwatch_assets.adapters.storage import open_store
    from droughtwatch_assets.pipeline.lake import SPECTRAL_INDICES, object_key

    lake = open_store(settings.lake, endpoint_url=settings.s3_endpoint_url)
    folder, suffix = object_key(SPECTRAL_INDICES, "").split("/")  # where and what the lake keeps
    return sorted(
        info.key.removeprefix(f"{folder}/").removesuffix(suffix)
        for prefix in prefixes
        for info in lake.list(f"{folder}/{prefix}")
        if info.key.endswith(suffix)
    )


def measure_predictions(
    settings: Any, keys: Sequence[str], repeats: int, *, log: Log = _log
) -> dict[str, Any]:
    """What batch_predictions does, without Dagster: the champion loaded once with
    `Tracking.load_model`, then `predict_shard` on every shard's filtered images and indices
    read from the lake. Times the model load, the lake reads, the first (cold) call and
    `repeats` warm passes over all shards."""
    import keras  # imported before the clock starts: the import is not the model load

    from droughtwatch_assets.adapters.storage import open_store
    from droughtwatch_assets.adapters.tracking import (
        Tracking,
        default_artifact_root,
        default_tracking_uri,
    )
    from droughtwatch_assets.core.imagestack import dataset_from_arrow
    from droughtwatch_assets.core.training import predict_shard
    from droughtwatch_assets.core.variants import get_variant
    from droughtwatch_assets.pipeline.lake import FILTERED_IMAGES, SPECTRAL_INDICES, object_key

    if not keys:
        raise BenchmarkError(f"no ingested shards in {settings.lake}: nothing to predict")
    variant = get_variant(VARIANT)
    started = time.perf_counter()
    tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
    version = tracking.alias_version(variant.name, CHAMPION)
    if version is None:
        raise BenchmarkError(f"{VARIANT} has no champion in {settings.home}: train one first")
    model = tracking.load_model(variant.name, version=version)
    load_s = time.perf_counter() - started

    lake = open_store(settings.lake, endpoint_url=settings.s3_endpoint_url)
    started = time.perf_counter()
    shards = [
        (
            dataset_from_arrow(lake.read_bytes(object_key(FILTERED_IMAGES, key))),
            dataset_from_arrow(lake.read_bytes(object_key(SPECTRAL_INDICES, key))),
        )
        for key in keys
    ]
    read_s = time.perf_counter() - started
    images = sum(int(f.sizes["image"]) for f, _ in shards)

    started = time.perf_counter()
    first, _ = predict_shard(model, *shards[0], variant)
    first_call_s = time.perf_counter() - started

    passes = []
    for rep in range(repeats):
        started = time.perf_counter()
        predicted = 0
        for filtered, indices in shards:
            probabilities, _ = predict_shard(model, filtered, indices, variant)
            if probabilities.shape != (filtered.sizes["image"], 4) or not np.allclose(
                probabilities.sum(axis=1), 1.0, atol=1e-3
            ):
                raise BenchmarkError(
                    f"predictions of shape {probabilities.shape} for "
                    f"{filtered.sizes['image']} images, or rows not summing to 1"
                )
            predicted += len(probabilities)
        seconds = time.perf_counter() - started
        passes.append(seconds)
        log(f"  pass {rep + 1}: {predicted:,} predictions in {seconds:.2f} s")
    rates = [images / s for s in passes]
    return {
        "model_version": version,
        "keras": keras.__version__,
        "shards": len(keys),
        "images": images,
        "first_shard_images": len(first),
        "model_load_seconds": load_s,
        "lake_read_seconds": read_s,
        "first_call_seconds": first_call_s,
        "pass_seconds": passes,
        "predictions_per_s": rates,
        "median_predictions_per_s": statistics.median(rates),
    }


def measure_rescore(
    settings: Any, keys: Sequence[str], repeats: int, *, log: Log = _log
) -> dict[str, Any]:
    """The whole rescore_job (batch_predictions + monitoring_metrics) per shard, in-process
    through `droughtwatch_assets.cli.score_shards`, as `droughtwatch score --again` runs it."""
    from droughtwatch_assets.cli import score_shards

    runs = []
    for rep in range(repeats):
        for key in keys:
            started = time.perf_counter()
            [outcome] = score_shards(settings, [key])
            seconds = time.perf_counter() - started
            if not outcome.ok:
                raise BenchmarkError(f"rescore_job failed for {key}: {outcome.error}")
            predictions = int(outcome.metadata["batch_predictions.predictions"])
            runs.append({"key": key, "repeat": rep, "seconds": seconds, "predictions": predictions})
            log(f"  rescore {key}: {predictions} predictions in {seconds:.2f} s")
    per_shard = [r["seconds"] for r in runs]
    per_pass = [
        sum(r["predictions"] for r in runs if r["repeat"] == rep)
        / sum(r["seconds"] for r in runs if r["repeat"] == rep)
        for rep in range(repeats)
    ]
    return {
        "shards": len(keys),
        "runs": runs,
        "median_seconds_per_shard": statistics.median(per_shard),
        "predictions_per_s": per_pass,
        "median_predictions_per_s": statistics.median(per_pass),
    }


# --- latency: dagster dev with the drop sensor running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries TAG_ENV=tag: what this benchmark started, and their
    descendants (they inherit the environment)."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def stop_tagged(tag: str, grace: float = 10.0) -> list[int]:
    """SIGTERM, then after `grace` seconds SIGKILL, every process tagged `tag`; returns the
    ones that needed the SIGKILL."""
    for pid in tagged_pids(tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    stubborn = tagged_pids(tag)
    for pid in stubborn:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return stubborn


@dataclass
class DagsterDev:
    process: subprocess.Popen
    port: int
    log_path: Path
    tag: str

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def dagster_dev(
    home: Path, sensor_interval: int, data_root: Path | None = None, *, log: Log = _log
) -> Iterator[DagsterDev]:
    """`dagster dev` on the code location (webserver + daemon), stopped on exit whatever
    happened: SIGTERM to its process group, then any tagged process left is stopped too."""
    tag = uuid.uuid4().hex
    port = free_port()
    env = {
        **home_env(home),
        "DROUGHTWATCH_SENSOR_INTERVAL": str(sensor_interval),
        TAG_ENV: tag,
    }
    if data_root is not None:
        env["DROUGHTWATCH_DATA_ROOT"] = str(data_root)
    dagster = Path(sys.executable).with_name("dagster")
    log_path = home / "dagster-dev.log"
    command = [
        "env", "--default-signal=INT,TERM", str(dagster), "dev",
        "-m", "droughtwatch_assets.definitions", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: one signal reaches all of it
        )  # fmt: skip
    dev = DagsterDev(process, port, log_path, tag)
    try:
        yield dev
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        stubborn = stop_tagged(tag)
        if stubborn:
            log(f"stopped {len(stubborn)} leftover dagster process(es) with SIGKILL: {stubborn}")


def wait_for_webserver(dev: DagsterDev, timeout: float) -> float:
    """Seconds until the webserver answers /server_info."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{dev.port}/server_info"
    while time.monotonic() - started < timeout:
        if dev.process.poll() is not None:
            raise BenchmarkError(
                f"dagster dev exited with {dev.process.returncode}:\n{dev.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise BenchmarkError(f"dagster dev did not answer {url} in {timeout:.0f} s:\n{dev.log_tail()}")


def _sensor_ticks(instance: Any, name: str) -> int:
    from dagster._core.definitions.run_request import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.name == name:
            return len(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5))
    return 0


def wait_for_sensor_tick(dev: DagsterDev, instance: Any, timeout: float) -> float:
    """Seconds until the daemon has evaluated drop_sensor at least once."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if dev.process.poll() is not None:
            raise BenchmarkError(
                f"dagster dev exited with {dev.process.returncode}:\n{dev.log_tail()}"
            )
        if _sensor_ticks(instance, "drop_sensor"):
            return time.monotonic() - started
        time.sleep(0.5)
    raise BenchmarkError(
        f"drop_sensor did not tick within {timeout:.0f} s of the webserver answering: is it "
        f"stopped in this instance?\n{dev.log_tail()}"
    )


def upload_drop(
    store: Any, shards: dict[str, bytes], n: int, *, after: Any = None
) -> tuple[str, float]:
    """Copy a val shard to the next dated drop (after the latest in `store` and `after`), as
    `droughtwatch emulate-drops` does; returns its key and the time the upload completed."""
    known = sorted(
        d
        for s in (store, after or store)
        for p in s.list_prefixes("drops/")
        if len(d := p.rstrip("/").rsplit("/", 1)[-1]) == 10
    )
    day = dt.date.fromisoformat(known[-1]) + dt.timedelta(days=1) if known else dt.date.today()
    key = f"drops/{day.isoformat()}/part-r-00000"
    sources = sorted(shards)
    store.write_bytes(key, shards[sources[n % len(sources)]])
    return key, time.time()


def monitoring_recorded_at(engine: Any, shard_key: str) -> float | None:
    """When monitoring_metrics wrote its row for the shard (epoch seconds), if it has."""
    import sqlalchemy as sa

    from droughtwatch_assets.adapters.metricsdb import monitoring_metrics

    with engine.connect() as conn:
        found = conn.execute(
            sa.select(sa.func.max(monitoring_metrics.c.recorded_at)).where(
                monitoring_metrics.c.shard_key == shard_key
            )
        ).scalar()
    if found is None:
        return None
    if isinstance(found, str):  # SQLite hands aggregates back untyped
        found = dt.datetime.fromisoformat(found)
    return found.replace(tzinfo=dt.UTC).timestamp() if found.tzinfo is None else found.timestamp()


def _run_breakdown(instance: Any, key: str) -> dict[str, Any]:
    """The drop_job run of a shard: when the sensor created it, when it started and ended."""
    import dagster as dg

    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name="drop_job", tags={"dagster/partition": key}), limit=1
    )
    if not records:
        return {}
    record = records[0]
    return {
        "run_id": record.dagster_run.run_id,
        "status": record.dagster_run.status.value,
        "created": record.create_timestamp.timestamp(),
        "started": record.start_time,
        "ended": record.end_time,
    }


def measure_latency(bench: BenchSettings, settings: Any, *, log: Log = _log) -> dict[str, Any]:
    """Start dagster dev, wait for the webserver and a first drop_sensor tick, then upload
    `latency_drops` drops one after another and time each from upload to its metrics row."""
    import dagster as dg

    from droughtwatch_assets.adapters import metricsdb
    from droughtwatch_assets.adapters.storage import open_store

    home = Path(settings.home)
    source_store = open_store(settings.data_root, endpoint_url=settings.s3_endpoint_url)
    sources = sorted(
        i.key for i in source_store.list("val/") if i.key.rsplit("/", 1)[-1].startswith("part-")
    )
    if not sources:
        raise BenchmarkError(f"no val/ shards in {source_store.uri} to copy drops from")
    shards = {key: source_store.read_bytes(key) for key in sources}
    drop_root = None
    store = source_store
    if bench.separate_drop_root:
        drop_root = home / DROP_ROOT
        drop_root.mkdir(exist_ok=True)
        store = open_store(str(drop_root))
    # No drop_job run this long after an upload: the sensor did not find the drop.
    stuck_after = max(60.0, 6.0 * bench.sensor_interval)
    engine = metricsdb.connect(metricsdb.database_url(settings))
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    phase_started = time.time()
    drops = []
    log(f"starting dagster dev (DROUGHTWATCH_SENSOR_INTERVAL={bench.sensor_interval}) ...")
    with dagster_dev(home, bench.sensor_interval, drop_root, log=log) as dev:
        webserver_s = wait_for_webserver(dev, timeout=180)
        log(f"  webserver answers on port {dev.port} after {webserver_s:.1f} s")
        tick_s = wait_for_sensor_tick(dev, instance, timeout=180)
        log(f"  drop_sensor ticked {tick_s:.1f} s later")
        for n in range(bench.latency_drops):
            key, uploaded = upload_drop(store, shards, n, after=source_store)
            log(f"  uploaded {key}")
            while (recorded := monitoring_recorded_at(engine, key)) is None:
                waited = time.time() - uploaded
                if waited > stuck_after and not _run_breakdown(instance, key):
                    raise BenchmarkError(
                        f"drop_sensor requested no run for {key} within {waited:.0f} s of its "
                        f"upload. {'' if drop_root else STUCK_HINT}\nLast of the dagster dev "
                        f"log:\n{dev.log_tail(1500)}"
                    )
                if waited > bench.latency_timeout:
                    run = _run_breakdown(instance, key)
                    raise BenchmarkError(
                        f"no monitoring_metrics row for {key} within {bench.latency_timeout:.0f} s "
                        f"of its upload (drop_job run: {run}); dagster dev log:\n{dev.log_tail()}"
                    )
                if dev.process.poll() is not None:
                    raise BenchmarkError(
                        f"dagster dev exited with {dev.process.returncode}:\n{dev.log_tail()}"
                    )
                time.sleep(0.25)
            seen = time.time()
            # The run's end is stored just after the row: wait for it, briefly, for the breakdown.
            deadline = time.time() + 20
            while (
                not (run := _run_breakdown(instance, key)).get("ended") and time.time() < deadline
            ):
                time.sleep(0.25)
            drop = {"key": key, "uploaded": uploaded, "recorded": recorded, "seen": seen, **run}
            drop["latency_seconds"] = recorded - uploaded
            drops.append(drop)
            parts = _breakdown(drop)
            log(
                f"  {key}: row recorded {drop['latency_seconds']:.1f} s after the upload ("
                + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
                + ")"
            )
    other = [
        r.dagster_run.job_name
        for r in instance.get_run_records(
            filters=dg.RunsFilter(created_after=dt.datetime.fromtimestamp(phase_started, dt.UTC))
        )
        if r.dagster_run.job_name != "drop_job"
    ]
    latencies = [d["latency_seconds"] for d in drops]
    return {
        "sensor_interval_s": bench.sensor_interval,
        "webserver_ready_seconds": webserver_s,
        "first_tick_seconds": tick_s,
        "drops": drops,
        "latencies_seconds": latencies,
        "median_latency_seconds": statistics.median(latencies),
        "drop_records": _drop_records(shards),
        "separate_drop_root": bench.separate_drop_root,
        "other_runs": {job: other.count(job) for job in sorted(set(other))},
        "leftover_processes": len(tagged_pids(dev.tag)),
    }


def _drop_records(shards: dict[str, bytes]) -> list[int]:
    from droughtwatch_assets.core.tfrecord import iter_record_payloads

    return [sum(1 for _ in iter_record_payloads(data, key)) for key, data in shards.items()]


BREAKDOWN = ("sensor", "queue + launch", "run")


def _breakdown(drop: dict[str, Any]) -> dict[str, float]:
    """Upload -> run created (sensor), -> run started (queue, launch, code load), -> row."""
    if not drop.get("created") or not drop.get("started"):
        return {}
    return {
        "sensor": drop["created"] - drop["uploaded"],
        "queue + launch": drop["started"] - drop["created"],
        "run": drop["recorded"] - drop["started"],
    }


# --- the whole benchmark


def bench_machine() -> dict[str, str]:
    from importlib.metadata import version

    info = machine()
    for package in ("dagster", "mlflow", "keras", "tensorflow-cpu"):
        try:
            info[package] = version(package)
        except Exception:  # not installed under this name
            info[package] = "-"
    return info


def run_benchmark(bench: BenchSettings, *, log: Log = _log) -> dict[str, Any]:
    """Setup in a throwaway home, throughput, in-process rescore, latency; returns all figures."""
    started = time.perf_counter()
    home = (
        Path(bench.cache_dir) / f"inference-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    ).resolve()
    home.mkdir(parents=True)
    log(f"throwaway DROUGHTWATCH_HOME={home}")
    try:
        with using_home(home) as settings:
            setup = prepare(bench, settings, log=log)
            keys = ingested_keys(settings)
            log(f"throughput: predict_shard over {len(keys)} shards, {bench.repeats} passes ...")
            throughput = measure_predictions(settings, keys, bench.repeats, log=log)
            log(
                f"  median {throughput['median_predictions_per_s']:,.0f} predictions/s; model "
                f"load {throughput['model_load_seconds']:.2f} s"
            )
            rescore_keys = ingested_keys(settings, ("val/", "drops/"))
            log(f"rescore_job in-process: {len(rescore_keys)} shards x {bench.rescore_repeats} ...")
            rescore = measure_rescore(settings, rescore_keys, bench.rescore_repeats, log=log)
            latency = None
            if bench.latency_drops > 0:
                latency = measure_latency(bench, settings, log=log)
    finally:
        if not bench.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    return {
        "machine": bench_machine(),
        "settings": {k: str(v) for k, v in asdict(bench).items()},
        "setup_seconds": setup,
        "throughput": throughput,
        "rescore": rescore,
        "latency": latency,
        "total_seconds": time.perf_counter() - started,
    }


# --- reporting


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _each(values: Sequence[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def result_rows(report: dict[str, Any]) -> list[list[str]]:
    t, r, lat = report["throughput"], report["rescore"], report["latency"]
    rows = [
        [
            "predict_shard, model loaded once (predictions/s)",
            f"{t['median_predictions_per_s']:,.0f}",
            _each(t["predictions_per_s"], ",.0f"),
        ],
        ["model load (`Tracking.load_model`, s)", f"{t['model_load_seconds']:.2f}", "-"],
        [
            "rescore_job per shard, in-process (s)",
            f"{r['median_seconds_per_shard']:.2f}",
            _each([x["seconds"] for x in r["runs"]], ".2f"),
        ],
        [
            "rescore_job, predictions/s incl. Dagster",
            f"{r['median_predictions_per_s']:,.0f}",
            _each(r["predictions_per_s"], ",.0f"),
        ],
    ]
    if lat is not None:
        rows.append([
            f"drop upload -> metrics row (s, sensor every {lat['sensor_interval_s']} s)",
            f"{lat['median_latency_seconds']:.1f}",
            _each(lat["latencies_seconds"], ".1f"),
        ])  # fmt: skip
    return rows


RESULT_HEADER = ("figure", "median", "each run")


def latency_rows(latency: dict[str, Any]) -> list[list[str]]:
    rows = []
    for d in latency["drops"]:
        parts = _breakdown(d)
        rows.append([
            f"`{d['key']}`",
            f"{d['latency_seconds']:.1f}",
            *(f"{parts[k]:.1f}" if k in parts else "-" for k in BREAKDOWN),
        ])  # fmt: skip
    return rows


LATENCY_HEADER = (
    "drop", "upload -> row (s)", "upload -> run created (s)", "created -> started (s)",
    "started -> row (s)",
)  # fmt: skip


def format_summary(report: dict[str, Any]) -> str:
    m = report["machine"]
    parts = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Python {m['python']}, "
        f"Keras {m['keras']}, dagster {m['dagster']}, {m['date']}",
        "",
        _table(RESULT_HEADER, result_rows(report)),
    ]
    if report["latency"] is not None:
        parts += ["", _table(LATENCY_HEADER, latency_rows(report["latency"]))]
    return "\n".join(parts)


def _latency_section(report: dict[str, Any]) -> str:
    lat = report["latency"]
    if lat is None:
        return "The latency phase was not run (`--latency-drops 0`)."
    interval = lat["sensor_interval_s"]
    others = ", ".join(f"{n} {job}" for job, n in lat["other_runs"].items())
    others_text = (
        f"Other runs the instance started during this phase: {others} (declarative automation "
        "keeps `training_corpus` current when shards land); they compete for the same cores."
        if others
        else "The instance started no other run during this phase."
    )
    sensor = [p["sensor"] for d in lat["drops"] if (p := _breakdown(d))]
    sensor_text = (
        f"The sensor's share (upload -> run created) was {_each(sensor, '.1f')} s here."
        if sensor
        else ""
    )
    records = " or ".join(f"{n:,}" for n in sorted(set(lat["drop_records"])))
    root_text = (
        "\n**dagster dev ran on a data root holding only these drops** "
        "(`--separate-drop-root`).\n"
        if lat["separate_drop_root"]
        else ""
    )
    return f"""{_table(LATENCY_HEADER, latency_rows(lat))}

`dagster dev` answered on its port {lat["webserver_ready_seconds"]:.0f} s after it was started
and `drop_sensor` had ticked {lat["first_tick_seconds"]:.0f} s after that; the drops were
uploaded only then, one at a time, each after the previous one's row was in. Each drop is a
copy of a val shard ({records} records). {sensor_text}
{root_text}
**The sensor interval.** These runs used `DROUGHTWATCH_SENSOR_INTERVAL={interval}`. A drop
lands at a random moment between two ticks, so it waits on average half the interval for the
sensor to see it: {interval / 2:.1f} s here, and {DEFAULT_SENSOR_INTERVAL / 2:.0f} s with the
default of {DEFAULT_SENSOR_INTERVAL} s (up to {DEFAULT_SENSOR_INTERVAL} s), so with the default
expect the median above plus about {(DEFAULT_SENSOR_INTERVAL - interval) / 2:.1f} s. The rest
is the run: the daemon dequeues it and starts a run process that loads the code location
(created -> started), then Dagster's default multiprocess executor runs the run's steps
(ingest, `batch_predictions`, `monitoring_metrics`) one after another, each in a fresh process
that imports the code location again, and `batch_predictions` TensorFlow and the champion too
(started -> row): process starts and imports, not predictions, are most of this time.

{others_text} Processes left after dagster dev was stopped: {lat["leftover_processes"]}."""


def format_docs(report: dict[str, Any], arguments: str = "") -> str:
    """docs/benchmarks-inference.md: figures, method, command and machine."""
    m = report["machine"]
    s = report["settings"]
    t = report["throughput"]
    r = report["rescore"]
    setup = report["setup_seconds"]
    ran_text = f"; these figures come from `{COMMAND} {arguments}`" if arguments else ""
    per_shard_overhead = r["median_seconds_per_shard"] - (
        statistics.median(x["predictions"] for x in r["runs"]) / t["median_predictions_per_s"]
    )
    return f"""# Inference benchmark

`make bench-inference` runs `{COMMAND}`{ran_text}. It measures how fast the `{VARIANT}` champion
scores the sample corpus, and how long a drop takes from its upload to its row in the
`monitoring_metrics` table with `dagster dev` and the drop sensor running.

## Results

Measured {m["date"]} on {m["cpu"]}, {m["cores"]} cores, {m["memory"]} memory, {m["os"]},
Python {m["python"]}, Keras {m["keras"]} (TensorFlow {m["tensorflow-cpu"]}, CPU), dagster
{m["dagster"]}, MLflow {m["mlflow"]}. Other sessions share this machine, so figures vary from
run to run: each row gives the median and every run.

{_table(RESULT_HEADER, result_rows(report))}

The champion (version {t["model_version"]}) scored {t["images"]:,} kept images in
{t["shards"]} shards per pass. Reading them from the lake (Arrow IPC) took
{t["lake_read_seconds"]:.2f} s and is not in the predictions/s figure; the first call after the
load (graph tracing) took {t["first_call_seconds"]:.2f} s for {t["first_shard_images"]} images
and is not in it either. A `rescore_job` run pays both, plus loading the model and the
training reference profile from MLflow, the metrics-database upsert and Dagster's own
bookkeeping, once per shard: about {per_shard_overhead:.1f} s per shard more than the
prediction alone, which is why its predictions/s figure is much lower on shards of a few
hundred images.

### Drop latency

{_latency_section(report)}

Total benchmark time: {report["total_seconds"] / 60:.1f} minutes (setup:
{", ".join(f"{k} {v:.0f} s" for k, v in setup.items())}).

## Method

- **Setup** in a throwaway `DROUGHTWATCH_HOME` under `{s["cache_dir"]}/inference-*` (deleted
  afterwards unless `--keep-home`), every service embedded (SQLite Dagster instance, SQLite
  MLflow store, SQLite metrics database, local data root and lake; variables pointing
  elsewhere, such as `MLFLOW_TRACKING_URI`, are dropped): `droughtwatch sample-data --train
  {s["train"]} --val {s["val"]} --records-per-shard {s["records_per_shard"]} --drops
  {s["drops"]} --records-per-drop {s["records_per_drop"]}`, `droughtwatch discover
  --materialize`, `droughtwatch train {VARIANT} --epochs {s["epochs"]}` (the benchmark stops
  with a message if the gate does not promote the model), all through the CLI's own functions
  in the benchmark's process.
- **Predictions/s**: what `batch_predictions` does, without Dagster: `Tracking.load_model` of
  the champion once (timed, Keras already imported), every ingested shard's `filtered_images`
  and `spectral_indices` read from the lake, one untimed warm-up call, then {s["repeats"]}
  timed passes of `core.training.predict_shard` (batches of 256) over all shards; kept images
  divided by the wall time of a pass. Every pass checks that each shard got one row per image
  and that the probabilities sum to 1.
- **rescore_job**: `droughtwatch_assets.cli.score_shards` (what `droughtwatch score --again`
  runs) on each val and drop shard, one in-process `rescore_job` run per shard,
  {s["rescore_repeats"]} time(s); the wall time of each call, and predictions over the summed
  time of a pass.
- **Latency**: `env --default-signal=INT,TERM .venv/bin/dagster dev -m
  droughtwatch_assets.definitions -h 127.0.0.1 -p <free port>` with the home's `DAGSTER_HOME`
  and `DROUGHTWATCH_SENSOR_INTERVAL={s["sensor_interval"]}`; once the webserver answers
  `/server_info` and `drop_sensor` (RUNNING by default) has ticked, {s["latency_drops"]} drops
  are uploaded one at a time as `droughtwatch emulate-drops` makes them (a val shard copied to
  `drops/<next date>/part-r-00000`). Latency is the row's `recorded_at` (set by
  `monitoring_metrics` just before its upsert) minus the time the upload finished; the
  benchmark polls the metrics database every 0.25 s and gives up after
  {float(s["latency_timeout"]):.0f} s. The breakdown comes from the drop_job run's record
  (created by the sensor's tick, started by its process). dagster dev is stopped with SIGTERM
  to its process group, then every process still carrying the benchmark's environment tag is
  stopped, also when a step fails.

## Running it

    # the default run: about 5-8 minutes on 2 cores
    {COMMAND}
    # a small setup, 1 drop, 1 pass each: a check that it works (writes no page)
    {COMMAND} --quick
    # the sensor at its default interval
    {COMMAND} --sensor-interval 30 --latency-drops 5

`--latency-drops 0` skips the latency phase; `--keep-home` keeps the throwaway home (with
`dagster-dev.log`); `--docs PATH` writes this page elsewhere; `--json PATH` writes all figures.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(
        prog="python -m droughtwatch_tests.benchmarks.inference",
        description="Benchmark batch inference throughput and drop-to-metrics latency.",
    )
    for name, help_text in (
        ("train", "train records"),
        ("val", "val records"),
        ("records-per-shard", "records per train/val shard"),
        ("drops", "drops written by sample-data"),
        ("records-per-drop", "records per drop from sample-data"),
        ("epochs", "baseline training epochs"),
        ("repeats", "timed predict_shard passes"),
        ("rescore-repeats", "in-process rescore_job runs per shard"),
        ("latency-drops", "drops uploaded with dagster dev running (0: skip)"),
        ("sensor-interval", "DROUGHTWATCH_SENSOR_INTERVAL for dagster dev"),
    ):
        attr = name.replace("-", "_")
        parser.add_argument(
            f"--{name}",
            type=int,
            default=None,
            help=f"{help_text} (default {getattr(defaults, attr)})",
        )
    parser.add_argument("--latency-timeout", type=float, default=defaults.latency_timeout)
    parser.add_argument(
        "--quick", action="store_true", help="small setup, 1 pass, 1 drop, no docs page"
    )
    parser.add_argument(
        "--separate-drop-root",
        action="store_true",
        help="dagster dev on a data root holding only the timed drops (works around discovery "
        "not finding new drops/ keys beside train/ and val/)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--keep-home", action="store_true", help="keep the throwaway home")
    parser.add_argument(
        "--docs", type=Path, default=None, help=f"results page (default {DEFAULT_DOCS})"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write all figures as JSON")
    return parser.parse_args(argv)


QUICK = {
    "train": 1_200, "val": 400, "records_per_shard": 400, "drops": 1, "records_per_drop": 100,
    "repeats": 1, "rescore_repeats": 1, "latency_drops": 1,
}  # fmt: skip


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    bench = BenchSettings(
        latency_timeout=args.latency_timeout,
        cache_dir=args.cache_dir,
        keep_home=args.keep_home,
        separate_drop_root=args.separate_drop_root,
    )
    for field_name in (
        "train", "val", "records_per_shard", "drops", "records_per_drop", "epochs", "repeats",
        "rescore_repeats", "latency_drops", "sensor_interval",
    ):  # fmt: skip
        value = getattr(args, field_name)
        if value is None and args.quick:
            value = QUICK.get(field_name)
        if value is not None:
            setattr(bench, field_name, value)
    positive = (bench.train, bench.val, bench.records_per_shard, bench.epochs, bench.repeats)
    if min(positive) <= 0 or bench.rescore_repeats <= 0 or bench.sensor_interval <= 0:
        raise SystemExit("record counts, epochs, repeats and the sensor interval must be positive")
    if bench.latency_drops < 0 or bench.drops < 0:
        raise SystemExit("--latency-drops and --drops may not be negative")
    return bench


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench = settings_from_args(args)
    docs = args.docs if args.docs is not None else (None if args.quick else DEFAULT_DOCS)
    _log(
        f"inference benchmark: {bench.train:,} train + {bench.val:,} val records, "
        f"{bench.latency_drops} timed drops (sensor every {bench.sensor_interval} s)"
    )
    try:
        report = run_benchmark(bench)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(format_summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(
            format_docs(report, measuring_arguments(sys.argv[1:] if argv is None else argv))
        )
        _log(f"wrote {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
