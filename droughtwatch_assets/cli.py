"""The ``droughtwatch`` command: sample data, the benchmark download, discovery, the demo."""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gc
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from droughtwatch_assets import runs
from droughtwatch_assets.adapters.storage import Store, open_store
from droughtwatch_assets.runs import ShardOutcome
from droughtwatch_assets.settings import Settings

log = logging.getLogger("droughtwatch")


# ---------------------------------------------------------------------------------------------
# sample-data


def write_shards(store: Store, shards: Iterable, total_records: int, desc: str) -> list[str]:
    keys = []
    with tqdm(total=total_records, unit="rec", desc=desc, disable=None) as bar:
        for shard in shards:
            store.write_bytes(shard.key, shard.data)
            keys.append(shard.key)
            bar.update(shard.records)
    return keys


def cmd_sample_data(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(args.dest or settings.data_root, endpoint_url=settings.s3_endpoint_url)
    sample_data(
        store,
        train=args.train,
        val=args.val,
        records_per_shard=args.records_per_shard,
        drops=args.drops,
        records_per_drop=args.records_per_drop,
        start_date=args.start_date,
        seed=args.seed,
        labelled_drops=not args.unlabelled_drops,
        shift=args.shift,
    )
    return 0


def sample_data(
    store: Store,
    *,
    train: int,
    val: int,
    records_per_shard: int,
    drops: int,
    records_per_drop: int,
    start_date: dt.date,
    seed: int,
    labelled_drops: bool = True,
    shift: str = "none",
) -> list[str]:
    """Write a synthetic corpus (train/val shards, dated drops drawn with `shift`, one of
    ``core.synthetic.SHIFTS``) into `store`; its keys."""
    from droughtwatch_assets.core.synthetic import SHIFTS, iter_benchmark_shards, iter_drop_shards

    keys: list[str] = []
    if train or val:
        shards = iter_benchmark_shards(
            train_records=train, val_records=val, records_per_shard=records_per_shard, seed=seed
        )
        keys += write_shards(store, shards, train + val, "train/val")
    if drops:
        shards = iter_drop_shards(
            drops=drops,
            records_per_drop=records_per_drop,
            start_date=start_date,
            seed=seed,
            labelled=labelled_drops,
            shift=SHIFTS[shift],
        )
        keys += write_shards(store, shards, drops * records_per_drop, "drops")
    print(f"wrote {len(keys)} shards to {store.uri}")
    return keys


# ---------------------------------------------------------------------------------------------
# download


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    from droughtwatch_assets.adapters.download import (
        DownloadError,
        download_archive,
        unpack_archive,
    )

    store = open_store(args.dest or settings.data_root, endpoint_url=settings.s3_endpoint_url)
    archive = Path(args.archive or settings.home / "downloads" / Path(args.url).name)
    archive.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_archive(args.url, archive, expected_sha256=args.sha256)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def put(key: str, fileobj) -> None:
        with tempfile.NamedTemporaryFile() as tmp:
            while chunk := fileobj.read(1 << 20):
                tmp.write(chunk)
            tmp.flush()
            store.upload_file(key, tmp.name)

    keys = unpack_archive(archive, put)
    print(
        f"unpacked {len(keys)} shards into {store.uri}; next: droughtwatch discover --materialize"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# discover


def _progress(total: int, desc: str):
    return tqdm(total=total, unit="shard", desc=desc, disable=None)


def materialize_shards(settings: Settings, keys: Sequence[str]) -> list[ShardOutcome]:
    """Run ingest_job over the shards, many per run (DROUGHTWATCH_SHARDS_PER_RUN)."""
    with _progress(len(keys), "ingest") as bar:
        return runs.run_batches("ingest_job", keys, settings=settings, progress=bar)


def discover_and_materialize(
    settings: Settings, *, materialize: bool
) -> tuple[list, list, list[ShardOutcome]]:
    if materialize:
        runs.start_workers()  # they import while this process imports and lists the data root
    from droughtwatch_assets.defs.partitions import shards
    from droughtwatch_assets.pipeline.discovery import already_ingested_in, full_scan, unique_keys

    data = open_store(settings.data_root, endpoint_url=settings.s3_endpoint_url)
    lake = open_store(settings.lake, endpoint_url=settings.s3_endpoint_url)
    found, skipped = full_scan(data, already_ingested=already_ingested_in(lake))
    instance = runs.instance()
    runs.fail_orphaned_runs(instance)
    keys = unique_keys(found)
    existing = set(instance.get_dynamic_partitions(shards.name))
    new = [k for k in keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(shards.name, new)
    outcomes = materialize_shards(settings, keys) if materialize else []
    return found, skipped, outcomes


def print_discovery(found, skipped, outcomes: list[ShardOutcome]) -> None:
    for key, reason in skipped:
        print(f"  skipped {key}: {reason}")
    for f in found:
        note = f" (re-uploaded, was {f.previous_version})" if f.previous_version else ""
        print(f"  found {f.key}{note}")
    print(f"{len(found)} shards to ingest, {len(skipped)} objects skipped")
    if not outcomes:
        return
    print()
    columns = [
        ("in", "filtered_images.records_in"),
        ("kept", "filtered_images.records_kept"),
        ("blank", "filtered_images.removed_blank"),
        ("cloudy", "filtered_images.flagged_cloudy"),
    ]
    print(
        f"{'shard':44} {'status':7} " + " ".join(f"{c:>6}" for c, _ in columns) + "   NDVI  checks"
    )
    for o in outcomes:
        ndvi = o.metadata.get("spectral_indices.mean_ndvi")
        checks = [f"FAILED {c}" for c in o.failed_checks] + [f"warn {c}" for c in o.warned_checks]
        counts = " ".join(f"{o.metadata.get(key, '-'):>6}" for _, key in columns)
        ndvi_text = "-" if ndvi is None else f"{ndvi:.3f}"
        status = "ok" if o.ok else "FAILED"
        print(f"{o.key:44} {status:7} {counts} {ndvi_text:>6}  {', '.join(checks) or 'all passed'}")
        if o.error:
            print(f"    error: {o.error}")
    failed = sum(not o.ok for o in outcomes)
    print(f"{len(outcomes) - failed} shards ingested, {failed} failed")


def cmd_discover(args: argparse.Namespace, settings: Settings) -> int:
    found, skipped, outcomes = discover_and_materialize(settings, materialize=args.materialize)
    print_discovery(found, skipped, outcomes)
    if found and not args.materialize:
        print("next: droughtwatch discover --materialize, or start the drop sensor (make dev)")
    return 1 if any(not o.ok for o in outcomes) else 0


def cmd_mlflow_ui(args: argparse.Namespace, settings: Settings) -> int:
    """The MLflow UI on the embedded (or configured) tracking store."""
    from droughtwatch_assets.adapters.tracking import default_artifact_root, default_tracking_uri

    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow), "ui",
        "--backend-store-uri", default_tracking_uri(settings),
        "--default-artifact-root", default_artifact_root(settings),
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    print(f"MLflow UI on http://{args.host}:{args.port}")
    runs_url = mlflow_runs_url(settings, f"http://{args.host}:{args.port}")
    print(f"droughtwatch's training runs: {runs_url}")
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached


def cmd_home(args: argparse.Namespace, settings: Settings) -> int:
    home = runs.prepare_dagster_home()
    print(f"DROUGHTWATCH_HOME={settings.home}")
    print(f"DAGSTER_HOME={home}")
    print(f"data root: {settings.data_root}")
    print(f"lake:      {settings.lake}")
    print(f"MLflow:    {mlflow_runs_url(settings)}")
    return 0


def mlflow_runs_url(settings: Settings, ui_url: str | None = None) -> str:
    """Where the MLflow UI (at `ui_url`, else the settings' address) shows droughtwatch's
    training runs, in its model-training view."""
    from droughtwatch_assets.adapters.tracking import (
        Tracking,
        default_artifact_root,
        default_tracking_uri,
        default_ui_url,
    )

    ui_url = ui_url or default_ui_url(settings)
    tracking = Tracking(
        default_tracking_uri(settings), default_artifact_root(settings), ui_url=ui_url
    )
    return tracking.experiment_url() or ui_url


# ---------------------------------------------------------------------------------------------
# train and models


def train(settings: Settings, variant: str, *, epochs: int | None = None) -> ShardOutcome:
    """Run training_job for one variant: corpus, training, registry and gate."""
    config = (
        {"ops": {"trained_model": {"config": {"epochs": epochs}}}} if epochs is not None else None
    )
    return runs.run_one("training_job", variant, run_config=config)


def print_training(outcome: ShardOutcome) -> None:
    m = outcome.metadata
    if "trained_model.val_accuracy" in m:
        print(
            f"trained {outcome.key}: val accuracy {m['trained_model.val_accuracy']:.3f}, "
            f"macro F1 {m['trained_model.val_macro_f1']:.3f} "
            f"(majority class: accuracy {m['trained_model.majority_val_accuracy']:.3f}), "
            f"{m['trained_model.train_records']} training records, "
            f"{m['trained_model.epochs']} epochs"
        )
    if "registered_model.version" in m:
        verdict = "promoted to champion" if m["registered_model.promoted"] else "NOT promoted"
        print(
            f"registered {m['registered_model.model_name']} version "
            f"{m['registered_model.version']}: {verdict}; {m['registered_model.reason']}"
        )
    if outcome.error and "registered_model.version" not in m:
        print(f"training failed: {outcome.error}")


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    outcome = train(settings, args.variant, epochs=args.epochs)
    print_training(outcome)
    return 0 if outcome.ok else 1


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from droughtwatch_assets.adapters import metricsdb
    from droughtwatch_assets.adapters.tracking import (
        Tracking,
        default_artifact_root,
        default_tracking_uri,
    )
    from droughtwatch_assets.core.variants import VARIANTS

    print("variants:")
    for variant in VARIANTS.values():
        print(
            f"  {variant.name:9} {variant.network:15} epochs {variant.epochs:<4} "
            f"features {','.join(variant.features)}"
        )
    tracking = Tracking(default_tracking_uri(settings), default_artifact_root(settings))
    models = tracking.list_models()
    print()
    print("registered versions:" if models else "no registered models yet (droughtwatch train)")
    for model in models:
        for version in model["versions"]:
            aliases = ",".join(version.get("aliases", [])) or "-"
            accuracy, f1 = version.get("accuracy"), version.get("macro_f1")
            print(
                f"  {model['name']:24} v{version['version']:<4} {aliases:21} "
                f"accuracy {'-' if accuracy is None else f'{accuracy:.3f}'}  "
                f"macro F1 {'-' if f1 is None else f'{f1:.3f}'}"
            )
    history = metricsdb.promotion_history(metricsdb.connect(metricsdb.database_url(settings)))
    if history:
        print()
        print("promotion decisions (newest first):")
        for row in history[:20]:
            verdict = "promoted" if row["promoted"] else "refused "
            print(
                f"  {row['recorded_at']:%Y-%m-%d %H:%M} {row['model_name']:24} "
                f"v{row['challenger_version']:<4} {verdict} {row['reason']}"
            )
    return 0


# ---------------------------------------------------------------------------------------------
# score, rescore and emulate-drops


def score_shards(
    settings: Settings, keys: Sequence[str], *, model_format: str = "onnx"
) -> list[ShardOutcome]:
    """Run rescore_job (batch_predictions + monitoring_metrics) over the shards, many per run,
    scoring the model's ONNX export (or, with `model_format` "keras", the Keras model)."""
    config = {"ops": {"process_shards": {"config": {"model_format": model_format}}}}
    with _progress(len(keys), "score") as bar:
        outcomes = runs.run_batches(
            "rescore_job", keys, settings=settings, progress=bar, run_config=config
        )
    runs.execute(runs.create_run("drift_summary_job", []))  # drift_by_drop_date, refreshed
    return outcomes


def print_scores(outcomes: list[ShardOutcome]) -> None:
    print(f"{'shard':40} {'model':26} {'drift':>6} {'ndvi psi':>8} {'accuracy':>8}  checks")
    for o in outcomes:
        m = o.metadata
        name = m.get("batch_predictions.model_name", "-")
        model = f"{name} v{m.get('batch_predictions.model_version', '-')}"
        drift = m.get("monitoring_metrics.prediction_drift")
        psi = m.get("monitoring_metrics.ndvi_psi")
        accuracy = m.get("monitoring_metrics.accuracy")
        checks = ", ".join(f"warn {c.split(':')[-1]}" for c in o.warned_checks) or (
            "ok" if o.ok else "FAILED"
        )
        print(
            f"{o.key:40} {model:26} {'-' if drift is None else f'{drift:.3f}':>6} "
            f"{'-' if psi is None else f'{psi:.3f}':>8} "
            f"{'-' if accuracy is None else f'{accuracy:.3f}':>8}  {checks}"
        )
        if o.error:
            print(f"    error: {o.error}")


def scored_keys(settings: Settings, prefix: str, *, again: bool) -> list[str]:
    from droughtwatch_assets.defs.partitions import shards
    from droughtwatch_assets.pipeline.lake import BATCH_PREDICTIONS, SPECTRAL_INDICES, object_key

    lake = open_store(settings.lake, endpoint_url=settings.s3_endpoint_url)
    keys = sorted(
        k for k in runs.instance().get_dynamic_partitions(shards.name) if k.startswith(prefix)
    )
    ingested = [k for k in keys if lake.exists(object_key(SPECTRAL_INDICES, k))]
    if again:
        return ingested
    return [k for k in ingested if not lake.exists(object_key(BATCH_PREDICTIONS, k))]


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    runs.start_workers()  # they import while the lake is listed
    keys = scored_keys(settings, args.prefix, again=args.again)
    if not keys:
        print(f"nothing to score under {args.prefix!r} (use --again to re-score)")
        return 0
    outcomes = score_shards(settings, keys, model_format=args.model_format)
    print_scores(outcomes)
    return 1 if any(not o.ok for o in outcomes) else 0


def cmd_emulate_drops(args: argparse.Namespace, settings: Settings) -> int:
    """Upload dated drops built from validation shards, one every `interval` seconds."""
    import time

    store = open_store(settings.data_root, endpoint_url=settings.s3_endpoint_url)
    sources = [
        i.key for i in store.list(args.source) if i.key.rsplit("/", 1)[-1].startswith("part-")
    ]
    if not sources:
        print(
            f"error: no shards under {args.source} in {store.uri}; "
            "run droughtwatch sample-data first"
        )
        return 1
    dates = [p.rstrip("/").rsplit("/", 1)[-1] for p in store.list_prefixes("drops/")]
    known = sorted(d for d in dates if len(d) == 10)
    day = dt.date.fromisoformat(known[-1]) + dt.timedelta(days=1) if known else dt.date.today()
    for n in range(args.count):
        key = f"drops/{day.isoformat()}/part-r-00000"
        store.write_bytes(key, store.read_bytes(sources[n % len(sources)]))
        print(f"uploaded {store.url(key)} (from {sources[n % len(sources)]})", flush=True)
        day += dt.timedelta(days=1)
        if n + 1 < args.count:
            time.sleep(args.interval)
    return 0


# ---------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from droughtwatch_assets.adapters import metricsdb
    from droughtwatch_assets.adapters.tracking import default_tracking_uri

    data = open_store(settings.data_root, endpoint_url=settings.s3_endpoint_url)
    if next(iter(data.list("", limit=1)), None) is None:
        print(f"generating a sample corpus in {data.uri}")
        sample_data(
            data,
            train=args.train,
            val=args.val,
            records_per_shard=args.records_per_shard,
            drops=args.drops,
            records_per_drop=args.records_per_drop,
            start_date=dt.date(2024, 8, 1),
            seed=args.seed,
        )
    else:
        print(f"data root {data.uri} already holds data: discovering what is new")
    found, skipped, outcomes = discover_and_materialize(settings, materialize=True)
    print_discovery(found, skipped, outcomes)
    print()
    print(f"training baseline ({args.epochs} epochs) ...")
    training = train(settings, "baseline", epochs=args.epochs)
    print_training(training)
    scores: list[ShardOutcome] = []
    if training.ok:
        print()
        print("scoring the drops with the champion ...")
        scores = score_shards(settings, scored_keys(settings, "drops/", again=False))
        print_scores(scores)
    print()
    print("where things are:")
    print(f"  data root        {settings.data_root}")
    print(
        f"  lake             {settings.lake}  (raw_tfrecords/, filtered_images/, spectral_indices/)"
    )
    print(f"  dagster instance {settings.dagster_home}")
    print(f"  MLflow           {default_tracking_uri(settings)}  (UI: make mlflow-ui)")
    print(
        f"  metrics database {metricsdb.database_url(settings)}"
        "  (tables monitoring_metrics, promotions)"
    )
    print("  predictions      lake/batch_predictions/<shard>.parquet")
    print("  models           droughtwatch models")
    print(
        "  Grafana          docker/grafana: the monitoring dashboard, on PostgreSQL "
        "(DROUGHTWATCH_METRICS_DB_URL)"
    )
    print("  UI               make dev  -> http://127.0.0.1:3000 (the drop sensor runs there)")
    failed = [o for o in [*outcomes, training, *scores] if not o.ok]
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from droughtwatch_assets.adapters.download import BENCHMARK_URL

    parser = argparse.ArgumentParser(prog="droughtwatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every skipped object")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-data", help="write synthetic shards in the real schema")
    p.add_argument("--dest", help="local folder or s3:// URI (default: the data root)")
    p.add_argument("--train", type=int, default=2000, help="train records (default 2000)")
    p.add_argument("--val", type=int, default=500, help="val records (default 500)")
    p.add_argument("--records-per-shard", type=int, default=500)
    p.add_argument("--drops", type=int, default=0, help="dated drops to write (default 0)")
    p.add_argument("--records-per-drop", type=int, default=250)
    p.add_argument("--unlabelled-drops", action="store_true", help="drops without labels")
    p.add_argument(
        "--shift",
        choices=["none", "dry", "cloudy", "offset"],
        default="none",
        help="drops drawn unlike the training data, labelled so the truth is known: dry (class "
        "prior towards 0), cloudy (35%% cloudy scenes), offset (B5 reads 20 counts high)",
    )
    p.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2024, 8, 1))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("download", help="fetch the real benchmark (2.15 GB) into the data root")
    p.add_argument("--url", default=BENCHMARK_URL)
    p.add_argument(
        "--archive", help="where to keep the zip (default: $DROUGHTWATCH_HOME/downloads)"
    )
    p.add_argument("--sha256", help="expected checksum of the archive")
    p.add_argument("--dest", help="local folder or s3:// URI (default: the data root)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("discover", help="list the data root and ingest what is new or rewritten")
    p.add_argument("--materialize", action="store_true", help="also run the ingest job for them")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("train", help="train, register and gate one variant (training_job)")
    p.add_argument("variant", help="baseline, useful, ndvi, nd, full, dummy")
    p.add_argument("--epochs", type=int, help="override the variant's epochs")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="champion predictions + monitoring for ingested shards")
    p.add_argument("--prefix", default="drops/", help="shards under this prefix (default drops/)")
    p.add_argument(
        "--again", action="store_true", help="re-score shards that already have predictions"
    )
    p.add_argument(
        "--model-format",
        choices=("onnx", "keras"),
        default="onnx",
        help="score the champion's ONNX export with onnxruntime (default; no TensorFlow) or "
        "its Keras model",
    )
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("emulate-drops", help="upload dated drops from val/ shards, one every K s")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--interval", type=float, default=30.0, help="seconds between drops")
    p.add_argument("--source", default="val/", help="where to copy shards from (default val/)")
    p.set_defaults(func=cmd_emulate_drops)

    p = sub.add_parser("models", help="variants, registered versions, aliases, promotions")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("mlflow-ui", help="the MLflow UI on the droughtwatch tracking store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_mlflow_ui)

    p = sub.add_parser("home", help="create the Dagster home if missing and print the locations")
    p.set_defaults(func=cmd_home)

    p = sub.add_parser("demo", help="sample corpus + drops, discover, ingest, summary")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--records-per-shard", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2, help="baseline epochs (default 2)")
    p.add_argument("--drops", type=int, default=3)
    p.add_argument("--records-per-drop", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter and Dagster's beta notices are not for this terminal.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow draws a download bar for every model it loads; the CLI's own bar says enough.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return args.func(args, Settings.from_env())


CLI_GC_THRESHOLDS = (10_000, 50, 50)  # Python's: (700, 10, 10)


def entry() -> None:
    """The console script: `main`, then an exit without Python's teardown of the interpreter.
    Tearing down the ~1,800 modules Dagster brings costs 0.6-1 s after every command, with
    nothing left to do. What a normal exit does before that is done first: thread pools stop,
    non-daemon threads are joined, exit handlers run (multiprocessing's, logging's), output is
    flushed. An exception, or argparse's exit, leaves the normal way; a reader that went away
    (`droughtwatch ... | head`) ends the command quietly, as Python's documentation
    recommends.

    The garbage collector runs with larger thresholds: a command imports a few hundred thousand
    objects (Dagster) that live to its end, and with the default ones a collection started every
    700 allocations, its full ones walking everything imported so far again (about 0.2 s of the
    import's CPU, see preload.py). Cycles are still collected, less often."""
    gc.set_threshold(*CLI_GC_THRESHOLDS)
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to write
        code = 1
    # What a normal exit does first, then second (no public names): the thread pools' exit
    # hooks (they stop idle pool threads, such as MLflow's), then a join of non-daemon threads;
    # then the exit handlers.
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
