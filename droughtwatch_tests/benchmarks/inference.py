"""The inference benchmark: the `baseline` champion scored from its ONNX export (onnxruntime) and
from its Keras model, compared in one run (predictions/s, model load, a fresh process's start to
its first prediction, `droughtwatch score` end to end), and the latency from a drop's upload to
its monitoring row with `dagster dev` and the drop sensor running.

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
    cold_repeats: int = 3  # fresh scoring processes per backend
    cli_repeats: int = 2  # `droughtwatch score` over every shard, per backend
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


BACKENDS = ("onnx", "keras")  # onnx is what scoring runs by default


def measure_predictions(
    settings: Any,
    keys: Sequence[str],
    repeats: int,
    *,
    backend: str = "onnx",
    keep: list | None = None,
    log: Log = _log,
) -> dict[str, Any]:
    """What batch_predictions does, without Dagster: the champion loaded once (`backend`: its
    ONNX export in onnxruntime, or the Keras model), then `predict_shard` on every shard's
    filtered images and indices read from the lake. Times the model load (the framework already
    imported), the lake reads, the first (cold) call and `repeats` warm passes over all shards.
    `keep`, if given, receives the last pass's probabilities, shard by shard."""
    from droughtwatch_assets.adapters.storage import open_store
    from droughtwatch_assets.adapters.tracking import (
        Tracking,
        default_artifact_root,
        default_tracking_uri,
    )
    from droughtwatch_assets.core.frameworks import quiet_import
    from droughtwatch_assets.core.imagestack import dataset_from_arrow
    from droughtwatch_assets.core.training import predict_shard
    from droughtwatch_assets.core.variants import get_variant
    from droughtwatch_assets.defs.inference.assets import Champion
    from droughtwatch_assets.pipeline.lake import FILTERED_IMAGES, SPECTRAL_INDICES, object_key

    # Imported before the clock starts: the import is not the model load (the cold-start phase
    # times imports).
    framework = quiet_import("onnxruntime" if backend == "onnx" else "keras")
    if not keys:
        raise BenchmarkError(f"no ingested shards in {settings.lake}: nothing to predict")
    variant = get_variant(VARIANT)
    tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
    version = tracking.alias_version(variant.name, CHAMPION)
    if version is None:
        raise BenchmarkError(f"{VARIANT} has no champion in {settings.home}: train one first")
    # Loaded as batch_predictions loads it (the ONNX export in onnxruntime, or Keras).
    champion = Champion(tracking, variant, version, model_format=backend)
    started = time.perf_counter()
    model = champion.model
    load_s = time.perf_counter() - started
    if champion.served_format != backend:
        raise BenchmarkError(f"{VARIANT} version {version} has no {backend} model to load")

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
        predicted, outputs = 0, []
        for filtered, indices in shards:
            probabilities, _ = predict_shard(model, filtered, indices, variant)
            if probabilities.shape != (filtered.sizes["image"], 4) or not np.allclose(
                probabilities.sum(axis=1), 1.0, atol=1e-3
            ):
                raise BenchmarkError(
                    f"{backend}: predictions of shape {probabilities.shape} for "
                    f"{filtered.sizes['image']} images, or rows not summing to 1"
                )
            predicted += len(probabilities)
            outputs.append(probabilities)
        seconds = time.perf_counter() - started
        passes.append(seconds)
        log(f"  {backend} pass {rep + 1}: {predicted:,} predictions in {seconds:.2f} s")
    if keep is not None:
        keep[:] = outputs
    rates = [images / s for s in passes]
    return {
        "backend": backend,
        "framework_version": framework.__version__,
        "model_version": version,
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


def max_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> tuple[float, bool]:
    """The largest absolute difference of two backends' probabilities, and whether every argmax
    agrees."""
    worst = max(
        (float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True) if len(x)), default=0
    )
    same = all((x.argmax(axis=1) == y.argmax(axis=1)).all() for x, y in zip(a, b, strict=True))
    return worst, bool(same)


# What a fresh scoring process does before its first prediction, stage by stage, as a run worker
# of `batch_predictions` does it: the code's imports (droughtwatch and Dagster), the framework,
# the champion (Champion, as the asset resolves and loads it), one shard from the lake, the first
# prediction. Prints one JSON line of epoch timestamps.
COLD_START = """
import json, sys, time
marks = {"interpreter": time.time()}
from droughtwatch_assets.adapters.storage import open_store
from droughtwatch_assets.adapters.tracking import (
    Tracking, default_artifact_root, default_tracking_uri,
)
from droughtwatch_assets.core.imagestack import dataset_from_arrow
from droughtwatch_assets.core.variants import get_variant
from droughtwatch_assets.defs.inference.assets import Champion
from droughtwatch_assets.pipeline.lake import FILTERED_IMAGES, SPECTRAL_INDICES, object_key
from droughtwatch_assets.settings import Settings
marks["code imported"] = time.time()
from droughtwatch_assets.core.frameworks import quiet_import
backend, key = sys.argv[1], sys.argv[2]
quiet_import("onnxruntime" if backend == "onnx" else "keras")
marks["framework imported"] = time.time()
settings = Settings.from_env()
tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
champion = Champion(tracking, get_variant("baseline"), model_format=backend)
marks["champion resolved"] = time.time()
champion.model, champion.temperature
marks["model loaded"] = time.time()
lake = open_store(settings.lake)
shard = (
    dataset_from_arrow(lake.read_bytes(object_key(FILTERED_IMAGES, key))),
    dataset_from_arrow(lake.read_bytes(object_key(SPECTRAL_INDICES, key))),
)
marks["shard read"] = time.time()
[probabilities] = champion.predict([shard])
marks["first prediction"] = time.time()
assert len(probabilities) == shard[0].sizes["image"], (len(probabilities), shard[0].sizes)
marks["served_format"] = champion.served_format
marks["tensorflow_imported"] = "tensorflow" in sys.modules
print(json.dumps(marks))
"""
COLD_STAGES = (
    "interpreter", "code imported", "framework imported", "champion resolved", "model loaded",
    "shard read", "first prediction",
)  # fmt: skip


def measure_cold_start(
    home: Path, key: str, repeats: int, *, log: Log = _log
) -> dict[str, list[dict[str, float]]]:
    """`repeats` fresh processes per backend (alternating, so both see the same machine), each
    from its spawn to its first prediction; the seconds of each stage."""
    found: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    for rep in range(repeats):
        for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
            spawned = time.time()
            out = subprocess.run(
                [sys.executable, "-c", COLD_START, backend, key],
                cwd=REPO_ROOT, env=home_env(home), capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if out.returncode != 0:
                raise BenchmarkError(f"{backend} cold start failed:\n{out.stderr[-3000:]}")
            marks = json.loads(out.stdout.strip().splitlines()[-1])
            if marks["served_format"] != backend:
                raise BenchmarkError(f"asked for {backend}, scored with {marks['served_format']}")
            if backend == "onnx" and marks["tensorflow_imported"]:
                raise BenchmarkError("the ONNX scoring process imported TensorFlow")
            stages, previous = {}, spawned
            for stage in COLD_STAGES:
                stages[stage] = marks[stage] - previous
                previous = marks[stage]
            stages["total"] = marks["first prediction"] - spawned
            found[backend].append(stages)
            log(f"  {backend} cold start {rep + 1}: first prediction {stages['total']:.2f} s "
                "after the spawn")  # fmt: skip
    return found


def measure_cli_score(home: Path, repeats: int, *, log: Log = _log) -> dict[str, Any]:
    """`droughtwatch score --prefix '' --again --model-format <backend>` (every ingested shard)
    as a user types it, `repeats` times per backend, alternating: the wall time from the spawn
    to the exit, and predictions over it."""
    droughtwatch = Path(sys.executable).with_name("droughtwatch")
    found: dict[str, Any] = {b: {"seconds": [], "predictions": 0} for b in BACKENDS}
    for rep in range(repeats):
        for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
            started = time.perf_counter()
            out = subprocess.run(
                [str(droughtwatch), "score", "--prefix", "", "--again", "--model-format", backend],
                cwd=REPO_ROOT, env=home_env(home), capture_output=True, text=True, timeout=1200,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            if out.returncode != 0:
                raise BenchmarkError(
                    f"droughtwatch score --model-format {backend} exited with {out.returncode}:"
                    f"\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
                )
            found[backend]["seconds"].append(seconds)
            log(f"  droughtwatch score --model-format {backend}: {seconds:.1f} s")
    return found


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
    for package in ("dagster", "mlflow", "keras", "tensorflow-cpu", "onnxruntime"):
        try:
            info[package] = version(package)
        except Exception:  # not installed under this name
            info[package] = "-"
    return info


def run_benchmark(bench: BenchSettings, *, log: Log = _log) -> dict[str, Any]:
    """Setup in a throwaway home; per backend: throughput, cold start and `droughtwatch score`;
    then latency under dagster dev; returns all figures."""
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
            throughput, outputs = {}, {}
            for backend in BACKENDS:
                log(f"{backend}: predict_shard over {len(keys)} shards, {bench.repeats} passes ...")
                outputs[backend] = []
                throughput[backend] = measure_predictions(
                    settings, keys, bench.repeats, backend=backend, keep=outputs[backend], log=log
                )
                log(
                    f"  median {throughput[backend]['median_predictions_per_s']:,.0f} "
                    f"predictions/s; model load {throughput[backend]['model_load_seconds']:.2f} s"
                )
            worst, same = max_difference(outputs["onnx"], outputs["keras"])
            agreement = {"max_abs_diff": worst, "same_argmax": same}
            log(f"  ONNX vs Keras: max |diff| {worst:.1e}, same argmax: {same}")
            cold_key = next((k for k in keys if k.startswith("val/")), keys[0])
            log(f"cold start: {bench.cold_repeats} fresh processes per backend ({cold_key}) ...")
            cold = measure_cold_start(Path(settings.home), cold_key, bench.cold_repeats, log=log)
            log(f"droughtwatch score over all {len(keys)} shards, {bench.cli_repeats}x each ...")
            cli = measure_cli_score(Path(settings.home), bench.cli_repeats, log=log)
            for backend in BACKENDS:
                cli[backend]["predictions"] = throughput[backend]["images"]
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
        "agreement": agreement,
        "cold_start": cold,
        "cli": cli,
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


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def figures(report: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Each compared figure, per backend, every run."""
    t, cold, cli = report["throughput"], report["cold_start"], report["cli"]
    return {
        "predictions/s, model loaded once": {b: t[b]["predictions_per_s"] for b in BACKENDS},
        "model load, framework imported (s)": {b: [t[b]["model_load_seconds"]] for b in BACKENDS},
        "first call after the load (s)": {b: [t[b]["first_call_seconds"]] for b in BACKENDS},
        "process start -> first prediction (s)": {
            b: [c["total"] for c in cold[b]] for b in BACKENDS
        },
        "`droughtwatch score`, all shards (s)": {b: cli[b]["seconds"] for b in BACKENDS},
        "`droughtwatch score`, predictions/s incl. process and Dagster": {
            b: [cli[b]["predictions"] / x for x in cli[b]["seconds"]] for b in BACKENDS
        },
    }


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


COMPARE_HEADER = (
    "figure",
    "ONNX (median)",
    "Keras (median)",
    "ONNX / Keras",
    "each run (ONNX; Keras)",
)


def compare_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, values in figures(report).items():
        onnx, keras = _median(values["onnx"]), _median(values["keras"])
        rows.append([
            name, _fmt(onnx), _fmt(keras), f"{onnx / keras:.2f}" if keras else "-",
            f"{', '.join(map(_fmt, values['onnx']))}; {', '.join(map(_fmt, values['keras']))}",
        ])  # fmt: skip
    return rows


STAGE_HEADER = ("stage of a fresh scoring process", "ONNX (s, median)", "Keras (s, median)")


def stage_rows(report: dict[str, Any]) -> list[list[str]]:
    cold = report["cold_start"]
    names = {
        "interpreter": "spawn -> Python running",
        "code imported": "import droughtwatch, Dagster, MLflow client, xarray",
        "framework imported": "import onnxruntime / Keras + TensorFlow",
        "champion resolved": "resolve the champion (open the MLflow store, read the alias)",
        "model loaded": "load it (download; onnxruntime session / Keras model)",
        "shard read": "read one shard from the lake",
        "first prediction": "first prediction (graph build or session warm-up)",
        "total": "**total: spawn -> first prediction**",
    }
    return [
        [label, *(f"{_median([c[stage] for c in cold[b]]):.2f}" for b in BACKENDS)]
        for stage, label in names.items()
    ]


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
        f"Keras {m['keras']}, onnxruntime {m['onnxruntime']}, dagster {m['dagster']}, "
        f"{m['date']}",
        "",
        _table(COMPARE_HEADER, compare_rows(report)),
        "",
        _table(STAGE_HEADER, stage_rows(report)),
    ]
    if report["latency"] is not None:
        lat = report["latency"]
        parts += [
            "",
            f"drop upload -> metrics row (ONNX, sensor every {lat['sensor_interval_s']} s): "
            f"median {lat['median_latency_seconds']:.1f} s",
            _table(LATENCY_HEADER, latency_rows(lat)),
        ]
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
        "\n**dagster dev ran on a data root holding only these drops** (`--separate-drop-root`).\n"
        if lat["separate_drop_root"]
        else ""
    )
    return f"""Median **{lat["median_latency_seconds"]:.1f} s** from a drop's upload to its
`monitoring_metrics` row (scoring with the ONNX export, the default), sensor every {interval} s.

{_table(LATENCY_HEADER, latency_rows(lat))}

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
(created -> started), then the run's one step ingests, scores and monitors the shard
(started -> row).

{others_text} Processes left after dagster dev was stopped: {lat["leftover_processes"]}."""


def _where_the_time_goes(report: dict[str, Any]) -> str:
    t, cold, cli = report["throughput"], report["cold_start"], report["cli"]

    def stage(backend: str, name: str) -> float:
        return _median([c[name] for c in cold[backend]])

    saved = stage("keras", "total") - stage("onnx", "total")
    cli_onnx, cli_keras = _median(cli["onnx"]["seconds"]), _median(cli["keras"]["seconds"])
    compute = t["onnx"]["images"] / t["onnx"]["median_predictions_per_s"]
    steady = t["keras"]["images"] / t["keras"]["median_predictions_per_s"] - compute

    def pair(name: str) -> str:
        return f"{stage('onnx', name):.2f} against {stage('keras', name):.2f} s"

    return f"""- **Start-up.** A fresh scoring process reaches its first prediction {saved:.1f} s
  {"sooner" if saved >= 0 else "later"} with ONNX ({pair("total")}). Importing the framework:
  {pair("framework imported")} (onnxruntime against Keras with TensorFlow); loading the
  model once the champion is known: {pair("model loaded")}; reading the shard:
  {pair("shard read")}; the first prediction: {pair("first prediction")}. Both pay alike
  for the code's own imports ({pair("code imported")}: Dagster, the MLflow client, xarray,
  pandas) and for resolving the champion ({pair("champion resolved")}: the MLflow store
  opened and the alias read), which is now the largest part of the ONNX path's start-up.
- **Steady-state throughput**, model loaded once, batches of 256: ONNX
  {t["onnx"]["median_predictions_per_s"]:,.0f} against Keras
  {t["keras"]["median_predictions_per_s"]:,.0f} predictions/s
  ({t["onnx"]["median_predictions_per_s"] / t["keras"]["median_predictions_per_s"]:.2f}x). On
  the {t["onnx"]["images"]:,} images here that is {compute:.1f} s of computing with ONNX.
- **What a user types.** `droughtwatch score` over all {t["onnx"]["shards"]} shards took
  {cli_onnx:.1f} s with ONNX and {cli_keras:.1f} s with Keras, {cli_keras - cli_onnx:.1f} s
  apart: about {saved:.1f} s of start-up (above) and {steady:.1f} s of slower steady-state
  predictions on these images. The rest of the command (its own start, listing the shards,
  Dagster's bookkeeping, the metrics-database upserts, `drift_summary_job`) is the same code
  for both. A run pays the start-up once for up to `DROUGHTWATCH_SHARDS_PER_RUN` shards, not
  once per shard.
- **Agreement.** Over all {t["onnx"]["images"]:,} images the two backends' raw
  probabilities differ by at most {report["agreement"]["max_abs_diff"]:.1e}, and
  {"every argmax agrees" if report["agreement"]["same_argmax"] else "some argmax differ"}
  (registration refuses to promote a version whose export differs by more than 1e-4 on its
  validation images)."""


def format_docs(report: dict[str, Any], arguments: str = "") -> str:
    """docs/benchmarks-inference.md: figures, method, command and machine."""
    m = report["machine"]
    s = report["settings"]
    t = report["throughput"]
    setup = report["setup_seconds"]
    ran_text = f"; these figures come from `{COMMAND} {arguments}`" if arguments else ""
    return f"""# Inference benchmark

`make bench-inference` runs `{COMMAND}`{ran_text}. It compares the two ways the `{VARIANT}`
champion can score, its ONNX export in onnxruntime (the default) and its Keras model, in one
run on the same shards: predictions/s, model load time and a fresh process's time from its
start to its first prediction, and `droughtwatch score` end to end. Then it times a drop from its
upload to its row in the `monitoring_metrics` table with `dagster dev` and the drop sensor
running.

## Results

Measured {m["date"]} on {m["cpu"]}, {m["cores"]} cores, {m["memory"]} memory, {m["os"]},
Python {m["python"]}, onnxruntime {m["onnxruntime"]}, Keras {m["keras"]} (TensorFlow
{m["tensorflow-cpu"]}, CPU), dagster {m["dagster"]}, MLflow {m["mlflow"]}. Other sessions
share this machine, so figures vary from run to run: each row gives the medians, their ratio
and every run. The champion (version {t["onnx"]["model_version"]}) scored {t["onnx"]["images"]:,}
kept images in {t["onnx"]["shards"]} shards per pass.

{_table(COMPARE_HEADER, compare_rows(report))}

### Where the time goes

{_table(STAGE_HEADER, stage_rows(report))}

{_where_the_time_goes(report)}

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
  --materialize`, `droughtwatch train {VARIANT} --epochs {s["epochs"]}` (registration exports
  the ONNX model; the benchmark stops with a message if the gate does not promote the model),
  all through the CLI's own functions in the benchmark's process.
- **Predictions/s**, per backend: what `batch_predictions` does, without Dagster. The framework
  is imported first (untimed); then the champion is loaded (timed: `Tracking.download_onnx` and
  an onnxruntime session, or `Tracking.load_model`), every ingested shard's `filtered_images`
  and `spectral_indices` are read from the lake, one call is timed alone (the first), then
  {s["repeats"]} timed passes of `core.training.predict_shard` (batches of 256) over all shards:
  kept images over the wall time of a pass. Every pass checks one row per image and rows
  summing to 1; the last passes of both backends are compared image by image.
- **Process start -> first prediction**: {s["cold_repeats"]} fresh `python -c` processes per
  backend, alternating, each doing what a run worker's `batch_predictions` does before its first
  prediction: import the code, import the framework, resolve and load the champion through
  `Champion` (the asset's own class, `model_format` onnx or keras), read one val shard, predict.
  Each stage is stamped with the wall clock; the first stage starts at the spawn (in the
  benchmark). The ONNX process also reports that TensorFlow was never imported.
- **`droughtwatch score`**: `droughtwatch score --prefix '' --again --model-format <backend>` on
  every ingested shard, {s["cli_repeats"]} times per backend, alternating; the wall time from
  spawn to exit (the CLI runs `rescore_job` over batches of shards, then `drift_summary_job`).
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

    # the default run: about 4-6 minutes on 2 cores
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
        description="Compare ONNX and Keras scoring; time a drop to its metrics row.",
    )
    for name, help_text in (
        ("train", "train records"),
        ("val", "val records"),
        ("records-per-shard", "records per train/val shard"),
        ("drops", "drops written by sample-data"),
        ("records-per-drop", "records per drop from sample-data"),
        ("epochs", "baseline training epochs"),
        ("repeats", "timed predict_shard passes"),
        ("cold-repeats", "fresh scoring processes per backend"),
        ("cli-repeats", "`droughtwatch score` runs per backend"),
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
    "repeats": 1, "cold_repeats": 1, "cli_repeats": 1, "latency_drops": 1,
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
        "cold_repeats", "cli_repeats", "latency_drops", "sensor_interval",
    ):  # fmt: skip
        value = getattr(args, field_name)
        if value is None and args.quick:
            value = QUICK.get(field_name)
        if value is not None:
            setattr(bench, field_name, value)
    positive = (bench.train, bench.val, bench.records_per_shard, bench.epochs, bench.repeats)
    if min(positive) <= 0 or min(bench.cold_repeats, bench.cli_repeats, bench.sensor_interval) <= 0:
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
