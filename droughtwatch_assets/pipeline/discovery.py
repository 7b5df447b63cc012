"""Finding new and rewritten shards in the data root, at a cost that grows with what is new.

The rule (also in the README):

* Each top-level folder (``train/``, ``val/``, ``drops/``) has its own high-water mark, and its
  keys are listed in lexicographic order after it (S3 ``StartAfter``; the local walk prunes
  folders before it). New dated drops (``drops/2024-08-08/...``) sort after the old ones, new
  ``part-r-NNNNN`` after the old parts, so a tick lists only what is new, plus one listing of
  the top-level folders.
* The last ``window_folders`` folders in which shards arrived are listed again every tick and
  compared object version by object version (S3 ETag; size and mtime locally), which catches
  re-uploads and late arrivals into recent drops.
* A re-upload older than that window, a shard added below a folder's mark (say
  ``train/part-r-00003`` after ``train/part-r-00007`` was seen) and objects at the root of the
  data root (shards live in folders) are found by ``droughtwatch discover``, which lists
  everything once.
* A (key, version) pair is processed once: the lake's ``raw_tfrecords`` report records the
  version it validated, and runs are keyed ``<key>@<version>``, so a replayed tick asks for
  nothing twice, while new content under an old key is new data and is processed again.

Nothing here imports Dagster; the sensor and the CLI wrap it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from droughtwatch_assets.adapters.storage import ObjectInfo, ObjectNotFound, Store
from droughtwatch_assets.pipeline.layout import RAW_TFRECORDS, object_key

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")
MAX_KEY_LENGTH = 512
DEFAULT_WINDOW_FOLDERS = 2
DROPS_PREFIX = "drops/"  # dated drops, drops/<YYYY-MM-DD>/part-r-*: scored as they arrive
DEFAULT_MAX_NEW = 500


def ingested_version(lake: Store, key: str) -> str | None:
    """The source version that raw_tfrecords last validated for this shard, if any."""
    try:
        data = lake.read_bytes(object_key(RAW_TFRECORDS, key))
    except ObjectNotFound:
        return None
    return json.loads(data).get("source_version")


def already_ingested_in(lake: Store) -> Callable[[ObjectInfo], bool]:
    """Whether the lake already holds a raw_tfrecords report for exactly this version."""

    def check(info: ObjectInfo) -> bool:
        return ingested_version(lake, info.key) == info.version

    return check


class InvalidShardKey(ValueError):
    """A data-root path that cannot be a shard partition."""


def is_shard_name(key: str) -> bool:
    """The benchmark loaders' rule: file names start with ``part-`` and never end in ``gstmp``."""
    name = key.rsplit("/", 1)[-1]
    return name.startswith("part-") and not name.endswith("gstmp")


def validate_shard_key(key: str) -> str:
    """Refuse keys Dagster cannot hold or that would escape the data root; return the key.

    Allowed: '/'-separated segments of letters, digits, '.', '_', '=', '-', each starting with a
    letter or digit (so no '.', '..', hidden files or empty segments), at most 512 characters.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidShardKey(f"shard key {key!r} must be 1 to {MAX_KEY_LENGTH} characters long")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidShardKey(
                f"shard key {key!r}: segment {segment!r} is not allowed; use letters, digits, "
                "'.', '_', '=' and '-', starting with a letter or digit (no '..', no empty or "
                "hidden segments, no spaces or control characters)"
            )
    return key


@dataclass
class DiscoveryCursor:
    marks: dict[str, str] = field(default_factory=dict)  # top-level folder -> last key listed
    window: dict[str, str] = field(default_factory=dict)  # key -> version, recent folders only
    folders: list[str] = field(default_factory=list)  # the recent folders, oldest first

    def dumps(self) -> str:
        return json.dumps(
            {"marks": self.marks, "window": self.window, "folders": self.folders},
            sort_keys=True,
        )

    @classmethod
    def loads(cls, text: str | None) -> DiscoveryCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            dict(data.get("marks", {})), dict(data.get("window", {})), list(data.get("folders", []))
        )

    def mark_for(self, key: str) -> str | None:
        return self.marks.get(_top(key))


@dataclass(frozen=True)
class Found:
    info: ObjectInfo
    previous_version: str | None = None  # set when the key was seen before with other content

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def run_key(self) -> str:
        return f"{self.info.key}@{self.info.version}"


@dataclass
class Discovery:
    found: list[Found]
    skipped: list[tuple[str, str]]  # (key, reason)
    cursor: DiscoveryCursor
    listed: int  # objects listed this tick: the tick's cost


def classify(info: ObjectInfo) -> str | None:
    """Why an object is not a shard, or None when it is one."""
    if not is_shard_name(info.key):
        return "not a shard (shard names start with 'part-' and do not end in 'gstmp')"
    try:
        validate_shard_key(info.key)
    except InvalidShardKey as exc:
        return str(exc)
    if info.size == 0:
        return "empty object (0 bytes); waiting for content"
    return None


def _folder(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


def _top(key: str) -> str:
    return key.split("/", 1)[0] + "/"


def discover(
    store: Store,
    cursor: DiscoveryCursor,
    *,
    already_ingested: Callable[[ObjectInfo], bool] = lambda info: False,
    window_folders: int = DEFAULT_WINDOW_FOLDERS,
    max_new: int = DEFAULT_MAX_NEW,
) -> Discovery:
    """One incremental pass: what is new after the high-water mark or changed in the window.

    ``already_ingested`` tells whether the lake already holds this exact version (for example
    because ``droughtwatch discover`` processed it); those are not asked for again.
    """
    found: list[Found] = []
    skipped: list[tuple[str, str]] = []
    window = dict(cursor.window)
    folders = list(cursor.folders)
    listed = 0

    def consider(info: ObjectInfo, previous: str | None) -> None:
        reason = classify(info)
        if reason is not None:
            skipped.append((info.key, reason))
            return
        if already_ingested(info):
            return
        found.append(Found(info, previous))

    # 1. The recent folders again: re-uploads and late arrivals below the high-water mark.
    for folder in folders:
        seen: set[str] = set()
        mark = cursor.mark_for(folder)
        for info in store.list(folder):
            if mark is None or info.key > mark:
                break  # step 2 lists these
            listed += 1
            if _folder(info.key) != folder:
                continue  # deeper folders have their own window entry
            seen.add(info.key)
            previous = window.get(info.key)
            if previous == info.version:
                continue
            window[info.key] = info.version
            consider(info, previous)
        for key in [k for k in window if _folder(k) == folder and k not in seen]:
            del window[key]  # deleted objects leave the window

    # 2. In each top-level folder (train/, val/, drops/, ...), everything after its own mark,
    # up to max_new objects in all: a drop sorts before train/ but after the previous drop.
    marks = dict(cursor.marks)
    budget = max_new
    for top in store.list_prefixes(""):
        if budget <= 0:
            break
        for info in store.list(top, start_after=marks.get(top), limit=budget):
            listed += 1
            budget -= 1
            marks[top] = info.key
            folder = _folder(info.key)
            if folder not in folders:
                folders.append(folder)
            window[info.key] = info.version
            consider(info, None)

    # Keep only the most recent folders in the window.
    folders = folders[-window_folders:] if window_folders > 0 else []
    window = {k: v for k, v in window.items() if _folder(k) in folders}
    return Discovery(found, skipped, DiscoveryCursor(marks, window, folders), listed)


def full_scan(
    store: Store, *, already_ingested: Callable[[ObjectInfo], bool]
) -> tuple[list[Found], list[tuple[str, str]]]:
    """List the whole data root once: every shard whose current version is not in the lake."""
    found: list[Found] = []
    skipped: list[tuple[str, str]] = []
    for info in store.list(""):
        reason = classify(info)
        if reason is not None:
            skipped.append((info.key, reason))
        elif not already_ingested(info):
            found.append(Found(info))
    return found, skipped


def unique_keys(found: Iterable[Found]) -> list[str]:
    return list(dict.fromkeys(f.key for f in found))
