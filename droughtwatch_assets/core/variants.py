"""Model variants: every training choice of a variant, declared once in `VARIANTS`.

Plain data, no TensorFlow: Dagster partitions, MLflow params and the trainer all read from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from droughtwatch_assets.core.tfrecord import BANDS, NUM_CLASSES

BAND_FEATURES: tuple[str, ...] = BANDS
INDEX_FEATURES: tuple[str, ...] = ("ndvi", "ndmi", "evi")
ALL_FEATURES: tuple[str, ...] = BAND_FEATURES + INDEX_FEATURES
AUGMENTATIONS: tuple[str, ...] = ("flip", "rotate90")
NETWORKS: tuple[str, ...] = ("seed_cnn", "compact_resnet")

# The earlier project's settings, shared by its four variants.
SEED_LEARNING_RATE = 0.0005
SEED_BATCH_SIZE = 64
SEED_CLASS_WEIGHTS: tuple[float, float, float, float] = (1.0, 4.0, 4.0, 6.0)
SEED_RANDOM_SEED = 23


class VariantError(ValueError):
    """A variant that cannot be trained: unknown name, feature, augmentation or network, or a bad
    hyperparameter. The message names the variant and the bad value."""


@dataclass(frozen=True)
class Variant:
    """One trainable model configuration. `features` gives the input channels in order:
    bands `B1`..`B11` (raw 8-bit values) and/or indices `ndvi`, `ndmi`, `evi` (int8 codes)."""

    name: str
    features: tuple[str, ...]
    epochs: int
    learning_rate: float = SEED_LEARNING_RATE
    batch_size: int = SEED_BATCH_SIZE
    class_weights: tuple[float, float, float, float] = SEED_CLASS_WEIGHTS
    augmentation: tuple[str, ...] = ()  # subset of AUGMENTATIONS, applied in training only
    network: str = "seed_cnn"
    seed: int = SEED_RANDOM_SEED
    label_smoothing: float = 0.0
    # Stop when validation loss has not improved for this many epochs, keeping the best
    # epoch's weights; None trains every epoch.
    early_stopping_patience: int | None = None

    def params(self) -> dict[str, str]:
        """Every field as a flat string dict (for MLflow `log_params`); tuples are comma-joined,
        an empty augmentation is "none"."""
        out: dict[str, str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                out[field.name] = ",".join(str(v) for v in value) or "none"
            else:
                out[field.name] = str(value)
        return out

    @property
    def class_weight_map(self) -> dict[int, float]:
        """Class weights as Keras' `class_weight` expects them."""
        return {label: float(w) for label, w in enumerate(self.class_weights)}

    def __post_init__(self) -> None:
        """Every Variant is valid: construction (and dataclasses.replace) raises VariantError
        naming the variant and the first bad value."""

        def fail(reason: str) -> VariantError:
            return VariantError(f"variant {self.name!r}: {reason}")

        if not self.name:
            raise VariantError("variant name must not be empty")
        if not isinstance(self.features, tuple) or not self.features:
            raise fail(f"needs a non-empty tuple of features, got {self.features!r}")
        for feature in self.features:
            if feature not in ALL_FEATURES:
                raise fail(
                    f"unknown feature {feature!r}; valid features are {', '.join(ALL_FEATURES)}"
                )
        duplicates = sorted({f for f in self.features if self.features.count(f) > 1})
        if duplicates:
            raise fail(f"duplicate feature(s) {', '.join(duplicates)}")
        if not isinstance(self.augmentation, tuple):
            raise fail(f"augmentation must be a tuple, got {self.augmentation!r}")
        for augmentation in self.augmentation:
            if augmentation not in AUGMENTATIONS:
                raise fail(
                    f"unknown augmentation {augmentation!r}; valid ones are "
                    f"{', '.join(AUGMENTATIONS)}"
                )
        if len(set(self.augmentation)) != len(self.augmentation):
            raise fail(f"duplicate augmentation in {self.augmentation!r}")
        if self.network not in NETWORKS:
            raise fail(
                f"unknown network {self.network!r}; valid networks are {', '.join(NETWORKS)}"
            )
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise fail(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, int)
            or self.batch_size < 1
        ):
            raise fail(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not self.learning_rate > 0:  # also rejects NaN
            raise fail(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if len(self.class_weights) != NUM_CLASSES:
            raise fail(
                f"needs {NUM_CLASSES} class weights (one per label 0..{NUM_CLASSES - 1}), "
                f"got {len(self.class_weights)}: {self.class_weights!r}"
            )
        if not all(w > 0 for w in self.class_weights):
            raise fail(f"class weights must all be > 0, got {self.class_weights!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise fail(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise fail(f"seed must be an integer >= 0, got {self.seed!r}")
        patience = self.early_stopping_patience
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise fail(f"early_stopping_patience must be an integer >= 1 or None, got {patience!r}")


_SEED_BANDS = ("B2", "B3", "B4", "B5")

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # The earlier project's four variants, with its defaults.
        Variant("baseline", _SEED_BANDS, epochs=2),
        # 100 epochs as the seed had them, stopped once validation loss stalls for 10.
        Variant("useful", _SEED_BANDS, epochs=100, early_stopping_patience=10),
        # The seed did not record epochs for these two; they get baseline's, so that the three
        # feature sets are compared at equal cost.
        Variant("ndvi", ("ndvi",), epochs=2),
        Variant("nd", ("ndvi", "ndmi"), epochs=2),
        # All spectral information plus the indices, on a compact residual network (see
        # models.compact_resnet). Augmentation: a nadir 65 x 65 patch has no preferred
        # orientation, so the 8 flips/rotations of the square are all equally valid images.
        # Class weights are the square root of the seed's inverse-frequency weights: the seed's
        # full weights trade a lot of accuracy on the 60 % class for minority recall; the square
        # root is the usual compromise. Label smoothing 0.1 because herder labels are noisy and
        # neighbouring classes overlap heavily. lr 0.001 is Adam's default, safe with batch norm.
        Variant(
            "full",
            ALL_FEATURES,
            epochs=30,
            learning_rate=0.001,
            class_weights=(1.0, 2.0, 2.0, 2.5),
            augmentation=("flip", "rotate90"),
            network="compact_resnet",
            label_smoothing=0.1,
            early_stopping_patience=5,
        ),
        # Untrained: exists to prove that the promotion gate refuses a useless model.
        Variant("dummy", _SEED_BANDS, epochs=0),
    )
}


# The variant whose champion scores new shards unless told otherwise (serving_model's default).
SERVING_VARIANT = "baseline"


def get_variant(name: str) -> Variant:
    """The declared variant called `name`; VariantError listing the known names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise VariantError(
            f"unknown variant {name!r}; known variants are {', '.join(VARIANTS)}"
        ) from None


def with_overrides(
    variant: Variant, *, epochs: int | None = None, batch_size: int | None = None
) -> Variant:
    """A validated copy of `variant` with the given fields replaced (None keeps the declared)."""
    changes: dict[str, int] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if batch_size is not None:
        changes["batch_size"] = batch_size
    return dataclasses.replace(variant, **changes)
