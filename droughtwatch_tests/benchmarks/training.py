"""The training benchmark: `baseline` fed from the lake, from in-memory tensors, and the earlier
way (per-example parse of serialized float32 tensors), in the same run, plus peak memory.

Run `python -m droughtwatch_tests.benchmarks.training --help`; a full run rewrites
docs/benchmarks-training.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droughtwatch_assets.adapters.storage import LocalStore
from droughtwatch_assets.core.imagestack import CODEC_VERSION, LZ4_ACCELERATION
from droughtwatch_assets.core.tfrecord import IMAGE_SIDE, LABEL_FEATURE
from droughtwatch_assets.core.training import ShardSource, shard_features
from droughtwatch_assets.core.variants import Variant, get_variant
from droughtwatch_assets.pipeline.corpus import shard_sources
from droughtwatch_assets.pipeline.lake import COMPRESSION as LAKE_COMPRESSION
from droughtwatch_tests.benchmarks.ingest import (
    DEFAULT_CACHE,
    DEFAULT_RECORDS_PER_SHARD,
    Corpus,
    Log,
    ensure_corpus,
    ingest_shard,
    machine,
    measuring_arguments,
)

VARIANT = "baseline"
DEFAULT_RECORDS = 20_000
DEFAULT_BIG_RECORDS = 100_000
DEFAULT_REPEATS = 3
# Batches before the timed window: graph tracing, the first shard loads and the shuffle buffer
# (2,048 examples) filling up all happen here.
DEFAULT_WARMUP_BATCHES = 50
# The second epoch is timed whole: what every epoch after the first costs, tracing excluded.
DEFAULT_EPOCHS = 2
DEFAULT_DOCS = Path("docs/benchmarks-training.md")
COMMAND = ".venv/bin/python -m droughtwatch_tests.benchmarks.training"
LAKE_MANIFEST = "lake.json"  # written last: a lake folder without it is incomplete
# What the lake's objects were written with: a cached lake from another codec is rebuilt.
LAKE_CODEC = f"arrow-v{CODEC_VERSION}-lz4-acceleration-{LZ4_ACCELERATION}-" + ",".join(
    f"{asset}:{codec}" for asset, codec in sorted(LAKE_COMPRESSION.items())
)
SEED_FORMAT_MANIFEST = "seed-format.json"
PHASES = ("lake", "memory", "tfrecord")
PHASE_NAMES = {
    "lake": "lake (make_dataset)",
    "memory": "in memory (in_memory_dataset)",
    "tfrecord": "earlier: serialized float32 TFRecords",
}

TARGET_RATIO = 0.9  # lake-fed examples/s over in-memory examples/s
TARGET_MEMORY_GROWTH = 1.15  # peak RSS on the big corpus over the small one

# Recorded by `gpu_epoch.py` on the device machine (see docs/benchmarks-training.md).
GPU_RESULT: dict[str, Any] = {
    "date": "2026-11-26",
    "card": "NVIDIA H100 80GB HBM3 (81,559 MiB, driver 580.159.04)",
    "software": "Keras 3.15.1 on JAX 0.11.2 (not TensorFlow), Python 3.12.3, 16 CPU cores",
    "command": (
        "KERAS_BACKEND=jax python3 -m droughtwatch_tests.benchmarks.gpu_epoch "
        "--records 86000 --workers 16 --timed-epochs 2"
    ),
    "records": 86_000,
    "generation_workers": 16,
    "generation_seconds": 7.3,
    "warmup_steps": 30,
    "runs": [
        {
            "variant": "baseline",
            "network": "seed_cnn, 4 channels, 257,022 parameters",
            "examples_per_epoch": 85_952,
            "epoch_seconds": [3.22, 2.53],
            "examples_per_s": 29_918,
            "build_and_warmup_seconds": 8.1,
            "host_feed_examples_per_s": 152_747,
        },
        {
            "variant": "full",
            "network": "compact_resnet, 14 channels, 371,972 parameters",
            "examples_per_epoch": 85_952,
            "epoch_seconds": [8.78, 9.29],
            "examples_per_s": 9_516,
            "build_and_warmup_seconds": 30.0,
            "host_feed_examples_per_s": 51_694,
        },
    ],
}


def _log(message: str) -> None:
    print(f"[train-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the lake: the corpus through ingest, as the filtered_images and spectral_indices assets


@dataclass
class Lake:
    """Ingested shards in a LocalStore rooted at `root`: `kept[i]` labelled images in `keys[i]`."""

    folder: Path
    keys: list[str]
    records: int
    kept: list[int]
    codec: str = ""  # LAKE_CODEC when built; a lake written by another codec is built again

    @property
    def root(self) -> Path:
        return self.folder / "lake"

    @property
    def examples(self) -> int:
        return sum(self.kept)

    @classmethod
    def load(cls, folder: Path) -> Lake:
        return cls(folder=folder, **json.loads((folder / LAKE_MANIFEST).read_text()))


def ensure_lake(corpus: Corpus, cache_dir: Path, *, workers: int = 2, log: Log = _log) -> Lake:
    """`cache_dir/lake-<records>-<records per shard>`: every shard of `corpus` ingested with
    the ingest benchmark's `ingest_shard`, built unless cached."""
    folder = Path(cache_dir) / f"lake-{corpus.records}-{corpus.records_per_shard}"
    if (folder / LAKE_MANIFEST).exists():
        lake = Lake.load(folder)
        if lake.codec == LAKE_CODEC:
            log(f"lake of {lake.examples:,} images reused from {folder}")
            return lake
        log(f"lake in {folder} has codec {lake.codec or 'unknown'!r}, not {LAKE_CODEC!r}: rebuilt")
    shutil.rmtree(folder, ignore_errors=True)
    log(f"ingesting {corpus.records:,} records into {folder / 'lake'}")
    started = time.perf_counter()
    root = folder / "lake"
    keys = list(corpus.keys)
    # forkserver, not fork: this may run in a process where TensorFlow has started its threads
    # (the test suite), and a forked child of such a process can deadlock.
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        outcomes = list(
            pool.map(
                ingest_shard, [str(corpus.data_root)] * len(keys), [str(root)] * len(keys), keys
            )
        )
    lake = Lake(folder, keys, corpus.records, [o.kept for o in outcomes], LAKE_CODEC)
    data = asdict(lake)
    del data["folder"]
    (folder / LAKE_MANIFEST).write_text(json.dumps(data))
    log(f"lake ready: {lake.examples:,} images in {time.perf_counter() - started:.0f} s")
    return lake


def lake_sources(root: Path, keys: Sequence[str], variant: Variant) -> list[ShardSource]:
    """Exactly the shard sources the trained_model asset builds (`corpus.shard_sources`: only
    the variant's bands and indices are decoded), on a LocalStore lake."""
    return shard_sources(LocalStore(root), keys, variant)


def load_in_memory(lake: Lake, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """Every labelled image of the lake as the variant's (x int16, y int8), concatenated."""
    parts = [
        shard_features(*s.load(), variant.features)
        for s in lake_sources(lake.root, lake.keys, variant)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --- the earlier format: every band a serialized float32 tensor, parsed example by example


def seed_format_folder(lake: Lake) -> Path:
    """Where the lake's images in the earlier format are cached, beside the lake."""
    return lake.folder.parent / lake.folder.name.replace("lake-", "seed-format-", 1)


def write_seed_format(lake: Lake, variant: Variant, folder: Path) -> list[Path]:
    """The lake's labelled images as the earlier project stored them: one tf.train.Example per
    image, each of the variant's bands a `tf.io.serialize_tensor` float32 bytes feature.

    Raw values (0..255), not the seed's /255: the same bytes to parse, and the same model
    inputs as the other two pipelines.
    """
    import tensorflow as tf

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for source in lake_sources(lake.root, lake.keys, variant):
        x, y = shard_features(*source.load(), variant.features)
        path = folder / f"{source.key.replace('/', '-')}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for image, label in zip(x.astype(np.float32), y, strict=True):
                feature = {
                    band: tf.train.Feature(
                        bytes_list=tf.train.BytesList(
                            value=[tf.io.serialize_tensor(image[..., c]).numpy()]
                        )
                    )
                    for c, band in enumerate(variant.features)
                }
                feature[LABEL_FEATURE] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[int(label)])
                )
                writer.write(
                    tf.train.Example(
                        features=tf.train.Features(feature=feature)
                    ).SerializeToString()
                )
        paths.append(path)
    (folder / SEED_FORMAT_MANIFEST).write_text(
        json.dumps({"files": [p.name for p in paths], "examples": lake.examples})
    )
    return paths


def seed_format_dataset(paths: Sequence[Path], variant: Variant) -> Any:
    """TFRecordDataset -> map(parse_single_example + parse_tensor, AUTOTUNE) -> batch: the
    earlier project's input pipeline (it did not shuffle), with the same prefetch as ours."""
    import tensorflow as tf

    spec = {band: tf.io.FixedLenFeature([], tf.string) for band in variant.features}
    spec[LABEL_FEATURE] = tf.io.FixedLenFeature([], tf.int64)
    shape = (IMAGE_SIDE, IMAGE_SIDE, len(variant.features))

    def parse(record: Any) -> tuple[Any, Any]:
        example = tf.io.parse_single_example(record, spec)
        x = tf.stack(
            [tf.io.parse_tensor(example[band], tf.float32) for band in variant.features], axis=-1
        )
        return tf.ensure_shape(x, shape), tf.one_hot(example[LABEL_FEATURE], 4)

    return (
        tf.data.TFRecordDataset([str(p) for p in paths])
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(variant.batch_size)
        .prefetch(2)
    )


# --- one measured phase


def fit_epochs(
    dataset: Any, variant: Variant, examples: int, warmup_batches: int, epochs: int = 2
) -> dict[str, Any]:
    """Fit a freshly built model for `epochs` epochs as train_variant does (seeded, class
    weights) and time the last one: whole (`epoch_examples_per_s`: every per-epoch cost, such
    as shard loads or refilling a shuffle buffer, counted) and after its first `warmup_batches`
    (`steady_examples_per_s`). Model build is never timed; with one epoch, the whole-epoch
    figure includes graph tracing, so `examples_per_s` is then the steady one."""
    import keras

    from droughtwatch_assets.core.models import build_model
    from droughtwatch_assets.core.training import fit_inputs

    batches = -(-examples // variant.batch_size)
    if batches <= warmup_batches:
        raise ValueError(
            f"{examples} examples make {batches} batches, not more than the {warmup_batches} "
            "warm-up batches: use more records or fewer warm-up batches"
        )
    model = build_model(variant)

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.batches = 0
            self.epoch_start = self.window_start = self.end = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch_start = time.perf_counter()
            self.batches = 0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.batches += 1
            if self.batches == warmup_batches:
                self.window_start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.end = time.perf_counter()
            if self.batches != batches:
                raise RuntimeError(f"epoch {epoch + 1} had {self.batches} batches, not {batches}")

    timer = Timer()
    with warnings.catch_warnings():
        # Streams have no known length; the end Keras warns about is the intended one.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        inputs, steps = fit_inputs(dataset)  # as train_variant feeds its fit
        model.fit(
            inputs,
            steps_per_epoch=steps,
            epochs=epochs,
            class_weight=variant.class_weight_map,
            callbacks=[timer],
            verbose=0,
            shuffle=False,
        )
    timed = examples - warmup_batches * variant.batch_size
    epoch_seconds = timer.end - timer.epoch_start
    steady = timed / (timer.end - timer.window_start)
    return {
        "examples": examples,
        "batches": batches,
        "epochs": epochs,
        "warmup_batches": warmup_batches,
        "epoch_seconds": epoch_seconds,
        "epoch_examples_per_s": examples / epoch_seconds,
        "steady_examples": timed,
        "steady_seconds": timer.end - timer.window_start,
        "steady_examples_per_s": steady,
        "examples_per_s": examples / epoch_seconds if epochs > 1 else steady,
    }


def measure_phase(
    phase: str,
    lake: Lake,
    *,
    warmup_batches: int = DEFAULT_WARMUP_BATCHES,
    epochs: int = DEFAULT_EPOCHS,
) -> dict[str, Any]:
    """One phase in this process: 'lake', 'memory' or 'tfrecord' (its seed-format TFRecords
    must exist). Returns examples/s and timings (see `fit_epochs`); `run_phase` adds peak RSS."""
    from droughtwatch_assets.core.training import in_memory_dataset, make_dataset, set_determinism

    variant = get_variant(VARIANT)
    set_determinism(variant.seed)
    started = time.perf_counter()
    if phase == "lake":
        dataset = make_dataset(lake_sources(lake.root, lake.keys, variant), variant, training=True)
    elif phase == "memory":
        x, y = load_in_memory(lake, variant)
        dataset = in_memory_dataset(x, y, variant, training=True)
    elif phase == "tfrecord":
        folder = seed_format_folder(lake)
        files = json.loads((folder / SEED_FORMAT_MANIFEST).read_text())["files"]
        dataset = seed_format_dataset([folder / f for f in files], variant)
    else:
        raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
    prepare = time.perf_counter() - started
    result = fit_epochs(dataset, variant, lake.examples, warmup_batches, epochs)
    return {"phase": phase, "name": PHASE_NAMES[phase], "prepare_seconds": prepare, **result}


def run_phase(
    phase: str,
    lake: Lake,
    out_dir: Path,
    *,
    warmup_batches: int = DEFAULT_WARMUP_BATCHES,
    epochs: int = DEFAULT_EPOCHS,
) -> dict[str, Any]:
    """A phase ('lake', 'memory', 'tfrecord' or 'write-seed-format') in a fresh interpreter, so
    that its peak RSS (`ru_maxrss`, MiB) is its own."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result_file = out_dir / f"result-{phase}.json"
    result_file.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "droughtwatch_tests.benchmarks.training", "--phase", phase,
        "--lake", str(lake.folder), "--warmup-batches", str(warmup_batches),
        "--epochs", str(epochs),
        "--phase-result", str(result_file),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not result_file.exists():
        raise RuntimeError(
            f"training benchmark phase {phase!r} failed (exit {done.returncode}):\n"
            f"{done.stderr[-4000:]}"
        )
    return json.loads(result_file.read_text())


def _phase_main(args: argparse.Namespace) -> None:
    lake = Lake.load(Path(args.lake))
    if args.phase == "write-seed-format":
        started = time.perf_counter()
        write_seed_format(lake, get_variant(VARIANT), seed_format_folder(lake))
        result: dict[str, Any] = {"seconds": time.perf_counter() - started}
    else:
        result = measure_phase(
            args.phase, lake, warmup_batches=args.warmup_batches, epochs=args.epochs
        )
    import keras
    import tensorflow as tf

    result["tensorflow"], result["keras"] = tf.__version__, keras.__version__
    # Linux reports KiB.
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.phase_result).write_text(json.dumps(result))


def ensure_seed_format(lake: Lake, *, log: Log = _log) -> Path:
    folder = seed_format_folder(lake)
    if (folder / SEED_FORMAT_MANIFEST).exists():
        log(f"seed-format TFRecords reused from {folder}")
        return folder
    log(f"writing seed-format TFRecords (float32 tensors) into {folder}")
    result = run_phase("write-seed-format", lake, lake.folder.parent / "train-runs")
    log(f"  written in {result['seconds']:.0f} s")
    return folder


# --- the whole benchmark


@dataclass
class Settings:
    records: int = DEFAULT_RECORDS
    big_records: int = DEFAULT_BIG_RECORDS
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD
    repeats: int = DEFAULT_REPEATS
    warmup_batches: int = DEFAULT_WARMUP_BATCHES
    epochs: int = DEFAULT_EPOCHS
    cache_dir: Path = DEFAULT_CACHE


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median examples/s (the lower middle one), with every run's rate."""
    ranked = sorted(runs, key=lambda r: r["examples_per_s"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["all_examples_per_s"] = [r["examples_per_s"] for r in runs]
    chosen["median_examples_per_s"] = statistics.median(r["examples_per_s"] for r in runs)
    chosen["all_peak_rss_mib"] = [r["peak_rss_mib"] for r in runs]
    chosen["median_steady_examples_per_s"] = statistics.median(
        r["steady_examples_per_s"] for r in runs
    )
    return chosen


def run_benchmark(settings: Settings, *, log: Log = _log) -> dict[str, Any]:
    """Lakes, seed-format TFRecords, the three phases `repeats` times (interleaved, the order
    rotated each round), then the lake phase on the big corpus; returns every figure."""
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    cache = Path(settings.cache_dir)
    corpus = ensure_corpus(settings.records, settings.records_per_shard, cache, log=log)
    lake = ensure_lake(corpus, cache, log=log)
    ensure_seed_format(lake, log=log)
    big_lake = None
    if settings.big_records > settings.records:
        big = ensure_corpus(settings.big_records, settings.records_per_shard, cache, log=log)
        big_lake = ensure_lake(big, cache, log=log)
    runs_dir = cache / "train-runs"
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    for rep in range(settings.repeats):
        order = PHASES[rep % len(PHASES) :] + PHASES[: rep % len(PHASES)]
        for phase in order:
            log(f"run {rep + 1}: {PHASE_NAMES[phase]} on {lake.examples:,} examples ...")
            result = run_phase(
                phase,
                lake,
                runs_dir,
                warmup_batches=settings.warmup_batches,
                epochs=settings.epochs,
            )
            runs[phase].append(result)
            log(
                f"  {result['examples_per_s']:,.0f} examples/s (steady "
                f"{result['steady_examples_per_s']:,.0f}), epoch {result['epoch_seconds']:.0f}"
                f" s, peak RSS {result['peak_rss_mib']:,.0f} MiB"
            )
    big_run = None
    if big_lake is not None:
        log(f"lake on the {big_lake.examples:,}-example corpus (peak memory) ...")
        # One epoch: peak memory is the point, and one pass walks every shard.
        big_run = run_phase(
            "lake", big_lake, runs_dir, warmup_batches=settings.warmup_batches, epochs=1
        )
        log(
            f"  {big_run['examples_per_s']:,.0f} examples/s, epoch {big_run['epoch_seconds']:.0f}"
            f" s, peak RSS {big_run['peak_rss_mib']:,.0f} MiB"
        )
    medians = {p: _median(runs[p]) for p in PHASES}
    versions = {k: runs["lake"][0][k] for k in ("tensorflow", "keras")}
    return {
        "machine": {**machine(), **versions},
        "settings": {k: str(v) for k, v in asdict(settings).items()},
        "corpus": {
            "records": lake.records,
            "examples": lake.examples,
            "shards": len(lake.keys),
            "big_records": big_lake.records if big_lake else None,
            "big_examples": big_lake.examples if big_lake else None,
            "big_shards": len(big_lake.keys) if big_lake else None,
        },
        "runs": runs,
        "medians": medians,
        "paired_ratios": [
            a["examples_per_s"] / b["examples_per_s"]
            for a, b in zip(runs["lake"], runs["memory"], strict=True)
        ],
        "paired_steady_ratios": [
            a["steady_examples_per_s"] / b["steady_examples_per_s"]
            for a, b in zip(runs["lake"], runs["memory"], strict=True)
        ],
        "big": big_run,
        "targets": evaluate(medians, big_run),
        "total_seconds": time.perf_counter() - started,
        # Other sessions share the cores: the 1-minute load average says how much.
        "load_average": [load_at_start, os.getloadavg()[0]],
    }


def evaluate(medians: dict[str, dict[str, Any]], big: dict[str, Any] | None) -> list[dict]:
    """One row per target: what was measured, the limit, and whether it passed."""
    lake, memory = medians["lake"], medians["memory"]
    ratio = lake["median_examples_per_s"] / memory["median_examples_per_s"]
    measure = f"epoch {lake['epochs']}, whole" if lake["epochs"] > 1 else "steady state"
    rows = [
        {
            "target": f"lake-fed / in-memory examples/s, baseline ({measure})",
            "measured": f"{ratio:.3f}",
            "limit": f">= {TARGET_RATIO}",
            "passed": ratio >= TARGET_RATIO,
        }
    ]
    if big is not None:
        small_peak = lake["peak_rss_mib"]
        growth = big["peak_rss_mib"] / small_peak
        rows.append(
            {
                "target": (
                    f"peak RSS, lake-fed, {big['examples']:,} / {lake['examples']:,} examples"
                ),
                "measured": f"{big['peak_rss_mib']:,.0f} / {small_peak:,.0f} MiB = {growth:.2f}",
                "limit": f"<= {TARGET_MEMORY_GROWTH}",
                "passed": growth <= TARGET_MEMORY_GROWTH,
            }
        )
    return rows


# --- reporting


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


RUN_HEADER = (
    "input pipeline", "examples", "examples/s, timed epoch (median)", "each run",
    "vs in memory", "steady state (median)", "vs in memory", "timed epoch (s)",
    "peak RSS (MiB), each run",
)  # fmt: skip


def _run_rows(report: dict[str, Any]) -> list[list[str]]:
    memory = report["medians"]["memory"]
    memory_rate = memory["median_examples_per_s"]
    memory_steady = memory["median_steady_examples_per_s"]
    entries = [report["medians"][p] for p in PHASES]
    if report["big"] is not None:
        big = report["big"]
        entries.append(
            {
                **big,
                "name": f"lake, {report['corpus']['big_records']:,}-record corpus",
                "median_steady_examples_per_s": big["steady_examples_per_s"],
                "all_peak_rss_mib": [big["peak_rss_mib"]],
            }
        )
    rows = []
    for run in entries:
        # A one-epoch run's whole epoch includes graph tracing: no epoch rate to compare.
        whole = run["epochs"] > 1
        steady = run["median_steady_examples_per_s"]
        rows.append([
            run["name"] + ("" if whole else " (1 epoch)"),
            f"{run['examples']:,}",
            f"{run['median_examples_per_s']:,.0f}" if whole else "-",
            ", ".join(f"{r:,.0f}" for r in run["all_examples_per_s"]) if whole else "-",
            f"{run['median_examples_per_s'] / memory_rate:.3f}" if whole else "-",
            f"{steady:,.0f}",
            f"{steady / memory_steady:.3f}",
            f"{run['epoch_seconds']:.0f}",
            ", ".join(f"{r:,.0f}" for r in run["all_peak_rss_mib"]),
        ])  # fmt: skip
    return rows


def _target_table(report: dict[str, Any]) -> str:
    return _table(
        ("target", "measured", "limit", "result"),
        [
            [r["target"], r["measured"], r["limit"], "PASS" if r["passed"] else "FAIL"]
            for r in report["targets"]
        ],
    )


def format_summary(report: dict[str, Any]) -> str:
    """The stdout summary: machine, runs, paired ratios and PASS/FAIL per target."""
    m = report["machine"]
    paired = ", ".join(f"{r:.3f}" for r in report["paired_ratios"])
    steady = ", ".join(f"{r:.3f}" for r in report["paired_steady_ratios"])
    return "\n".join(
        [
            f"machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, Python {m['python']}, "
            f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, {m['date']}",
            "",
            _table(RUN_HEADER, _run_rows(report)),
            "",
            f"lake / in memory, run by run: timed epoch {paired}; steady state {steady}",
            "",
            _target_table(report),
        ]
    )


def format_gpu(gpu: dict[str, Any]) -> str:
    """The GPU section: one epoch of baseline and full on a full-size corpus."""
    rows = [
        [
            run["variant"],
            run["network"],
            f"{run['examples_per_epoch']:,}",
            ", ".join(f"{s:.2f}" for s in run["epoch_seconds"]),
            f"{run['examples_per_s']:,.0f}",
            f"{run['build_and_warmup_seconds']:.0f}",
            f"{run['host_feed_examples_per_s']:,.0f}",
        ]
        for run in gpu["runs"]
    ]
    header = (
        "variant", "network", "examples per epoch", "epoch (s), each run",
        "examples/s (median epoch)", "build + compile + warm-up steps (s)",
        "host feed alone (examples/s)",
    )  # fmt: skip
    unbound = all(r["host_feed_examples_per_s"] > 2 * r["examples_per_s"] for r in gpu["runs"])
    feed = (
        "at over twice each epoch's rate, it does not bound either epoch"
        if unbound
        else "it is not far above every epoch's rate, so it may bound some"
    )
    return f"""Measured {gpu["date"]} on an **{gpu["card"]}**; {gpu["software"]}.

{_table(header, rows)}

- **Caveat**: these figures are Keras on the **JAX backend**, not TensorFlow: the device machine
  has no TensorFlow, and it cannot be carried there. The networks are the project's own
  (`core.models.build_model`, which imports only Keras), recompiled with `jit_compile=True`:
  `build_model` turns XLA off for deterministic TensorFlow CPU kernels, but on JAX that would
  run every op eagerly, and `jax.jit` is JAX's counterpart of a TensorFlow graph. JAX's default
  float32 convolutions on an H100 may use TF32. The TensorFlow trainer on a GPU (tf.data feed,
  graph mode without XLA) was not measured.
- **Corpus**: {gpu["records"]:,} records generated on the machine in memory with
  `core.synthetic.generate_images` (every record generated, none tiled: {gpu["records"] // 1000}
  chunks of 1,000 with their own seeds on {gpu["generation_workers"]} forked processes, in \
{gpu["generation_seconds"]:.1f} s), indices with `core.indices.compute_indices` + `quantise`,
  held as int16 (n, 65, 65, 14).
- **Feed**: numpy batches of 64 in a fresh permutation per epoch, gathered and cast int16 ->
  float32 on 4 host threads, 8 batches ahead, with class-weight sample weights; the partial last
  batch is left out (on JAX a new shape recompiles), hence {gpu["runs"][0]["examples_per_epoch"]:,}
  examples per epoch. "Host feed alone" is the same feed with no model: {feed}.
- **Timing**: a {gpu["warmup_steps"]}-step fit first (model build and XLA compilation), then each
  whole epoch timed as one `model.fit` call; examples/s uses the median epoch.
- Command, on the device machine with Keras and its missing dependencies (namex, optree,
  google-crc32c) carried as wheels: `{gpu["command"]}`.
"""


RATIO_NOTE = """Why the timed epoch and not the steady state decides: the two pipelines pay their
per-epoch costs at different times. `in_memory_dataset` shuffles with a buffer as large as the
corpus, which TensorFlow refills before the first batch of every epoch, so its steady state
leaves that cost out; the lake-fed pipeline pays its cost (decoding each shard's Arrow objects,
memory-mapped so that only the variant's columns are read: about 17 ms per 500-image shard, on
the same two cores as the model) spread over the epoch, so its steady state keeps it in. What a
multi-epoch training run sees is the whole epoch. The steady-state ratio is shown as well: it is
the lake pipeline's CPU overhead alone.

Until 2026-11-26 the lake-fed timed epoch often started 16-20 s late (0.48-0.66 of in-memory by
timed epoch, 0.8-0.9 steady). A py-spy dump during the wait showed the main thread in
TensorFlow's iterator destructor (`IteratorResource::~IteratorResource`, waiting for the
pipeline's threads): Keras drops the dataset iterator at the end of every epoch, and tearing
down one whose pipeline is still prefetching from the Python generator took that long in some
runs (6 of 11 fresh-process lake phases; the earlier format's TFRecord stream too; never the
in-memory dataset). Training (`train_variant`, and this benchmark, which fits the same way) now
gives the stream its length (each lake shard counts its labelled images from the label column)
and fits on `dataset.repeat()` with `steps_per_epoch` (`core.training.fit_inputs`), so one
iterator serves the whole fit. The earlier format's stream has no known length and keeps the
old behaviour, which is why it still stalls in some runs.

With one iterator per fit the in-memory pipeline got faster as well (1,170-1,184 examples/s on
2026-11-26, against 930-1,040 before), and lake-fed over in-memory came out at 0.79-0.84, whole
epoch and steady state alike.

What closed the rest of the gap, later on 2026-11-26: the stream now reads the next shard ahead
on a thread and forms the batches itself (`core.training._ShardStream`: examples pooled until
about 2,048 wait, drawn at random into batches), instead of yielding whole shards for tf.data to
unbatch, shuffle and batch again. Loading a 500-image shard (decompressing its columns,
assembling int16 features) costs about 14 ms, about 3 % of the CPU time the model spends on those
images, yet the lake-fed epoch ran about 10 % slower, because the load ran when the pipeline
asked for the shard, while the training step waited for it. An experiment with the same model
on 14 shards (second epoch; rates move several per cent between runs here): in memory 858-907
examples/s; a generator handing over precomputed batches 809-858 (what the generator hop alone
costs); the stream loading each shard on demand 741-836; with the shard read ahead 839-947."""


def format_docs(report: dict[str, Any], arguments: str = "", gpu: dict | None = None) -> str:
    """docs/benchmarks-training.md: figures, method, command and machine (`arguments` as run)."""
    gpu = GPU_RESULT if gpu is None else gpu
    ran_text = f"; these figures come from `{COMMAND} {arguments}`" if arguments else ""
    m, s, corpus = report["machine"], report["settings"], report["corpus"]
    lake = report["medians"]["lake"]
    earlier = report["medians"]["tfrecord"]
    paired = ", ".join(f"{r:.3f}" for r in report["paired_ratios"])
    steady = ", ".join(f"{r:.3f}" for r in report["paired_steady_ratios"])
    memory_peak = report["medians"]["memory"]["peak_rss_mib"]
    load = report.get("load_average")
    load_text = (
        f" The 1-minute load average was {load[0]:.1f} at the start and {load[1]:.1f} at the end"
        f" ({m['cores']} cores)."
        if load
        else ""
    )
    big = report["big"]
    big_text = (
        f"The {corpus['big_records']:,}-record corpus ({corpus['big_shards']} shards) is the "
        f"{corpus['records']:,}-record one's shards again under new names (the ingest "
        "benchmark's corpus, hard links), ingested into its own lake; its epoch walks every "
        f"shard once ({big['examples']:,} examples, {big['epoch_seconds'] / 60:.1f} minutes)."
        if big is not None
        else "No larger corpus was run (`--big-records 0`), so memory growth was not measured."
    )
    return f"""# Training benchmark

`{COMMAND}`{ran_text}.
It measures how fast the `baseline` model trains when fed from the lake, against the same model
fed from in-memory tensors and against the earlier project's input format, in the same run.

## Results (CPU)

Measured {m["date"]} on {m["cpu"]}, {m["cores"]} cores, {m["memory"]} memory, {m["os"]},
Python {m["python"]}, TensorFlow {m["tensorflow"]}, Keras {m["keras"]}, numpy {m["numpy"]},
pyarrow {m["pyarrow"]}. The machine is shared with other sessions, so rates move from run to
run: each row gives the median and every run.{load_text}

{_target_table(report)}

{_table(RUN_HEADER, _run_rows(report))}

Lake-fed over in-memory, run by run (the pipelines take turns in each round): timed epoch
{paired}; steady state {steady}.
Against the earlier format, lake-fed training runs at
{lake["median_examples_per_s"] / earlier["median_examples_per_s"]:.2f}x its examples/s.

{RATIO_NOTE}

Peak memory: fed from the lake, training holds a pool of about 2,048 examples, the shard read
ahead and a few batches, so its peak stays flat from {corpus["examples"]:,} to
{corpus["big_examples"] or 0:,} examples (the table's last row). In memory, the corpus sits in
RAM as int16 and again inside TensorFlow: {memory_peak:,.0f} MiB for {corpus["examples"]:,}
examples, growing with the corpus (a full 86,000-record train split would need about
{memory_peak / corpus["examples"] * 86_000 / 1024:.0f} GiB by the same measure).

Total benchmark time: {report["total_seconds"] / 60:.1f} minutes.

## Results (GPU, one epoch on a full-size corpus)

{format_gpu(gpu)}
## Method

- **Corpus and lake**: the ingest benchmark's cached corpus
  (`{s["cache_dir"]}/corpus-<records>-<records per shard>`, {corpus["records"]:,} records in
  {corpus["shards"]} shards of {s["records_per_shard"]}), each shard ingested with its
  `ingest_shard` (the ingest op's work: filter, then `filtered_images` and `spectral_indices`
  as Arrow objects) into a `LocalStore` lake cached as
  `{s["cache_dir"]}/lake-<records>-<records per shard>`. Blank images are filtered out, so
  the epoch has {corpus["examples"]:,} examples. {big_text}
- **Lake-fed**: `make_dataset(sources, baseline, training=True)` with the shard sources built as
  `defs/training/assets.py:shard_sources` builds them (each shard's two Arrow objects read from
  the lake when the pipeline reaches it; the benchmark has its own copy so that Dagster's import
  does not add to every peak, and its smoke test checks that both load the same data).
- **In memory**: every shard through `shard_features` into one int16 array first (not timed),
  then `in_memory_dataset(x, y, baseline, training=True)`.
- **Earlier format**: the same images written once (cached) as one `tf.train.Example` each, with
  B2-B5 as `tf.io.serialize_tensor` float32 bytes features, as the earlier project stored them
  (raw values rather than its /255, so the model sees the same inputs), then
  `TFRecordDataset` -> `map(parse_single_example + parse_tensor, AUTOTUNE)` -> `batch(64)` ->
  `prefetch(2)`; it did not shuffle, which saves it work.
- **Training**: each run in a fresh interpreter: `set_determinism(23)`, `build_model(baseline)`,
  then `model.fit` for {s["epochs"]} epochs with the variant's class weights, as `train_variant`
  does, and the last epoch is timed. **Timed epoch** (the target): examples over the whole
  epoch's wall time, so every per-epoch cost counts (the lake's shard loads; the in-memory
  pipeline refilling its whole-corpus shuffle buffer before its first batch) and the one-off
  graph tracing of the first epoch does not. **Steady state**: the same epoch after its first
  {s["warmup_batches"]} batches. Model build and compilation are never timed. {s["repeats"]} runs
  of each pipeline, taking turns in an order rotated each round.
- **Peak memory**: `ru_maxrss` of the run's own process: the lake-fed run on the
  {corpus["records"]:,}-record corpus (its median run) against one lake-fed epoch on the
  {corpus["big_records"] or 0:,}-record corpus.

## Running it

    # the default run: about 15 minutes (a first run also generates and ingests the corpora)
    {COMMAND}
    # a check that it works: 4,000 records, one run each, no 100,000-record epoch, no page
    {COMMAND} --quick

`--records`, `--big-records` (0 skips the memory run), `--repeats`, `--warmup-batches`,
`--cache-dir`; `--docs PATH` writes this page elsewhere; `--gpu-json PATH` renders the GPU
section from a new `gpu_epoch.py --out` file. The GPU figures come from
`droughtwatch_tests/benchmarks/gpu_epoch.py`, which needs Keras but not TensorFlow.
"""


def gpu_from_json(path: Path) -> dict[str, Any]:
    """The GPU section's figures from a `gpu_epoch.py --out` file."""
    data = json.loads(Path(path).read_text())
    device = data["device"]
    return {
        "date": time.strftime("%Y-%m-%d", time.localtime(Path(path).stat().st_mtime)),
        "card": device.get("device", device.get("nvidia_smi", "unknown")),
        "software": f"Keras {device['keras']} on {device['backend']} {device.get('jax', '')}, "
        f"Python {device['python']}, {device['cpus']} CPU cores",
        "command": "python3 -m droughtwatch_tests.benchmarks.gpu_epoch",
        "records": data["records"],
        "generation_workers": data["generation_workers"],
        "generation_seconds": data["generation_seconds"],
        "warmup_steps": data["runs"][0]["warmup_steps"],
        "runs": [
            {
                **run,
                "network": f"{run['network']}, {run['channels']} channels, "
                f"{run['parameters']:,} parameters",
            }
            for run in data["runs"]
        ],
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m droughtwatch_tests.benchmarks.training",
        description="Benchmark training input pipelines: lake, in memory, the earlier format.",
    )
    parser.add_argument("--records", type=int, default=None, help="default 20,000")
    parser.add_argument(
        "--big-records",
        type=int,
        default=None,
        help="peak-memory corpus (default 100,000; 0: skip)",
    )
    parser.add_argument("--records-per-shard", type=int, default=DEFAULT_RECORDS_PER_SHARD)
    parser.add_argument("--repeats", type=int, default=None, help=f"default {DEFAULT_REPEATS}")
    parser.add_argument("--warmup-batches", type=int, default=DEFAULT_WARMUP_BATCHES)
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help="the last one is timed (default 2)"
    )
    parser.add_argument("--quick", action="store_true", help="4,000 records, 1 run, no page")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--docs", type=Path, default=None, help=f"default {DEFAULT_DOCS}")
    parser.add_argument("--gpu-json", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write all figures as JSON")
    # Internal: one measured phase in this process (run_phase starts these).
    parser.add_argument("--phase", choices=(*PHASES, "write-seed-format"), help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--phase-result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings(
        records=args.records or (4_000 if args.quick else DEFAULT_RECORDS),
        big_records=(0 if args.quick else DEFAULT_BIG_RECORDS)
        if args.big_records is None
        else args.big_records,
        records_per_shard=args.records_per_shard,
        repeats=args.repeats or (1 if args.quick else DEFAULT_REPEATS),
        warmup_batches=args.warmup_batches,
        epochs=args.epochs,
        cache_dir=args.cache_dir,
    )
    if min(settings.records, settings.records_per_shard, settings.repeats) <= 0 or (
        settings.big_records < 0 or min(settings.warmup_batches, settings.epochs) < 1
    ):
        raise SystemExit("record counts, repeats and warm-up batches must be positive")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        _phase_main(args)
        return 0
    settings = settings_from_args(args)
    docs = args.docs if args.docs is not None else (None if args.quick else DEFAULT_DOCS)
    _log(
        f"training benchmark: {VARIANT} on {settings.records:,} records, {settings.repeats} "
        f"run(s) per pipeline, memory also at {settings.big_records:,}"
    )
    report = run_benchmark(settings)
    print()
    print(format_summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    if docs is not None:
        gpu = gpu_from_json(args.gpu_json) if args.gpu_json else None
        arguments = measuring_arguments(
            sys.argv[1:] if argv is None else argv, ("--json", "--docs", "--gpu-json")
        )
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(format_docs(report, arguments, gpu))
        _log(f"wrote {docs}")
    return 0 if all(r["passed"] for r in report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
