"""What the run workers' fork server imports before it forks the first worker (the only module
``runs.worker_context`` names to it): everything in ``runs.WORKER_PRELOAD``, with the garbage
collector off while they import.

Imports allocate a few hundred thousand objects that live as long as the process. With the
collector on, every 700 allocations started a collection, and the full ones walked everything
imported so far again: about a fifth of the server's CPU before the first run could start
(2.7 s against 2.2 s with it off, medians of five and six on this project's machines). What
the imports leave is then frozen (``gc.freeze``, as Python's documentation advises before
forking): the workers' own collections skip it, and its pages stay shared with them.
"""

from __future__ import annotations

import contextlib
import gc
import importlib

from droughtwatch_assets.runs import WORKER_PRELOAD  # light: no Dagster, no data


def preload(names: tuple[str, ...]) -> None:
    """Import `names`, skipping one that is not there, as the fork server skips a preload
    module (the workers then import what they need themselves)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in names:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


preload(WORKER_PRELOAD)
