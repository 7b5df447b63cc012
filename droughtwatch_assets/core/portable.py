"""A trained model as ONNX: exported once at registration, scored with onnxruntime alone.

:func:`export_onnx` writes a Keras model (TensorFlow imported: the training side) as an ONNX
file whose metadata carries the model's calibration (``droughtwatch.temperature``), so the
file alone is everything scoring needs. :class:`OnnxModel` loads such a file with
onnxruntime and answers ``model(x, training=False)`` like the Keras model does: the probabilities
of the raw model (scoring applies the temperature, the same function on both paths). Loading
and scoring it import neither TensorFlow nor Keras.

:func:`parity` compares the two on the same inputs: the largest absolute difference of their
probabilities and whether every argmax agrees.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TEMPERATURE_KEY = "droughtwatch.temperature"
# onnxruntime and TensorFlow disagree in the last float32 bits: far below what a label or a
# monitored fraction can feel.
PARITY_TOLERANCE = 1e-4


def export_onnx(
    model: Any, path: str | Path, example: np.ndarray, *, temperature: float = 1.0
) -> Path:
    """Write `model` (Keras) to `path` as ONNX, with `temperature` in its metadata. `example`
    (a few inputs) is passed through the model first: a model loaded from MLflow has not been
    called yet, and Keras exports only a called model."""
    from droughtwatch_assets.core.frameworks import filtered_stderr, require

    onnx = require("onnx")

    path = Path(path)
    model(np.asarray(example[:1], dtype=np.float32), training=False)
    with tempfile.TemporaryDirectory() as tmp, filtered_stderr():
        raw = os.path.join(tmp, "model.onnx")
        model.export(raw, format="onnx", verbose=False)
        proto = onnx.load(raw)
    entry = proto.metadata_props.add()
    entry.key, entry.value = TEMPERATURE_KEY, repr(float(temperature))
    onnx.save(proto, str(path))
    return path


class OnnxModel:
    """An exported model, scored by onnxruntime on the CPU."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.temperature = float(metadata.get(TEMPERATURE_KEY, "1.0"))

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        return self._session.run(None, {self._input: np.asarray(x, dtype=np.float32)})[0]


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    same_argmax: bool
    images: int

    @property
    def ok(self) -> bool:
        return self.same_argmax and self.max_abs_diff <= PARITY_TOLERANCE


def parity(keras_model: Any, onnx_model: OnnxModel, x: np.ndarray, batch: int = 256) -> Parity:
    """Both models' probabilities on `x`, compared."""
    x = np.asarray(x, dtype=np.float32)
    worst, same = 0.0, True
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        a = np.asarray(keras_model(chunk, training=False))
        b = onnx_model(chunk)
        worst = max(worst, float(np.abs(a - b).max()))
        same = same and bool((a.argmax(axis=1) == b.argmax(axis=1)).all())
    return Parity(worst, same, len(x))
