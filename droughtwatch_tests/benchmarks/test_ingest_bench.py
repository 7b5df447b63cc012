"""Smoke test of the ingest benchmark on a tiny corpus: result structure and stored outputs."""

from pathlib import Path

import pytest

from droughtwatch_assets.adapters.storage import LocalStore
from droughtwatch_assets.core.imagestack import dataset_from_arrow
from droughtwatch_assets.pipeline import lake as lake_module
from droughtwatch_tests.benchmarks import ingest as bench

RECORDS, PER_SHARD = 300, 100


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def corpus(cache: Path) -> bench.Corpus:
    return bench.ensure_corpus(RECORDS, PER_SHARD, cache, log=lambda _: None)


def test_corpus_is_generated_once_and_reused(corpus: bench.Corpus, cache: Path) -> None:
    assert corpus.records == RECORDS
    assert corpus.keys == ["train/part-r-00000", "train/part-r-00001", "train/part-r-00002"]
    assert corpus.raw_bytes == sum(p.stat().st_size for p in corpus.data_root.rglob("part-*"))
    again = bench.ensure_corpus(RECORDS, PER_SHARD, cache, log=lambda _: None)
    assert again == corpus


def test_big_corpus_reuses_base_shards_and_generates_the_tail(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "BASE_RECORDS", 200)
    big = bench.ensure_corpus(450, PER_SHARD, cache, log=lambda _: None)
    base = bench.ensure_corpus(200, PER_SHARD, cache, log=lambda _: None)
    assert big.shard_records == [100, 100, 100, 100, 50]
    assert big.keys[-1] == "train/part-r-00004"
    # Shards 2 and 3 are base shards 0 and 1 again; only the 50-record tail is new.
    for copy, source in ((2, 0), (3, 1)):
        copied = (big.data_root / big.keys[copy]).read_bytes()
        assert copied == (base.data_root / base.keys[source]).read_bytes()
    assert big.generated_records == 250


def test_ingest_shard_stores_what_the_assets_store(corpus: bench.Corpus, tmp_path: Path) -> None:
    key = corpus.keys[0]
    outcome = bench.ingest_shard(str(corpus.data_root), str(tmp_path), key)
    lake = LocalStore(tmp_path)
    assert sorted(o.key for o in lake.list()) == [
        f"filtered_images/{key}.arrow",
        f"raw_tfrecords/{key}.json",
        f"spectral_indices/{key}.arrow",
    ]
    filtered = dataset_from_arrow(lake.read_bytes(f"filtered_images/{key}.arrow"))
    indices = dataset_from_arrow(lake.read_bytes(f"spectral_indices/{key}.arrow"))
    assert outcome.records == PER_SHARD
    assert outcome.kept == filtered.sizes["image"] == indices.sizes["image"] > 0
    assert outcome.filtered_bytes + outcome.indices_bytes == bench.lake_bytes(tmp_path)
    assert set(outcome.steps) == set(bench.STEPS)
    # Encoded as the assets encode them (lake.prepare: the indices without lz4, for one).
    for asset, ds in (("filtered_images", filtered), ("spectral_indices", indices)):
        stored = lake.read_bytes(f"{asset}/{key}.arrow")
        assert stored == bytes(lake_module.prepare(asset, key, ds)[1]), asset


def test_phases_report_throughput_bytes_and_memory(corpus: bench.Corpus, tmp_path: Path) -> None:
    ours = bench.run_phase("ours", corpus.folder, RECORDS, tmp_path, workers=2)
    baseline = bench.run_phase("baseline", corpus.folder, 150, tmp_path, workers=2)

    assert ours["records"] == RECORDS and ours["shards"] == 3
    # The baseline takes whole shards: the first two cover 150 records.
    assert baseline["records"] == 200 and baseline["shards"] == 2
    for result in (ours, baseline):
        assert result["records_per_s"] > 0
        assert result["raw_bytes"] > 0 and result["stored_bytes"] > 0
        assert result["peak_rss_mib"] > 10
    assert ours["peak_worker_rss_mib"] > 10
    # float32 tensors for 14 planes cost about 5x the raw uint8 bands.
    assert baseline["stored_bytes"] > 4 * baseline["raw_bytes"]
    assert ours["stored_bytes"] <= bench.TARGET_STORED_RATIO * ours["raw_bytes"]
    assert set(ours["step_seconds"]) == set(bench.STEPS)
    assert sorted(p.name for p in (tmp_path / "out-baseline").iterdir()) == [
        "train-part-r-00000.tfrecord",
        "train-part-r-00001.tfrecord",
    ]


def test_report_evaluates_targets_and_renders(corpus: bench.Corpus) -> None:
    def run(name: str, rate: float, stored: int, peak: float) -> dict:
        return {
            "name": name, "workers": 2, "records": 1000, "seconds": 1000 / rate,
            "records_per_s": rate, "median_records_per_s": rate, "all_records_per_s": [rate],
            "raw_bytes": 100, "stored_bytes": stored, "peak_rss_mib": peak,
            "peak_worker_rss_mib": peak, "step_seconds": dict.fromkeys(bench.STEPS, 0.1),
        }  # fmt: skip

    ours, baseline, big = run("ours", 12_000, 90, 200), run("base", 1_000, 500, 600), None
    big = {**run("ours", 11_000, 90, 260), "records": 5000}
    rows = bench.evaluate(ours, baseline, big)
    assert [r["passed"] for r in rows] == [True, True, False]  # 260 / 200 MiB grew 30 %
    report = {
        "machine": bench.machine(), "settings": {k: "1" for k in (
            "records_per_shard", "cache_dir", "repeats", "baseline_records", "baseline_repeats")},
        "corpus": {"records": 1000, "shards": 2, "raw_bytes": 100, "big_records": 5000},
        "ours1": ours, "ours2": ours, "baseline": baseline, "big": big, "targets": rows,
        "total_seconds": 60.0,
    }  # fmt: skip
    summary = bench.format_summary(report)
    assert "FAIL" in summary and "PASS" in summary and "12.00x" in summary
    docs = bench.format_docs(report, "--quick")
    assert f"{bench.COMMAND} --quick" in docs and report["machine"]["cpu"] in docs
