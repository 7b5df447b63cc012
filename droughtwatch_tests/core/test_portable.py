"""The ONNX export of a model: its probabilities equal the Keras model's on the real sample
shard and on generated shards, its calibration travels inside the file, and loading and
scoring it need neither TensorFlow nor Keras."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from droughtwatch_assets.core.images import filter_images
from droughtwatch_assets.core.indices import index_dataset
from droughtwatch_assets.core.models import build_model
from droughtwatch_assets.core.portable import OnnxModel, export_onnx, parity
from droughtwatch_assets.core.tfrecord import read_shard
from droughtwatch_assets.core.training import set_determinism, shard_features
from droughtwatch_assets.core.variants import get_variant
from droughtwatch_tests.core.test_training import make_shard

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _features(filtered, indices, variant) -> np.ndarray:
    x, _ = shard_features(filtered, indices, variant.features, keep_unlabelled=True)
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["baseline", "full"])
def test_the_onnx_export_scores_like_keras_on_real_and_generated_shards(
    name, tmp_path, sample_shard_path
):
    variant = get_variant(name)
    set_determinism(variant.seed)
    model = build_model(variant)
    shard = read_shard(sample_shard_path)
    filtered, _ = filter_images(shard.images, shard.labels, shard.ids)
    indices = index_dataset(
        filtered["id"].values, filtered["label"].values, filtered["pixels"].values
    )
    real = _features(filtered, indices, variant)
    generated = _features(*make_shard(200, seed=3), variant)
    path = export_onnx(model, tmp_path / "model.onnx", real, temperature=1.7)
    onnx_model = OnnxModel(path)
    assert onnx_model.temperature == pytest.approx(1.7)
    for x in (real, generated):
        result = parity(model, onnx_model, x)
        assert result.ok and result.images == len(x), result


def test_loading_and_scoring_the_export_imports_no_tensorflow(tmp_path):
    variant = get_variant("baseline")
    set_determinism(variant.seed)
    x = _features(*make_shard(20, seed=4), variant)
    export_onnx(build_model(variant), tmp_path / "model.onnx", x)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np\n"
        "from droughtwatch_assets.core.portable import OnnxModel\n"
        f"m = OnnxModel({str(tmp_path / 'model.onnx')!r})\n"
        f"p = m(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "assert p.shape == (20, 4)\n"
        "print(sorted(n for n in ('tensorflow', 'keras') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
