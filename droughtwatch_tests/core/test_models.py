"""Networks: the seed CNN's exact size, input channels, raw-value rescaling, augmentation."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from droughtwatch_assets.core.models import (
    build_model,
    channel_scales,
    custom_objects,
    parameter_count,
)
from droughtwatch_assets.core.variants import VARIANTS, VariantError

pytestmark = pytest.mark.filterwarnings(
    # Keras' own np.array(tensor) calls under numpy 2; nothing in this project's code.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def test_seed_cnn_has_the_seed_parameter_count() -> None:
    model = build_model(VARIANTS["baseline"])
    assert parameter_count(model) == 257_022
    assert model.input_shape == (None, 65, 65, 4)
    assert model.output_shape == (None, 4)


@pytest.mark.parametrize(("name", "channels"), [("ndvi", 1), ("nd", 2), ("full", 14)])
def test_input_channels_follow_features(name: str, channels: int) -> None:
    assert build_model(VARIANTS[name]).input_shape == (None, 65, 65, channels)


def test_first_layer_rescales_bands_and_indices() -> None:
    variant = dataclasses.replace(VARIANTS["nd"], features=("B4", "ndvi"))
    assert channel_scales(variant.features) == [1 / 255, 1 / 127]
    model = build_model(variant)
    rescale = model.get_layer("rescale_raw")
    raw = np.stack([np.full((65, 65), 255.0), np.full((65, 65), -127.0)], axis=-1)[None]
    out = rescale(raw.astype(np.float32)).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [1.0, -1.0], rtol=1e-6)


def test_full_network_runs_a_batch_and_augments_only_in_training() -> None:
    model = build_model(VARIANTS["full"])
    assert parameter_count(model) == 371_972  # pins the architecture the docstring explains
    x = np.random.default_rng(0).integers(0, 256, (3, 65, 65, 14)).astype(np.float32)
    probabilities = model(x, training=False).numpy()
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("random_flips") is not None
    assert model.get_layer("random_rotate90") is not None
    # Inference is deterministic (no augmentation, no dropout)
    np.testing.assert_array_equal(probabilities, model(x, training=False).numpy())
    before = [w.copy() for w in model.get_weights()]
    loss, _ = model.train_on_batch(x, np.eye(4, dtype=np.float32)[[0, 1, 3]])
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_rotate90_gives_exact_quarter_turns() -> None:
    layer = custom_objects()["droughtwatch>RandomRotate90"](seed=3)
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = layer(np.repeat(image, 64, axis=0), training=True).numpy()[..., 0]
    turns = {np.rot90(image[0, ..., 0], k).tobytes(): k for k in range(4)}
    seen = {turns[o.tobytes()] for o in out}  # KeyError if any output is not a rotation
    assert seen == {0, 1, 2, 3}
    np.testing.assert_array_equal(layer(image, training=False).numpy(), image)


def test_flips_are_independent_per_axis() -> None:
    layer = custom_objects()["droughtwatch>RandomFlips"](seed=3)
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    batch = np.repeat(image[None, ..., None], 64, axis=0)
    out = layer(batch, training=True).numpy()[..., 0]
    flips = {
        image.tobytes(): "none",
        image[:, ::-1].tobytes(): "lr",
        image[::-1].tobytes(): "ud",
        image[::-1, ::-1].tobytes(): "both",
    }
    assert {flips[o.tobytes()] for o in out} == {"none", "lr", "ud", "both"}


def test_saved_model_round_trips(tmp_path) -> None:
    import keras

    model = build_model(VARIANTS["full"])
    path = tmp_path / "full.keras"
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
    x = np.full((1, 65, 65, 14), 100.0, np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)


def test_no_invalid_variant_reaches_build_model() -> None:
    # A Variant is validated when it is made, so build_model never sees a bad one.
    with pytest.raises(VariantError, match="unknown feature 'B0'"):
        build_model(dataclasses.replace(VARIANTS["baseline"], features=("B0",)))
