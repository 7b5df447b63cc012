"""Training pipeline on tiny generated corpora: features, streaming, laziness, reproducibility."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import numpy as np
import pytest
import xarray as xr

from droughtwatch_assets.core.images import filter_images
from droughtwatch_assets.core.imagestack import dataset_from_arrow
from droughtwatch_assets.core.indices import index_dataset
from droughtwatch_assets.core.synthetic import generate_ids, generate_images
from droughtwatch_assets.core.training import (
    HISTORY_KEYS,
    ShardSource,
    evaluate,
    fit_inputs,
    in_memory_dataset,
    make_dataset,
    predict,
    shard_features,
    train_variant,
)
from droughtwatch_assets.core.variants import VARIANTS, Variant, VariantError, with_overrides
from droughtwatch_assets.pipeline import lake

pytestmark = pytest.mark.filterwarnings(
    # Keras' own np.array(tensor) calls under numpy 2; nothing in this project's code.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SMALL = with_overrides(VARIANTS["baseline"], batch_size=16)


def make_shard(records: int, seed: int, unlabelled: int = 0) -> tuple[xr.Dataset, xr.Dataset]:
    """(filtered_images, spectral_indices) of one generated shard, as the lake stores them."""
    rng = np.random.default_rng(seed)
    images, labels = generate_images(records, rng)
    labels[:unlabelled] = -1
    ids = np.array(generate_ids(records, rng))
    filtered, _ = filter_images(images, labels, ids)
    indices = index_dataset(
        filtered["id"].values, filtered["label"].values, filtered["pixels"].values
    )
    return filtered, indices


def lake_source(key: str, filtered: xr.Dataset, indices: xr.Dataset) -> ShardSource:
    """A source that decodes Arrow bytes on every load, as reading the lake would."""
    filtered_bytes = bytes(lake.prepare(lake.FILTERED_IMAGES, key, filtered)[1])
    indices_bytes = bytes(lake.prepare(lake.SPECTRAL_INDICES, key, indices)[1])
    return ShardSource(
        key, lambda: (dataset_from_arrow(filtered_bytes), dataset_from_arrow(indices_bytes))
    )


class CountingSource:
    """Wraps datasets in a ShardSource whose loads are counted."""

    def __init__(self) -> None:
        self.calls = 0

    def source(self, key: str, shard: tuple[xr.Dataset, xr.Dataset]) -> ShardSource:
        def load() -> tuple[xr.Dataset, xr.Dataset]:
            self.calls += 1
            return shard

        return ShardSource(key, load)


def refuse_to_load(key: str) -> ShardSource:
    def load() -> tuple[xr.Dataset, xr.Dataset]:
        pytest.fail(f"shard {key} was loaded, but the error should come before any load")

    return ShardSource(key, load)


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[ShardSource]]:
    train = [lake_source(f"train/part-r-{i:05d}", *make_shard(100, i)) for i in range(3)]
    val = [lake_source(f"val/part-r-{i:05d}", *make_shard(60, 100 + i)) for i in range(2)]
    return {"train": train, "val": val}


def labelled_count(sources: list[ShardSource]) -> int:
    return sum(int((s.load()[0]["label"].values >= 0).sum()) for s in sources)


# --- feature assembly


def test_shard_features_puts_each_feature_in_its_channel() -> None:
    filtered, indices = make_shard(40, 1, unlabelled=5)
    features = ("ndvi", "B5", "B2", "evi", "B11")
    x, y = shard_features(filtered, indices, features)
    keep = filtered["label"].values >= 0
    n = int(keep.sum())
    assert x.shape == (n, 65, 65, 5) and x.dtype == np.int16
    assert y.dtype == np.int8 and (y >= 0).all() and n < filtered.sizes["image"]
    np.testing.assert_array_equal(y, filtered["label"].values[keep])
    pixels = filtered["pixels"]
    np.testing.assert_array_equal(x[..., 0], indices["ndvi"].values[keep])
    np.testing.assert_array_equal(x[..., 1], pixels.sel(band="B5").values[keep])
    np.testing.assert_array_equal(x[..., 2], pixels.sel(band="B2").values[keep])
    np.testing.assert_array_equal(x[..., 3], indices["evi"].values[keep])
    np.testing.assert_array_equal(x[..., 4], pixels.sel(band="B11").values[keep])
    assert x[..., 0].min() < 0 and x[..., 4].max() > 127  # raw codes and raw 8-bit values


def test_shard_features_aligns_permuted_indices_and_refuses_mismatches() -> None:
    filtered, indices = make_shard(20, 2)
    expected, _ = shard_features(filtered, indices, ("ndvi", "B4"))
    permuted = indices.isel(image=np.random.default_rng(0).permutation(indices.sizes["image"]))
    x, _ = shard_features(filtered, permuted, ("ndvi", "B4"))
    np.testing.assert_array_equal(x, expected)

    with pytest.raises(ValueError, match="1 image id\\(s\\) without indices"):
        shard_features(filtered, indices.isel(image=slice(1, None)), ("ndvi",))
    relabelled = indices.assign_coords(label=indices["label"].where(False, 3).astype(np.int8))
    changed = int(np.flatnonzero(filtered["label"].values != 3)[0])
    bad_id = str(filtered["id"].values[changed])
    with pytest.raises(ValueError, match=f"image '{bad_id}' has label"):
        shard_features(filtered, relabelled, ("B2",))
    with pytest.raises(ValueError, match="must be stored as int8 codes"):
        shard_features(filtered, xr.decode_cf(indices), ("ndvi",))


# --- pipeline


def test_pipeline_caps_records_and_gives_float_inputs_one_hot_labels(corpus) -> None:
    dataset = make_dataset(corpus["train"], SMALL, training=True, max_records=50)
    batches = list(dataset)
    assert [int(x.shape[0]) for x, _ in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.shape == (16, 65, 65, 4) and x.dtype.name == "float32"
    assert y.shape == (16, 4) and y.dtype.name == "float32"
    np.testing.assert_array_equal(y.numpy().sum(axis=1), 1.0)
    assert float(x.numpy().max()) > 1.0  # raw values: the model scales them


def test_evaluation_stream_is_every_labelled_record_in_order(corpus) -> None:
    sources = corpus["val"]
    dataset = make_dataset(sources, SMALL, training=False)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    expected = [shard_features(*s.load(), SMALL.features) for s in sources]
    np.testing.assert_array_equal(np.concatenate(xs), np.concatenate([e[0] for e in expected]))
    labels = np.argmax(np.concatenate(ys), axis=1)
    np.testing.assert_array_equal(labels, np.concatenate([e[1] for e in expected]))


def test_lake_sources_count_their_labelled_images_and_give_the_stream_a_known_length(
    tmp_path,
) -> None:
    """Keras waits about an epoch's time before each later epoch of a dataset whose length is
    unknown; the lake's sources count their labelled images so make_dataset knows it."""
    import tensorflow as tf

    from droughtwatch_assets.adapters.storage import LocalStore
    from droughtwatch_assets.pipeline.corpus import shard_sources

    store = LocalStore(tmp_path / "lake")
    shards = {f"train/part-r-{i:05d}": make_shard(30, 200 + i, unlabelled=4 * i) for i in range(3)}
    for key, (filtered, indices) in shards.items():
        store.write_bytes(*lake.prepare(lake.FILTERED_IMAGES, key, filtered))
        store.write_bytes(*lake.prepare(lake.SPECTRAL_INDICES, key, indices))
    sources = shard_sources(store, list(shards), SMALL)
    expected = [int((f["label"].values >= 0).sum()) for f, _ in shards.values()]
    assert [s.labelled() for s in sources] == expected and len(set(expected)) > 1

    for cap in (None, 40):
        total = sum(expected) if cap is None else cap
        dataset = make_dataset(sources, SMALL, training=True, max_records=cap)
        batches = -(-total // SMALL.batch_size)
        assert int(dataset.cardinality()) == batches
        assert sum(int(x.shape[0]) for x, _ in dataset) == total
    # Sources that cannot count (no `labelled`) leave the length unknown, as before.
    unknown = make_dataset([ShardSource(s.key, s.load) for s in sources], SMALL, training=False)
    assert int(unknown.cardinality()) == tf.data.UNKNOWN_CARDINALITY

    # A lake that changes under training fails the pass with a clear message.
    liar = [ShardSource(s.key, s.load, lambda: 1000) for s in sources]
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
        list(make_dataset(liar, SMALL, training=False))


def test_fit_keeps_one_iterator_for_streams_of_known_length(corpus) -> None:
    """fit_inputs repeats a dataset of known length and passes the length as steps_per_epoch,
    so Keras never tears an iterator down between epochs; unknown lengths pass through."""
    import tensorflow as tf

    from droughtwatch_assets.core.training import _stream_dataset, fit_inputs

    known = tf.data.Dataset.range(10).batch(3)
    inputs, steps = fit_inputs(known)
    assert steps == 4 and int(inputs.cardinality()) == tf.data.INFINITE_CARDINALITY
    unknown = known.filter(lambda x: True)
    assert fit_inputs(unknown) == (unknown, None)
    # A stream read for exactly one pass of batches (never resumed past its last batch) has
    # still recorded its first pass: train_variant reads the class balance from it.
    sources = [ShardSource(s.key, s.load, lambda s=s: labelled_count([s])) for s in corpus["train"]]
    dataset, stream = _stream_dataset(
        sources, SMALL, training=True, max_records=None, shuffle_buffer=64, seed=1
    )
    inputs, steps = fit_inputs(dataset)
    assert steps == -(-labelled_count(corpus["train"]) // SMALL.batch_size)
    for _ in inputs.take(steps):
        pass
    assert stream.first_pass is not None
    assert stream.first_pass.records == labelled_count(corpus["train"])


def test_in_memory_dataset_batches_like_the_stream() -> None:
    x = np.zeros((20, 65, 65, 4), np.uint8)
    y = np.arange(20) % 4
    batches = list(in_memory_dataset(x, y, SMALL, training=False))
    assert [int(b[0].shape[0]) for b in batches] == [16, 4]
    np.testing.assert_array_equal(np.argmax(batches[1][1].numpy(), axis=1), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="x must be"):
        in_memory_dataset(x[..., :2], y, SMALL, training=True)


def _fingerprints(batch_x: np.ndarray) -> list[bytes]:
    return [example.astype(np.uint8).tobytes() for example in batch_x]


def test_training_stream_draws_every_record_once_per_pass_in_a_new_order(corpus) -> None:
    """Batches formed from the shuffled pool: full but the last, every labelled record exactly
    once per pass, a different order each pass, the same orders again with the same seed."""
    sources = [  # with their counts, so that the stream has a known length
        dataclasses.replace(s, labelled=lambda s=s: labelled_count([s])) for s in corpus["train"]
    ]
    total = labelled_count(sources)
    everything = sorted(
        f for x, _ in make_dataset(sources, SMALL, training=False) for f in _fingerprints(x.numpy())
    )
    assert len(everything) == total

    def passes(seed: int) -> list[list[bytes]]:
        dataset = make_dataset(sources, SMALL, training=True, shuffle_buffer=50, seed=seed)
        inputs, steps = fit_inputs(dataset)
        iterator = iter(inputs)
        result = []
        for _ in range(2):
            batches = [next(iterator) for _ in range(steps)]
            sizes = [int(x.shape[0]) for x, _ in batches]
            assert sizes[:-1] == [16] * (len(sizes) - 1) and sum(sizes) == total
            result.append([f for x, _ in batches for f in _fingerprints(x.numpy())])
        return result

    first, second = passes(5)
    assert sorted(first) == everything and sorted(second) == everything
    assert first != second  # reshuffled between epochs
    assert passes(5) == [first, second]
    assert passes(6)[0] != first


def test_shards_are_loaded_lazily() -> None:
    shard = make_shard(20, 3)  # 20 images, a few blank ones dropped
    counter = CountingSource()
    sources = [counter.source(f"part-{i}", shard) for i in range(100)]
    dataset = make_dataset(sources, SMALL, training=True, shuffle_buffer=8)
    assert counter.calls == 0  # building the pipeline loads nothing
    next(iter(dataset))
    # one batch plus two prefetched ones: 48 records, i.e. three shards, far below 100
    assert 1 <= counter.calls <= 4
    counter.calls = 0
    next(iter(make_dataset(sources, SMALL, training=False)))
    assert 1 <= counter.calls <= 4


def test_shard_errors_name_the_shard() -> None:
    filtered, indices = make_shard(10, 4)
    broken = ShardSource("train/part-r-00042", lambda: (filtered, indices.drop_vars("ndvi")))
    variant = dataclasses.replace(VARIANTS["ndvi"], batch_size=4)
    with pytest.raises(Exception, match="shard 'train/part-r-00042'.*no variable 'ndvi'"):
        list(make_dataset([broken], variant, training=False))


# --- training


def test_unknown_band_fails_before_any_shard_is_loaded() -> None:
    # The variant refuses to exist, so neither training nor a dataset ever starts loading.
    train, val = [refuse_to_load("train/a")], [refuse_to_load("val/a")]
    with pytest.raises(VariantError, match="'thermal': unknown feature 'B12'"):
        train_variant(Variant("thermal", ("B10", "B12"), epochs=1), train, val)
    with pytest.raises(VariantError, match="unknown feature 'B12'"):
        make_dataset(train, Variant("thermal", ("B12",), epochs=1), training=True)


def test_empty_sources_are_refused(corpus) -> None:
    with pytest.raises(ValueError, match="'baseline': no train shards"):
        train_variant(SMALL, [], [refuse_to_load("val/a")])
    with pytest.raises(ValueError, match="'baseline': no val shards"):
        train_variant(SMALL, [refuse_to_load("train/a")], [])
    with pytest.raises(ValueError, match="max_records must be a positive integer"):
        train_variant(SMALL, corpus["train"], corpus["val"], max_records=0)


def test_training_is_reproducible(corpus) -> None:
    def run() -> object:
        return train_variant(SMALL, corpus["train"], corpus["val"], epochs=1, max_records=120)

    first, second = run(), run()
    assert len(first.model.get_weights()) == len(second.model.get_weights())
    for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.history == second.history
    assert first.val_metrics == second.val_metrics
    assert set(first.history) == set(HISTORY_KEYS)
    assert all(len(first.history[k]) == 1 for k in HISTORY_KEYS)
    assert labelled_count(corpus["train"]) > 120  # so the cap bites
    assert first.train_records == 120 and first.val_records == 118  # val has 118 < 120
    assert first.train_shards == [s.key for s in corpus["train"]]
    assert first.val_shards == [s.key for s in corpus["val"]]


def test_dummy_variant_trains_zero_epochs_and_still_evaluates(corpus) -> None:
    dummy = with_overrides(VARIANTS["dummy"], batch_size=32)
    result = train_variant(dummy, corpus["train"], corpus["val"])
    assert all(result.history[k] == [] for k in HISTORY_KEYS)
    assert result.train_records == labelled_count(corpus["train"])
    assert result.val_records == result.val_metrics.n == labelled_count(corpus["val"])
    train_labels = np.concatenate([s.load()[0]["label"].values for s in corpus["train"]])
    assert np.argmax(np.bincount(train_labels[train_labels >= 0])) == 0
    # majority: val labels scored as "always the train majority class (0)"
    val_metrics, y_true, probabilities = evaluate(result.model, corpus["val"], dummy)
    assert result.majority.accuracy == pytest.approx(float(np.mean(y_true == 0)))
    assert val_metrics == result.val_metrics
    assert probabilities.shape == (y_true.size, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_predict_accepts_a_dataset(corpus) -> None:
    model = train_variant(SMALL, corpus["train"][:1], corpus["val"][:1], epochs=0).model
    dataset = make_dataset(corpus["val"][:1], SMALL, training=False)
    from_dataset = predict(model, dataset, SMALL)
    from_sources = predict(model, corpus["val"][:1], SMALL)
    np.testing.assert_array_equal(from_dataset[0], from_sources[0])
    np.testing.assert_array_equal(from_dataset[1], from_sources[1])
    assert from_sources[1].dtype == np.int8
