"""How many shards go into one run: contiguous batches of partition keys.

A run over many shards names them as a partition range (first...last) in the order the shards'
partitions were added, so a batch may only hold keys that sit next to each other in that order
and are all wanted. Nothing here imports Dagster: the drop sensor, the CLI and the benchmarks
share it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence

# A run costs a few seconds before its first shard (a process, the code location's imports);
# below this many shards a second run in parallel saves less than it costs.
MIN_SHARDS_PER_PARALLEL_RUN = 50


def default_parallelism() -> int:
    return max(1, os.cpu_count() or 1)


def batch_size(count: int, max_per_run: int, parallel: int) -> int:
    """Shards per run for `count` shards: as few runs as `max_per_run` allows, spread over up to
    `parallel` runs when each still gets at least MIN_SHARDS_PER_PARALLEL_RUN shards, and as
    many runs as keep all `parallel` workers busy to the end (a multiple of `parallel`)."""
    if count <= 0:
        return max_per_run
    runs = max(1, min(parallel, count // MIN_SHARDS_PER_PARALLEL_RUN))
    needed = math.ceil(count / max_per_run)
    if needed > runs:
        runs = math.ceil(needed / runs) * runs
    return max(1, min(max_per_run, math.ceil(count / runs)))


def contiguous_batches(
    wanted: Iterable[str],
    order: Sequence[str],
    *,
    max_per_run: int,
    parallel: int = 1,
) -> list[list[str]]:
    """Split `wanted` into batches of keys adjacent in `order` (each a valid partition range),
    of at most `batch_size(...)` keys each, in `order`'s order. A wanted key missing from
    `order` is an error: its partition does not exist."""
    position = {key: i for i, key in enumerate(order)}
    keys = sorted(set(wanted), key=lambda k: position.get(k, -1))
    missing = [k for k in keys if k not in position]
    if missing:
        raise KeyError(f"no partition for {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    size = batch_size(len(keys), max_per_run, parallel)
    batches: list[list[str]] = []
    for key in keys:
        current = batches[-1] if batches else None
        if (
            current is not None
            and len(current) < size
            and position[key] == position[current[-1]] + 1
        ):
            current.append(key)
        else:
            batches.append([key])
    return batches


def batch_id(job: str, items: Iterable[str]) -> str:
    """A short, stable name for a batch of `key@version` items: the same items, the same id."""
    digest = hashlib.sha1("\n".join(sorted(items)).encode()).hexdigest()[:12]
    return f"{job}:{digest}"
