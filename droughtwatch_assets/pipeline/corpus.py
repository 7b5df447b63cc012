"""The labelled training corpus as the lake holds it: which shards training may use.

Only shards whose filtered images and spectral indices passed their blocking checks are in the
lake (the ingest writes nothing else), so a shard is usable when both objects exist. Shards
under ``train/`` are fitted on, shards under ``val/`` validate. The fingerprint changes exactly
when a usable shard appears, disappears or is rewritten, so schedules and sensors can tell
"nothing changed" without reading any pixels.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from droughtwatch_assets.adapters.storage import Store
from droughtwatch_assets.core.imagestack import dataset_from_arrow
from droughtwatch_assets.core.tfrecord import UNLABELLED
from droughtwatch_assets.core.training import ShardSource
from droughtwatch_assets.core.variants import BAND_FEATURES, INDEX_FEATURES, Variant
from droughtwatch_assets.pipeline.lake import (
    FILTERED_IMAGES,
    KINDS,
    SPECTRAL_INDICES,
    SUFFIXES,
    object_key,
)

SPLITS = ("train", "val")
FILTERED, INDICES = FILTERED_IMAGES, SPECTRAL_INDICES
SUFFIX = SUFFIXES[KINDS[FILTERED]]  # and of INDICES: both are Datasets


@dataclass(frozen=True)
class CorpusManifest:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    fingerprint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CorpusManifest:
        return cls(list(data["train"]), list(data["val"]), data["fingerprint"])


def _stored(lake: Store, asset: str, split: str) -> dict[str, str]:
    prefix = f"{asset}/{split}/"
    return {
        info.key[len(asset) + 1 : -len(SUFFIX)]: info.version
        for info in lake.list(prefix)
        if info.key.endswith(SUFFIX)
    }


def corpus_manifest(lake: Store) -> CorpusManifest:
    """List the usable labelled shards: one listing per asset and split."""
    splits: dict[str, list[str]] = {}
    versions: list[tuple[str, str, str]] = []
    for split in SPLITS:
        filtered, indices = _stored(lake, FILTERED, split), _stored(lake, INDICES, split)
        keys = sorted(filtered.keys() & indices.keys())
        splits[split] = keys
        versions += [(key, filtered[key], indices[key]) for key in keys]
    digest = hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:16]
    return CorpusManifest(splits["train"], splits["val"], digest)


def shard_sources(lake: Store, keys: Sequence[str], variant: Variant) -> list[ShardSource]:
    """Training inputs of these shards, each loaded from the lake only when the pipeline gets
    to it, and only the bands and indices the variant uses (the rest is never decompressed,
    and from a local lake never even read: the files are memory-mapped)."""
    bands = [f for f in variant.features if f in BAND_FEATURES]
    index_names = [f for f in variant.features if f in INDEX_FEATURES]

    def loader(key: str):
        def load():
            return (
                dataset_from_arrow(
                    lake.read_view(object_key(FILTERED, key)),
                    variables=["pixels"],
                    select={"band": bands},
                ),
                dataset_from_arrow(lake.read_view(object_key(INDICES, key)), variables=index_names),
            )

        return load

    def labelled(key: str):
        # Counted once per source: training builds its validation stream twice (fit, evaluate).
        @functools.cache
        def count() -> int:
            # The labels alone: from a local lake only their pages are read (memory-mapped).
            images = dataset_from_arrow(lake.read_view(object_key(FILTERED, key)), variables=[])
            return int(np.count_nonzero(images["label"].values != UNLABELLED))

        return count

    return [ShardSource(key, loader(key), labelled(key)) for key in keys]
