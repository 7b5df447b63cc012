"""The incremental discovery rule, on plain stores (no Dagster)."""

from __future__ import annotations

import pytest

from droughtwatch_assets.adapters.storage import LocalStore
from droughtwatch_assets.pipeline.discovery import (
    DiscoveryCursor,
    InvalidShardKey,
    discover,
    full_scan,
    is_shard_name,
    validate_shard_key,
)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "data")


def keys(result) -> list[str]:
    return [f.key for f in result.found]


def test_shard_names_follow_the_loader_rule():
    assert is_shard_name("train/part-r-00000")
    assert not is_shard_name("train/_SUCCESS")
    assert not is_shard_name("train/part-r-00001.gstmp")
    assert not is_shard_name("drops/README.md")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../etc/part-r-0",
        "a//part-r-0",
        "a/./part-r-0",
        "a b/part-r-0",
        "a/.hidden/part-r-0",
        "x\n/part-r-0",
        "a/" + "x" * 600,
    ],
)
def test_keys_that_cannot_be_partitions_are_refused(bad):
    with pytest.raises(InvalidShardKey, match="shard key"):
        validate_shard_key(bad)


def test_valid_keys_pass():
    assert validate_shard_key("drops/2024-08-07/part-r-00000") == "drops/2024-08-07/part-r-00000"
    assert validate_shard_key("year=2024/part-r-1") == "year=2024/part-r-1"


def test_new_drops_then_nothing(store):
    store.write_bytes("drops/2024-08-07/part-r-00000", b"x")
    store.write_bytes("drops/2024-08-07/_SUCCESS", b"")
    store.write_bytes("drops/2024-08-07/README.md", b"hello")
    first = discover(store, DiscoveryCursor())
    assert keys(first) == ["drops/2024-08-07/part-r-00000"]
    assert sorted(k for k, _ in first.skipped) == [
        "drops/2024-08-07/README.md",
        "drops/2024-08-07/_SUCCESS",
    ]
    # A second tick with the returned cursor finds nothing and skips nothing again.
    second = discover(store, DiscoveryCursor.loads(first.cursor.dumps()))
    assert keys(second) == [] and second.skipped == []


def test_reupload_in_a_recent_folder_is_new_data(store):
    store.write_bytes("drops/2024-08-07/part-r-00000", b"one")
    first = discover(store, DiscoveryCursor())
    store.write_bytes("drops/2024-08-07/part-r-00000", b"two, different")
    second = discover(store, first.cursor)
    [found] = second.found
    assert found.key == "drops/2024-08-07/part-r-00000"
    assert found.previous_version == first.found[0].info.version
    assert found.run_key != first.found[0].run_key


def test_late_arrival_below_the_high_water_mark(store):
    store.write_bytes("drops/2024-08-07/part-r-00001", b"b")
    first = discover(store, DiscoveryCursor())
    store.write_bytes("drops/2024-08-07/part-r-00000", b"a")  # sorts before the mark
    second = discover(store, first.cursor)
    assert keys(second) == ["drops/2024-08-07/part-r-00000"]
    assert second.found[0].previous_version is None


def test_already_ingested_versions_are_not_requested(store):
    info = store.write_bytes("drops/2024-08-07/part-r-00000", b"x")
    result = discover(
        store, DiscoveryCursor(), already_ingested=lambda i: i.version == info.version
    )
    assert result.found == []


def test_tick_cost_grows_with_what_is_new(store):
    for day in range(1, 31):
        for part in range(40):
            store.write_bytes(f"drops/2024-07-{day:02d}/part-r-{part:05d}", b"x")
    cursor = DiscoveryCursor()
    while True:  # the backlog is taken max_new at a time
        result = discover(store, cursor, max_new=500)
        cursor = result.cursor
        if not result.found:
            break
    store.write_bytes("drops/2024-08-01/part-r-00000", b"new")
    result = discover(store, cursor)
    assert keys(result) == ["drops/2024-08-01/part-r-00000"]
    # One new object plus the two recent folders (at most 40 objects each), not the 1,200 held.
    assert result.listed <= 1 + 2 * 40


def test_backlog_is_taken_in_bounded_ticks(store):
    for part in range(25):
        store.write_bytes(f"train/part-r-{part:05d}", b"x")
    first = discover(store, DiscoveryCursor(), max_new=10)
    second = discover(store, first.cursor, max_new=10)
    third = discover(store, second.cursor, max_new=10)
    got = keys(first) + keys(second) + keys(third)
    assert got == [f"train/part-r-{p:05d}" for p in range(25)]
    assert len(keys(first)) == 10


def test_new_drops_after_train_and_val_are_found(store):
    """'drops/...' sorts before 'train/': each top-level folder keeps its own mark."""
    for key in ("train/part-r-00000", "val/part-r-00000", "drops/2024-08-01/part-r-00000"):
        store.write_bytes(key, b"x")
    cursor = discover(store, DiscoveryCursor()).cursor
    store.write_bytes("drops/2024-08-02/part-r-00000", b"new drop")
    store.write_bytes("train/part-r-00001", b"new train shard")
    assert keys(discover(store, cursor)) == ["drops/2024-08-02/part-r-00000", "train/part-r-00001"]


def test_full_scan_finds_shards_added_below_a_mark_outside_the_window(store):
    for key in ("train/part-r-00005", "val/part-r-00000", "drops/2024-01-01/part-r-00000"):
        store.write_bytes(key, b"x")
    cursor = discover(store, DiscoveryCursor()).cursor
    for day in (2, 3):  # two newer drops push train/ out of the two-folder window
        store.write_bytes(f"drops/2024-01-0{day}/part-r-00000", b"x")
    cursor = discover(store, cursor).cursor
    store.write_bytes("train/part-r-00001", b"t")  # sorts below train/'s mark
    assert keys(discover(store, cursor)) == []
    found, skipped = full_scan(store, already_ingested=lambda i: i.key != "train/part-r-00001")
    assert [f.key for f in found] == ["train/part-r-00001"] and skipped == []


def test_empty_objects_wait_for_content(store):
    store.write_bytes("drops/2024-08-07/part-r-00000", b"")
    first = discover(store, DiscoveryCursor())
    assert keys(first) == [] and "empty" in first.skipped[0][1]
    store.write_bytes("drops/2024-08-07/part-r-00000", b"now with content")
    assert keys(discover(store, first.cursor)) == ["drops/2024-08-07/part-r-00000"]
