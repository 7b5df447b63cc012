"""What the run workers' fork server does before it forks the first worker (the only module
``runs.worker_context`` names to it): set glibc's allocator to keep the memory a worker frees,
then import everything in ``runs.WORKER_PRELOAD``, with the garbage collector off.

The allocator: every shard allocates a dozen buffers of 1-4 MB (the shard's bytes, its decoded
bands, the filtered images, the indices, the encoded objects), several alive at once. By
default glibc maps such buffers from the kernel and unmaps them when freed, or returns the top
of its heap once more than a few MB there are free, so the kernel zeroes and faults in every
page again for the next shard. A worker of ``discover --materialize`` took about 345,000 page
faults and 1.3-1.8 s of system time for 150 real-sized shards; with ``keep_freed_memory``,
about 20,000 and 0.8 s, and the command 8.1 s instead of 8.7 s (medians of three runs each). A
worker's peak memory is what it holds at once, as before; between shards it keeps that memory
for the next one instead of returning it.

Imports allocate a few hundred thousand objects that live as long as the process. With the
collector on, every 700 allocations started a collection, and the full ones walked everything
imported so far again: about a fifth of the server's CPU before the first run could start
(2.7 s against 2.2 s with it off, medians of five and six on this project's machines). What
the imports leave is then frozen (``gc.freeze``, as Python's documentation advises before
forking): the workers' own collections skip it, and its pages stay shared with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib

from droughtwatch_assets.runs import WORKER_PRELOAD  # light: no Dagster, no data

# glibc's mallopt parameters (malloc.h) and the values set: buffers up to MMAP_THRESHOLD come
# from the heap (a 500-record shard's largest is about 23 MB), and the heap keeps up to
# TRIM_THRESHOLD of free memory at its top.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large buffers from its heap and keep what is freed there for
    the next allocation, instead of mapping and unmapping them (module docstring). Inherited by
    forks. False, and nothing changed, where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


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


keep_freed_memory()
preload(WORKER_PRELOAD)
