"""TensorFlow and Keras, imported on first use without the noise they print at import.

TensorFlow's C++ runtime writes its start-up lines (absl's "All log messages before
absl::InitializeLog() ...", oneDNN's notice, the CPU-feature hint) straight to file descriptor 2
before Python's logging or ``TF_CPP_MIN_LOG_LEVEL`` can filter them; a user running
``droughtwatch demo`` sees them between the tables. :func:`quiet_import` imports a module with
descriptor 2 captured, drops exactly those lines and passes everything else through (warnings,
errors, a progress bar drawn meanwhile by another thread), then returns the module.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import threading
from types import ModuleType

_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\] .*"  # absl INFO lines, before logging is initialised
    rb"|To enable the following instructions: .*"  # the CPU-feature hint's second line
    rb")\r?\n?$"
)
_LOCK = threading.Lock()
# What an environment without the cpu or gpu extra lacks (an image built with TF=none).
_TENSORFLOW_SIDE = {"tensorflow", "keras", "tf2onnx", "onnx"}


class FrameworkMissing(ModuleNotFoundError):
    """TensorFlow (or the ONNX exporter) is not installed here: training, registration and
    Keras scoring need it; ingest and ONNX scoring do not."""


def require(name: str) -> ModuleType:
    """``import name``, or, where the TensorFlow side is not installed, a FrameworkMissing that
    says what needs it and how to get it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _TENSORFLOW_SIDE:
            raise
        raise FrameworkMissing(
            f"{exc.name} is not installed in this environment, and this step needs it "
            "(training, registering a model, or scoring with model_format 'keras'). An image "
            "built with --build-arg TF=none, or an environment without the cpu or gpu extra, "
            "ingests and scores ONNX exports only: run this step where TensorFlow is "
            "(docker build --build-arg TF=cpu, or `make install`).",
            name=exc.name,
        ) from None  # the message says it all; a cause would be what reports show instead


def noise(line: bytes) -> bool:
    """Whether `line` is one of the start-up lines TensorFlow prints at import."""
    return _NOISE.match(line) is not None


def quiet_import(name: str) -> ModuleType:
    """``import name``; the first import of TensorFlow (or Keras, which imports it) prints none
    of TensorFlow's start-up noise."""
    if name in sys.modules:
        return sys.modules[name]
    with _LOCK:
        if "tensorflow" in sys.modules:
            return require(name)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                return require(name)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.readlines() if not noise(line)]
                if kept:
                    os.write(2, b"".join(kept))


# Printed by TensorFlow 2.21's C++ runtime (as an E-level line) when tf.data builds a map whose
# graph carries an attribute its own op registry lacks: "Unknown attributes will be ignored".
# Harmless, and the only line it prints per training.
_RUNTIME_NOISE = re.compile(
    rb"^E\d{4} [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
    rb"use_unbounded_threadpool which is not in the op definition"
)


class filtered_stderr:  # noqa: N801 (a context manager used like a function)
    """Within the block, lines written to file descriptor 2 pass through a pipe that drops
    TensorFlow's known-harmless runtime line and forwards everything else as it comes (a
    reader thread, so nothing waits for the block to end)."""

    def __enter__(self) -> filtered_stderr:
        sys.stderr.flush()
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()
        return self

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not _RUNTIME_NOISE.match(line))
                if out:
                    os.write(self._saved, out)
            if pending and not _RUNTIME_NOISE.match(pending):
                os.write(self._saved, pending)

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end: the reader drains and ends
        self._thread.join(timeout=5)
        os.close(self._saved)
