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
            return importlib.import_module(name)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                return importlib.import_module(name)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.readlines() if not noise(line)]
                if kept:
                    os.write(2, b"".join(kept))
