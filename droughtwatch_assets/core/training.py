"""Train and evaluate a variant on lake shards, streamed through tf.data with bounded memory.

Shards are loaded one at a time, only when the pipeline reaches them; examples stay compact
integers (int16) until a batch is cast to float32; scaling is the model's first layer.
TensorFlow and Keras are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from droughtwatch_assets.core.calibration import (
    Reliability,
    apply_temperature,
    fit_temperature,
    reliability,
)
from droughtwatch_assets.core.frameworks import quiet_import
from droughtwatch_assets.core.metrics import (
    NUM_CLASSES,
    ClassificationMetrics,
    classification_metrics,
    majority_metrics,
)
from droughtwatch_assets.core.models import build_model
from droughtwatch_assets.core.tfrecord import IMAGE_SIDE, UNLABELLED
from droughtwatch_assets.core.variants import (
    BAND_FEATURES,
    INDEX_FEATURES,
    Variant,
    VariantError,
    with_overrides,
)

if TYPE_CHECKING:
    tf = quiet_import("tensorflow")

# Bands are 0..255 and index codes -127..127: int16 holds both at 2 bytes per value.
FEATURE_DTYPE = np.int16
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
_PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class ShardSource:
    """One shard of the lake: its key, a loader for (filtered_images, spectral_indices) and,
    where the lake can tell it cheaply, its number of labelled images."""

    key: str
    load: Callable[[], tuple[xr.Dataset, xr.Dataset]]
    labelled: Callable[[], int] | None = None


def shard_features(
    filtered: xr.Dataset,
    indices: xr.Dataset,
    features: Sequence[str],
    *,
    keep_unlabelled: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs of one shard's labelled images: x (n, 65, 65, len(features)) int16 holding
    raw values (bands 0..255, index codes -127..127) in `features` order, and y (n,) int8.

    `indices` is aligned to `filtered` by `id`: same order is the norm; a permutation of the same
    ids is reordered; anything else (missing, extra or duplicate ids, disagreeing labels) raises
    ValueError. Unlabelled images (label -1) are dropped unless `keep_unlabelled` (inference).
    """
    features = tuple(features)
    unknown = [f for f in features if f not in BAND_FEATURES + INDEX_FEATURES]
    if unknown:
        raise VariantError(
            f"unknown feature(s) {', '.join(map(repr, unknown))}; valid features are "
            f"{', '.join(BAND_FEATURES + INDEX_FEATURES)}"
        )
    if "pixels" not in filtered:
        raise ValueError(f"filtered dataset has no 'pixels' variable; it has {list(filtered)}")
    ids = filtered["id"].values
    index_ids = indices["id"].values
    if not np.array_equal(ids, index_ids):
        indices = _align(indices, ids)
    labels = filtered["label"].values
    if not np.array_equal(labels, indices["label"].values):
        bad = int(np.flatnonzero(labels != indices["label"].values)[0])
        raise ValueError(
            f"image {str(ids[bad])!r} has label {int(labels[bad])} in the filtered images but "
            f"{int(indices['label'].values[bad])} in the spectral indices"
        )
    keep = np.ones(labels.shape, bool) if keep_unlabelled else labels != UNLABELLED
    all_kept = bool(keep.all())
    n = int(np.count_nonzero(keep))
    x = np.empty((n, IMAGE_SIDE, IMAGE_SIDE, len(features)), dtype=FEATURE_DTYPE)
    bands = [str(b) for b in filtered["band"].values]
    pixels = filtered["pixels"].values
    for channel, feature in enumerate(features):
        if feature in BAND_FEATURES:
            if feature not in bands:
                raise ValueError(f"filtered images have no band {feature!r}; bands are {bands}")
            values = pixels[:, bands.index(feature)]
        else:
            if feature not in indices:
                raise ValueError(
                    f"spectral indices have no variable {feature!r}; they have {list(indices)}"
                )
            values = indices[feature].values
            if values.dtype != np.int8:
                raise ValueError(
                    f"index {feature!r} must be stored as int8 codes, got {values.dtype} "
                    "(was the dataset CF-decoded?)"
                )
        x[..., channel] = values if all_kept else values[keep]
    return x, labels[keep].astype(np.int8)


def _align(indices: xr.Dataset, ids: np.ndarray) -> xr.Dataset:
    index_ids = indices["id"].values
    if len(set(index_ids.tolist())) != index_ids.size or len(set(ids.tolist())) != ids.size:
        raise ValueError("image ids are not unique, so indices cannot be aligned to images")
    missing = sorted(set(ids.tolist()) - set(index_ids.tolist()))
    extra = sorted(set(index_ids.tolist()) - set(ids.tolist()))
    if missing or extra:
        raise ValueError(
            f"spectral indices do not match the filtered images: {len(missing)} image id(s) "
            f"without indices (first {missing[:3]}), {len(extra)} index id(s) without an image "
            f"(first {extra[:3]})"
        )
    position = {image_id: i for i, image_id in enumerate(index_ids.tolist())}
    return indices.isel(image=[position[i] for i in ids.tolist()])


@dataclass
class _PassStats:
    records: int = 0
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))
    shards: list[str] = field(default_factory=list)


class _ShardStream:
    """Generator factory for tf.data: each call is one pass over the shards, loading each only
    when the pipeline needs its records, and yielding whole batches. Records of the first
    complete pass are kept in `first_pass` (the trainer's record count and class balance).

    Batches are formed here, in numpy, rather than by unbatching shards into single examples
    for tf.data to shuffle and batch again, and the next shard is read ahead on a thread: most
    of what lake-fed training lost against in-memory was the training step waiting while a shard
    loaded, not the load's CPU time (docs/benchmarks-training.md). When shuffling, examples are
    pooled until at least `shuffle_buffer` are waiting (a few shards), the pool is permuted and
    cut into batches, and what does not fill a batch waits for the next shards: examples mix
    within about `shuffle_buffer` of their neighbours, as in a shuffle buffer of that size, and
    the shard order itself changes every pass.
    """

    def __init__(
        self,
        sources: Sequence[ShardSource],
        features: tuple[str, ...],
        *,
        batch_size: int,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        max_records: int | None,
    ) -> None:
        self.sources = list(sources)
        self.features = features
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.max_records = max_records
        self.passes = 0
        self.loads = 0
        self.first_pass: _PassStats | None = None

    def order(self, pass_number: int) -> list[ShardSource]:
        if not self.shuffle:
            return self.sources
        # A fresh shard order every epoch, reproducible from (seed, epoch).
        permutation = np.random.default_rng([self.seed, pass_number]).permutation(len(self.sources))
        return [self.sources[i] for i in permutation]

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pass_number = self.passes
        self.passes += 1
        stats = _PassStats()
        remaining = self.max_records
        order = self.order(pass_number)
        # Examples drawn from the pool, reproducible from (seed, epoch) like the shard order.
        rng = np.random.default_rng([self.seed, pass_number, 1]) if self.shuffle else None
        # One shard is read ahead on a thread while the batches of the ones before it go to the
        # model: decompressing and assembling release the GIL, so the next shard is ready when
        # the pool runs low instead of stalling the training step (both cores stay busy).
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="droughtwatch-shard")
        ahead = reader.submit(self.load, order[0]) if order else None
        try:
            yield from self._batches(order, ahead, reader, remaining, stats, rng)
        finally:
            reader.shutdown(wait=False, cancel_futures=True)
        if self.first_pass is None:
            self.first_pass = stats

    def _batches(
        self,
        order: list[ShardSource],
        ahead: Future | None,
        reader: ThreadPoolExecutor,
        remaining: int | None,
        stats: _PassStats,
        rng: np.random.Generator | None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pool_size = self.shuffle_buffer if self.shuffle else self.batch_size
        pool: list[tuple[np.ndarray, np.ndarray]] = []
        pooled = 0
        for i, source in enumerate(order):
            if remaining is not None and remaining <= 0:
                break
            assert ahead is not None
            x, y = ahead.result()
            if remaining is not None:
                x, y = x[:remaining], y[:remaining]
                remaining -= len(y)
            if i + 1 < len(order) and (remaining is None or remaining > 0):
                ahead = reader.submit(self.load, order[i + 1])
            stats.records += len(y)
            stats.label_counts += np.bincount(y.astype(np.int64), minlength=NUM_CLASSES)
            stats.shards.append(source.key)
            last = i == len(order) - 1 or (remaining is not None and remaining <= 0)
            if last and self.first_pass is None:
                # Recorded before the last yield: a consumer that stops at the pass's last
                # batch (fit with steps_per_epoch) never resumes the generator past it.
                self.first_pass = stats
            if len(y):
                pool.append((x, y))
                pooled += len(y)
            if pooled >= pool_size or (last and pooled):
                x, y = _concatenate(pool)
                full = len(y) if last else len(y) - len(y) % self.batch_size
                if rng is None:
                    for start in range(0, full, self.batch_size):
                        end = start + self.batch_size
                        yield x[start:end], y[start:end]
                    pool = [(x[full:], y[full:])] if full < len(y) else []
                else:
                    # One gather per batch: the pool is never copied whole in a new order.
                    permutation = rng.permutation(len(y))
                    for start in range(0, full, self.batch_size):
                        take = permutation[start : start + self.batch_size]
                        yield x[take], y[take]
                    rest = permutation[full:]
                    pool = [(x[rest], y[rest])] if rest.size else []
                pooled = len(y) - full

    def load(self, source: ShardSource) -> tuple[np.ndarray, np.ndarray]:
        self.loads += 1
        try:
            filtered, indices = source.load()
            return shard_features(filtered, indices, self.features)
        except Exception as exc:
            # tf.data re-raises generator errors as its own type: keep the shard in the text.
            raise ValueError(f"shard {source.key!r}: {exc}") from exc


def _concatenate(pool: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(pool) == 1:
        return pool[0]
    return np.concatenate([x for x, _ in pool]), np.concatenate([y for _, y in pool])


def _to_model_inputs(x: Any, y: Any) -> tuple[Any, Any]:
    tf = quiet_import("tensorflow")

    return tf.cast(x, tf.float32), tf.one_hot(tf.cast(y, tf.int32), NUM_CLASSES)


def _check_max_records(max_records: int | None) -> None:
    if max_records is not None and (isinstance(max_records, bool) or max_records < 1):
        raise ValueError(f"max_records must be a positive integer or None, got {max_records!r}")


def _stream_dataset(
    sources: Sequence[ShardSource],
    variant: Variant,
    *,
    training: bool,
    max_records: int | None,
    shuffle_buffer: int,
    seed: int | None,
) -> tuple[tf.data.Dataset, _ShardStream]:
    tf = quiet_import("tensorflow")

    _check_max_records(max_records)
    if shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
    seed = variant.seed if seed is None else seed
    stream = _ShardStream(
        sources,
        variant.features,
        batch_size=variant.batch_size,
        shuffle=training,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        max_records=max_records,
    )
    channels = len(variant.features)
    batches = _known_batches(sources, max_records, variant.batch_size)
    dataset = tf.data.Dataset.from_generator(
        stream,
        output_signature=(
            tf.TensorSpec((None, IMAGE_SIDE, IMAGE_SIDE, channels), tf.int16),
            tf.TensorSpec((None,), tf.int8),
        ),
    ).map(_to_model_inputs)
    if batches is not None:
        # A known length lets fit keep one iterator for all epochs (fit_inputs): dropping one
        # at each epoch end cost up to 20 s per epoch (docs/benchmarks-training.md). If the
        # lake changes under a training run, tf.data fails the epoch with both counts.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(_PREFETCH_BATCHES), stream


def _known_batches(
    sources: Sequence[ShardSource], max_records: int | None, batch_size: int
) -> int | None:
    """Batches per pass when every source can count its labelled images, else None."""
    if not sources or any(s.labelled is None for s in sources):
        return None
    total = 0
    for source in sources:
        try:
            total += source.labelled()  # type: ignore[misc]
        except Exception as exc:
            raise ValueError(f"shard {source.key!r}: {exc}") from exc
    if max_records is not None:
        total = min(total, max_records)
    return -(-total // batch_size)


def make_dataset(
    sources: Sequence[ShardSource],
    variant: Variant,
    *,
    training: bool,
    max_records: int | None = None,
    shuffle_buffer: int = 2048,
    seed: int | None = None,
) -> tf.data.Dataset:
    """Batches of (x float32 raw values (b, 65, 65, c), y one-hot float32 (b, 4)).

    Memory is bounded by a pool of about `shuffle_buffer` examples plus one shard plus a few
    batches, whatever the number of shards. When training, the shard order is reshuffled each
    pass (seeded by `seed`, default the variant's) and examples are drawn at random from the
    pool (see `_ShardStream`); otherwise batches follow the shards' order.
    `max_records` caps the labelled records per pass: shards beyond the cap are never loaded.
    """
    dataset, _ = _stream_dataset(
        sources,
        variant,
        training=training,
        max_records=max_records,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
    )
    return dataset


def in_memory_dataset(
    x: np.ndarray, y: np.ndarray, variant: Variant, *, training: bool, seed: int | None = None
) -> tf.data.Dataset:
    """The same batches as `make_dataset`, from in-memory arrays (x raw values, y int labels)."""
    tf = quiet_import("tensorflow")

    x = np.asarray(x)
    y = np.asarray(y)
    expected = (IMAGE_SIDE, IMAGE_SIDE, len(variant.features))
    if x.ndim != 4 or x.shape[1:] != expected or y.shape != (x.shape[0],):
        raise ValueError(
            f"x must be (n, {', '.join(map(str, expected))}) with y (n,), got x {x.shape}, "
            f"y {y.shape}"
        )
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        seed = variant.seed if seed is None else seed
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(variant.batch_size).map(_to_model_inputs)
    return dataset.prefetch(_PREFETCH_BATCHES)


def fit_inputs(dataset: tf.data.Dataset) -> tuple[tf.data.Dataset, int | None]:
    """(dataset, steps_per_epoch) for ``model.fit``.

    A dataset of known length is repeated and its length passed as ``steps_per_epoch``, so
    Keras keeps one iterator for the whole fit. Otherwise Keras drops the iterator at the end of
    each epoch, and destroying an iterator whose pipeline is still prefetching waits until its
    threads stop: a py-spy dump showed the main thread there
    (``IteratorResource::~IteratorResource``) for the 18-20 s by which some lake-fed epochs
    started late (docs/benchmarks-training.md). Unknown length: the dataset as it is.
    """
    batches = int(dataset.cardinality())
    if batches > 0:
        return dataset.repeat(), batches
    return dataset, None


@dataclass
class TrainingResult:
    """A trained model and what its run measured."""

    model: Any
    history: dict[str, list[float]]  # per epoch: loss, accuracy, val_loss, val_accuracy
    train_records: int
    val_records: int
    val_metrics: ClassificationMetrics
    majority: ClassificationMetrics  # val labels scored by always predicting the train majority
    train_shards: list[str]
    val_shards: list[str]
    calibration: Calibration | None = None  # fitted on val: what serving applies
    epochs_done: int = 0  # epochs completed, those of an interrupted attempt included
    resumed_from: int = 0  # the epoch a checkpoint let this attempt start at
    stopped_early: bool = False


EpochHook = Callable[[int, dict[str, float]], None]
"""Called after every epoch with its number (from 0) and its metrics (loss, accuracy,
val_loss, val_accuracy)."""


def _epoch_callback(hook: EpochHook) -> Any:
    keras = quiet_import("keras")

    class _EachEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            hook(epoch, {k: float(v) for k, v in (logs or {}).items()})

    return _EachEpoch()


def checkpoint_key(variant: Variant, corpus_fingerprint: str, max_records: int | None) -> str:
    """A name for the checkpoint of one training: the variant (every field), the corpus and the
    record cap. A training of anything else never resumes from it."""
    import hashlib
    import json

    spec = json.dumps([variant.params(), corpus_fingerprint, max_records], sort_keys=True)
    return f"{variant.name}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def _checkpoint_epoch(checkpoint_dir: str | None) -> int:
    """The epochs a checkpoint folder holds (Keras BackupAndRestore's metadata), 0 if none."""
    import json
    import os

    if checkpoint_dir is None:
        return 0
    path = os.path.join(checkpoint_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


@dataclass(frozen=True)
class Calibration:
    """A model's calibration on its validation shards: the temperature serving applies, the
    ECE before it and after it (the latter cross-fitted: each half of val scaled with the
    temperature fitted on the other half, so it is not measured on the data it was fitted to),
    and the reliability bins before and after."""

    temperature: float
    ece: float
    ece_calibrated: float
    reliability: Reliability
    reliability_calibrated: Reliability

    def to_dict(self) -> dict:
        def bins(r: Reliability) -> dict:
            return {"edges": list(r.edges), "counts": list(r.counts),
                    "confidence": list(r.confidence), "accuracy": list(r.accuracy)}  # fmt: skip

        return {
            "temperature": self.temperature,
            "ece": self.ece,
            "ece_calibrated": self.ece_calibrated,
            "reliability": bins(self.reliability),
            "reliability_calibrated": bins(self.reliability_calibrated),
        }


def calibrate(probabilities: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit the temperature on all of val; measure the calibrated ECE by 2-fold cross-fitting."""
    temperature = fit_temperature(probabilities, labels)
    halves = [np.arange(len(labels))[i::2] for i in (0, 1)]
    scaled = np.empty_like(probabilities, dtype=np.float32)
    for fit_on, apply_to in (halves, halves[::-1]):
        t = fit_temperature(probabilities[fit_on], labels[fit_on])
        scaled[apply_to] = apply_temperature(probabilities[apply_to], t)
    before = reliability(probabilities, labels)
    after = reliability(scaled, labels)
    return Calibration(temperature, before.ece, after.ece, before, after)


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and make TF ops deterministic (idempotent)."""
    keras = quiet_import("keras")
    tf = quiet_import("tensorflow")

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _require_sources(sources: Sequence[ShardSource], role: str, variant: Variant) -> None:
    if not sources:
        raise ValueError(f"variant {variant.name!r}: no {role} shards to train on")
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"variant {variant.name!r}: {role} shards repeat: {duplicates}")


def train_variant(
    variant: Variant,
    train: Sequence[ShardSource],
    val: Sequence[ShardSource],
    *,
    epochs: int | None = None,
    max_records: int | None = None,
    callbacks: Sequence[Any] = (),
    on_epoch: EpochHook | None = None,
    checkpoint_dir: str | None = None,
    verbose: int = 0,
) -> TrainingResult:
    """Train `variant` (with `epochs` overriding its own) and evaluate it on `val`.

    Checks the variant and the arguments before any shard is loaded. Seeded and deterministic
    on CPU: the same variant and shards give identical weights. With 0 epochs the untrained
    model is still evaluated. `max_records` caps the records per pass of train and of val.

    `on_epoch` hears of every epoch as it ends. With `checkpoint_dir`, the weights and the epoch
    are saved there after every epoch (Keras' BackupAndRestore), and a training that finds a
    checkpoint resumes after its last epoch; the caller removes the folder once the model is
    safe elsewhere. The variant's `early_stopping_patience` stops a training whose validation
    loss has not improved for that many epochs, with the best epoch's weights (the patience
    counts again from a resumed epoch).
    """
    variant = with_overrides(variant, epochs=epochs)
    _require_sources(train, "train", variant)
    _require_sources(val, "val", variant)
    _check_max_records(max_records)

    set_determinism(variant.seed)
    model = build_model(variant)
    train_data, train_stream = _stream_dataset(
        train,
        variant,
        training=True,
        max_records=max_records,
        shuffle_buffer=2048,
        seed=variant.seed,
    )
    history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
    resumed_from = min(_checkpoint_epoch(checkpoint_dir), variant.epochs)
    stopper = None
    if variant.epochs > 0:
        keras = quiet_import("keras")
        hooks: list[Any] = list(callbacks)
        if on_epoch is not None:
            # Before the checkpoint: an epoch is reported, then saved. A kill in between repeats
            # that epoch (reported twice), never skips one.
            hooks.append(_epoch_callback(on_epoch))
        if checkpoint_dir is not None:
            # Kept after training: the caller removes it once the model is logged.
            hooks.append(keras.callbacks.BackupAndRestore(checkpoint_dir, delete_checkpoint=False))
        if variant.early_stopping_patience is not None:
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=variant.early_stopping_patience,
                restore_best_weights=True,
            )
            hooks.append(stopper)
        val_data = make_dataset(val, variant, training=False, max_records=max_records)
        with warnings.catch_warnings():
            # A stream of unknown length (sources that cannot count their images) makes Keras
            # learn the epoch length from the first epoch and warn that the data "ran out";
            # that end is the intended one.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            inputs, steps = fit_inputs(train_data)
            fitted = model.fit(
                inputs,
                steps_per_epoch=steps,
                validation_data=val_data,
                epochs=variant.epochs,
                class_weight=variant.class_weight_map,
                callbacks=hooks,
                verbose=verbose,
                shuffle=False,  # the stream shuffles shards and examples itself
            )
        history.update({k: [float(v) for v in values] for k, values in fitted.history.items()})
    else:
        # Nothing to fit, but the majority baseline still needs the train class balance.
        for _ in train_stream():
            pass
    if train_stream.first_pass is None:
        # Resumed from a checkpoint of the last epoch: fit had nothing left to do.
        for _ in train_stream():
            pass
    train_pass = train_stream.first_pass
    assert train_pass is not None  # one full pass has run (fit's first epoch, or above)

    val_metrics, y_val, val_probabilities = evaluate(model, val, variant, max_records=max_records)
    calibration = calibrate(val_probabilities, y_val)
    # argmax takes the lowest label on ties, so the baseline is deterministic.
    majority_class = int(np.argmax(train_pass.label_counts))
    return TrainingResult(
        model=model,
        history=history,
        train_records=train_pass.records,
        val_records=int(y_val.size),
        val_metrics=val_metrics,
        majority=majority_metrics(y_val, majority_class),
        train_shards=[s.key for s in train],
        val_shards=[s.key for s in val],
        calibration=calibration,
        epochs_done=resumed_from + len(history["loss"]),
        resumed_from=resumed_from,
        stopped_early=bool(stopper is not None and stopper.stopped_epoch > 0),
    )


def predict(
    model: Any,
    sources_or_dataset: Sequence[ShardSource] | tf.data.Dataset,
    variant: Variant,
    *,
    max_records: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, 4) float32 and the true labels (n,) int8, in stream order.

    Takes shard sources (streamed unshuffled) or a dataset of (x, one-hot y) batches.
    """
    tf = quiet_import("tensorflow")

    if isinstance(sources_or_dataset, tf.data.Dataset):
        dataset = sources_or_dataset
    else:
        dataset = make_dataset(sources_or_dataset, variant, training=False, max_records=max_records)
    probabilities: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for x, y in dataset:
        probabilities.append(model(x, training=False).numpy().astype(np.float32, copy=False))
        labels.append(np.argmax(y.numpy(), axis=-1).astype(np.int8))
    if not labels:
        return np.empty((0, NUM_CLASSES), np.float32), np.empty(0, np.int8)
    return np.concatenate(probabilities), np.concatenate(labels)


def predict_shard(
    model: Any,
    filtered: xr.Dataset,
    indices: xr.Dataset,
    variant: Variant,
    *,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, 4) float32 for every image of one shard, labelled or not, in the
    filtered images' order, and their labels (-1 where unlabelled)."""
    x, labels = shard_features(filtered, indices, variant.features, keep_unlabelled=True)
    return _predict(model, x, batch_size), labels


def predict_shards(
    model: Any,
    shards: Sequence[tuple[xr.Dataset, xr.Dataset]],
    variant: Variant,
    *,
    batch_size: int = 256,
) -> list[np.ndarray]:
    """`predict_shard`'s probabilities for several shards at once: their images are scored in
    shared batches (a real shard of 81 images alone would leave most of a batch empty), then
    split back, one array per shard in the given order."""
    features = [
        shard_features(filtered, indices, variant.features, keep_unlabelled=True)[0]
        for filtered, indices in shards
    ]
    if not features:
        return []
    probabilities = _predict(model, np.concatenate(features), batch_size)
    return np.split(probabilities, np.cumsum([len(x) for x in features])[:-1])


def _predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    if len(x) == 0:
        return np.empty((0, NUM_CLASSES), np.float32)
    probabilities = [
        np.asarray(model(x[start : start + batch_size].astype(np.float32), training=False))
        for start in range(0, len(x), batch_size)
    ]
    return np.concatenate(probabilities).astype(np.float32, copy=False)


def evaluate(
    model: Any,
    sources: Sequence[ShardSource],
    variant: Variant,
    *,
    max_records: int | None = None,
) -> tuple[ClassificationMetrics, np.ndarray, np.ndarray]:
    """Metrics of the argmax predictions on `sources`, the true labels and the probabilities."""
    probabilities, y_true = predict(model, sources, variant, max_records=max_records)
    y_pred = np.argmax(probabilities, axis=-1) if len(y_true) else np.empty(0, np.int64)
    return classification_metrics(y_true, y_pred), y_true, probabilities
