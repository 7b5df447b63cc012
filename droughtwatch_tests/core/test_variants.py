"""Variant declarations: the seed's settings, validation errors, params and overrides."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from droughtwatch_assets.core.variants import (
    ALL_FEATURES,
    BAND_FEATURES,
    INDEX_FEATURES,
    VARIANTS,
    Variant,
    VariantError,
    get_variant,
    with_overrides,
)


def test_declared_variants_and_seed_defaults() -> None:
    assert set(VARIANTS) == {"baseline", "useful", "ndvi", "nd", "full", "dummy"}
    assert tuple(f"B{i}" for i in range(1, 12)) == BAND_FEATURES
    assert INDEX_FEATURES == ("ndvi", "ndmi", "evi")
    assert VARIANTS["baseline"].features == ("B2", "B3", "B4", "B5")
    assert VARIANTS["baseline"].epochs == 2
    assert VARIANTS["useful"].epochs == 100
    assert VARIANTS["ndvi"].features == ("ndvi",)
    assert VARIANTS["nd"].features == ("ndvi", "ndmi")
    assert VARIANTS["dummy"].epochs == 0
    for name in ("baseline", "useful", "ndvi", "nd", "dummy"):
        v = VARIANTS[name]
        assert (v.learning_rate, v.batch_size, v.seed, v.network) == (0.0005, 64, 23, "seed_cnn")
        assert v.class_weights == (1.0, 4.0, 4.0, 6.0)
        assert v.augmentation == () and v.label_smoothing == 0.0
    full = VARIANTS["full"]
    assert full.features == ALL_FEATURES and len(full.features) == 14
    assert set(full.augmentation) == {"flip", "rotate90"}
    assert full.network == "compact_resnet" and full.label_smoothing > 0


def test_params_are_flat_strings_with_every_field() -> None:
    params = VARIANTS["baseline"].params()
    assert set(params) == {f.name for f in dataclasses.fields(Variant)}
    assert params["features"] == "B2,B3,B4,B5"
    assert params["class_weights"] == "1.0,4.0,4.0,6.0"
    assert params["augmentation"] == "none"
    assert params["epochs"] == "2" and params["learning_rate"] == "0.0005"
    assert VARIANTS["full"].params()["augmentation"] == "flip,rotate90"
    assert all(isinstance(v, str) for v in params.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"features": ("B2", "B12")}, "unknown feature 'B12'; valid features are B1, B2"),
        ({"features": ("NDVI",)}, "unknown feature 'NDVI'"),
        ({"features": ("B2", "B2")}, "duplicate feature(s) B2"),
        ({"features": ()}, "non-empty tuple of features"),
        ({"augmentation": ("mixup",)}, "unknown augmentation 'mixup'"),
        ({"network": "resnet50"}, "unknown network 'resnet50'"),
        ({"epochs": -1}, "epochs must be an integer >= 0, got -1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
        ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
        ({"class_weights": (1.0, 2.0, 3.0)}, "needs 4 class weights"),
        ({"class_weights": (1.0, 0.0, 3.0, 4.0)}, "class weights must all be > 0"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
    ],
)
def test_a_bad_variant_cannot_be_made_and_the_error_names_it(changes: dict, message: str) -> None:
    with pytest.raises(VariantError) as excinfo:
        dataclasses.replace(VARIANTS["baseline"], name="mine", **changes)
    assert str(excinfo.value).startswith("variant 'mine': ")
    assert message in str(excinfo.value)


def test_get_variant_lists_known_names() -> None:
    assert get_variant("nd") is VARIANTS["nd"]
    with pytest.raises(VariantError, match="unknown variant 'nope'; known variants are baseline"):
        get_variant("nope")


def test_with_overrides_replaces_and_validates() -> None:
    changed = with_overrides(VARIANTS["useful"], epochs=3, batch_size=8)
    assert (changed.epochs, changed.batch_size) == (3, 8)
    assert changed.features == VARIANTS["useful"].features
    assert with_overrides(VARIANTS["useful"]) == VARIANTS["useful"]
    with pytest.raises(VariantError, match="'useful': epochs"):
        with_overrides(VARIANTS["useful"], epochs=-2)


def test_importing_variants_does_not_import_tensorflow() -> None:
    code = (
        "import sys, droughtwatch_assets.core.variants, droughtwatch_assets.core.models, "
        "droughtwatch_assets.core.training, droughtwatch_assets.core.metrics; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
