"""Keras networks for the variants: the seed project's CNN and a compact residual network.

Every model takes RAW values, float32 (batch, 65, 65, channels): bands 0..255 and index int8
codes -127..127, in the variant's feature order. Its first layer rescales each channel (1/255 or
1/127), so the served model needs no separate preprocessing. Keras is imported lazily: importing
this module costs nothing, and `custom_objects()` registers the augmentation layers for loading.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from droughtwatch_assets.core.frameworks import quiet_import
from droughtwatch_assets.core.indices import QUANTISED_MAX
from droughtwatch_assets.core.metrics import NUM_CLASSES
from droughtwatch_assets.core.tfrecord import IMAGE_SIDE
from droughtwatch_assets.core.variants import BAND_FEATURES, Variant

if TYPE_CHECKING:
    keras = quiet_import("keras")

BAND_SCALE = 1.0 / 255
INDEX_SCALE = 1.0 / QUANTISED_MAX
INPUT_NAME = "raw_features"


def input_shape(variant: Variant) -> tuple[int, int, int]:
    """(65, 65, channels) of the variant's model input."""
    return (IMAGE_SIDE, IMAGE_SIDE, len(variant.features))


def channel_scales(features: tuple[str, ...]) -> list[float]:
    """Per-channel factor that maps raw values to [0, 1] (bands) or [-1, 1] (indices)."""
    return [BAND_SCALE if f in BAND_FEATURES else INDEX_SCALE for f in features]


@functools.cache
def custom_objects() -> dict[str, type]:
    """The custom augmentation layers, registered with Keras; pass to `keras.models.load_model`
    (or just call this once) before loading a saved model."""
    keras = quiet_import("keras")
    from keras import ops

    class _SeededAugmentation(keras.layers.Layer):
        """A per-image random pixel permutation, in training only: two seeded coins per image
        pick among four variants (`_apply`); the shape never changes."""

        def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, inputs: Any, training: bool | None = None) -> Any:
            if not training:
                return inputs
            coins = keras.random.uniform(
                (ops.shape(inputs)[0], 2, 1, 1, 1), seed=self.seed_generator
            )
            return self._apply(inputs, coins[:, 0] < 0.5, coins[:, 1] < 0.5)

        def _apply(self, inputs: Any, first: Any, second: Any) -> Any:
            raise NotImplementedError

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "seed": self.seed}

    @keras.saving.register_keras_serializable(package="droughtwatch")
    class RandomFlips(_SeededAugmentation):
        """Independent left-right and up-down flips per image, in training only.

        Not keras.layers.RandomFlip: its "horizontal_and_vertical" mode draws one coin for both
        axes, so it only ever gives the identity or a 180-degree rotation.
        """

        def _apply(self, inputs: Any, first: Any, second: Any) -> Any:
            out = ops.where(first, ops.flip(inputs, axis=2), inputs)
            return ops.where(second, ops.flip(out, axis=1), out)

    @keras.saving.register_keras_serializable(package="droughtwatch")
    class RandomRotate90(_SeededAugmentation):
        """Rotation of each image by a random multiple of 90 degrees, in training only.

        Exact pixel permutations (transpose and flips), unlike keras.layers.RandomRotation,
        which interpolates and draws from a continuous range. Needs square images.
        """

        def _apply(self, inputs: Any, first: Any, second: Any) -> Any:
            # k = b + 2a quarter turns: a quarter turn is a transpose then a flip, a half turn
            # is a flip of both axes.
            quarter = ops.flip(ops.transpose(inputs, (0, 2, 1, 3)), axis=2)
            out = ops.where(first, quarter, inputs)
            return ops.where(second, ops.flip(out, axis=(1, 2)), out)

    return {
        "droughtwatch>RandomFlips": RandomFlips,
        "droughtwatch>RandomRotate90": RandomRotate90,
    }


def _inputs_and_preprocessing(variant: Variant) -> tuple[Any, Any]:
    keras = quiet_import("keras")

    layers = custom_objects()
    inputs = keras.Input(shape=input_shape(variant), dtype="float32", name=INPUT_NAME)
    x = keras.layers.Rescaling(scale=channel_scales(variant.features), name="rescale_raw")(inputs)
    # Each layer gets its own seed so flips and rotations are not drawn from the same stream.
    if "flip" in variant.augmentation:
        x = layers["droughtwatch>RandomFlips"](seed=variant.seed, name="random_flips")(x)
    if "rotate90" in variant.augmentation:
        x = layers["droughtwatch>RandomRotate90"](seed=variant.seed + 1, name="random_rotate90")(x)
    return inputs, x


def _seed_cnn(x: Any) -> Any:
    """The earlier project's network (257,022 parameters with 4 input channels)."""
    keras = quiet_import("keras")
    from keras import layers

    for filters, pool in ((32, True), (32, True), (64, True), (128, False), (128, True)):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        if pool:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(50, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    return keras.layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)


# (output channels, blocks, stride of the first block, expansion) per stage of compact_resnet.
# Expansion 2 in the 17-pixel stage and a 24-channel stem halve the CPU time per epoch of the
# same network at 32 channels and expansion 4 throughout, for a few per cent fewer parameters.
_RESNET_STAGES = ((24, 1, 1, 1), (48, 2, 2, 2), (96, 2, 2, 3), (128, 2, 2, 4))
_RESNET_STEM = 24
_RESNET_HEAD = 256


def _inverted_residual(x: Any, filters: int, stride: int, expansion: int, name: str) -> Any:
    from keras import layers

    shortcut = x
    channels = x.shape[-1]
    if expansion != 1:
        x = layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand")(x)
        x = layers.BatchNormalization(name=f"{name}_expand_bn")(x)
        x = layers.Activation("swish")(x)
    x = layers.DepthwiseConv2D(
        3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.Activation("swish")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
    x = layers.BatchNormalization(name=f"{name}_project_bn")(x)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def _compact_resnet(x: Any) -> Any:
    """A small EfficientNet-style network sized for CPU training.

    Why this shape: the best published results on this benchmark (~0.775 val accuracy) come
    from EfficientNet-style networks, whose building block is the inverted residual (1x1
    expansion, 3x3 depthwise conv, 1x1 projection, batch norm, swish, identity shortcut). A
    full EfficientNet-B3 is ~1.8 GFLOPs per image, far too slow on 2 CPU cores for 86k images,
    so this keeps the block and drops the size: a stride-2 stem (a 30 m pixel's neighbourhood
    matters more than single-pixel detail, and it cuts the cost of every later layer by 4),
    four stages at 33, 17, 9 and 5 pixels: 371,972 parameters and about 25 M multiply-adds per
    image (the seed CNN: 257,022 and about 17 M), so an epoch costs about twice the seed's on CPU.
    Batch norm right after the raw-value rescaling standardises the 14 channels, whose ranges
    differ a lot (B9 sits near 0, the thermal bands near 0.8 with a tiny spread), without a
    precomputed statistics pass. Global average pooling instead of Flatten + Dense keeps the
    head small and makes the features position-invariant (forage is a property of the whole
    patch, not of where in it the grass is). Dropout 0.2 before the classifier, as the seed.
    """
    from keras import layers

    x = layers.BatchNormalization(name="input_standardise")(x)
    x = layers.Conv2D(_RESNET_STEM, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("swish")(x)
    for stage, (filters, blocks, stride, expansion) in enumerate(_RESNET_STAGES, start=1):
        for block in range(blocks):
            x = _inverted_residual(
                x,
                filters,
                stride if block == 0 else 1,
                expansion,
                name=f"stage{stage}_block{block + 1}",
            )
    x = layers.Conv2D(_RESNET_HEAD, 1, use_bias=False, name="head")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Activation("swish")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    return layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)


_NETWORKS = {"seed_cnn": _seed_cnn, "compact_resnet": _compact_resnet}


def build_model(variant: Variant) -> keras.Model:
    """The variant's network, compiled: Adam(learning_rate), categorical cross-entropy with the
    variant's label smoothing, accuracy. Seed the run (training.set_determinism) before building
    when the initial weights must be reproducible."""
    keras = quiet_import("keras")

    inputs, x = _inputs_and_preprocessing(variant)
    outputs = _NETWORKS[variant.network](x)
    model = keras.Model(inputs, outputs, name=variant.name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=variant.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=variant.label_smoothing),
        metrics=["accuracy"],
        # XLA off: plain TF kernels are deterministic under op determinism on CPU.
        jit_compile=False,
    )
    return model


def parameter_count(model: keras.Model) -> int:
    """Trainable plus non-trainable parameters (batch-norm statistics included)."""
    return int(model.count_params())
