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


# The sensor's cursor as a tick stores it (the instance keeps it between ticks and across
# restarts and upgrades): its format is pinned with a literal, not round-tripped alone.
STORED_CURSOR = (
    '{"folders": ["drops/2024-08-01/", "drops/2024-08-02/"], '
    '"marks": {"drops/": "drops/2024-08-02/part-r-00000", "val/": "val/part-r-00003"}, '
    '"window": {"drops/2024-08-02/part-r-00000": "\\"etag-2\\""}}'
)


def test_the_stored_cursor_format_is_read_and_written_as_it_was():
    cursor = DiscoveryCursor.loads(STORED_CURSOR)
    assert cursor.folders == ["drops/2024-08-01/", "drops/2024-08-02/"]
    assert cursor.marks == {"drops/": "drops/2024-08-02/part-r-00000", "val/": "val/part-r-00003"}
    assert cursor.window == {"drops/2024-08-02/part-r-00000": '"etag-2"'}
    assert cursor.mark_for("val/part-r-00009") == "val/part-r-00003"
    assert cursor.mark_for("train/part-r-00000") is None
    assert cursor.dumps() == STORED_CURSOR
    for empty in (None, "", "{}"):
        assert DiscoveryCursor.loads(empty) == DiscoveryCursor({}, {}, [])
    # Fields the tick does not know yet are left alone rather than failing the sensor.
    partial = DiscoveryCursor.loads('{"marks": {"drops/": "drops/2024-08-02/part-r-00000"}}')
    assert partial == DiscoveryCursor({"drops/": "drops/2024-08-02/part-r-00000"}, {}, [])


# --- the rule's numbers, each with a literal expectation ------------------------------------


def test_a_tick_counts_every_object_it_lists(store):
    """`listed` is the tick's cost: every object it listed, shards or not."""
    for key in ("train/part-r-00000", "train/part-r-00001", "train/_SUCCESS", "val/part-r-00000"):
        store.write_bytes(key, b"x")
    first = discover(store, DiscoveryCursor())
    assert first.listed == 4 and keys(first) == ["train/part-r-00000", "train/part-r-00001",
                                                 "val/part-r-00000"]  # fmt: skip
    # Next tick: the two window folders (train/, val/) listed again, nothing after the marks.
    second = discover(store, first.cursor)
    assert second.listed == 4 and keys(second) == []
    store.write_bytes("val/part-r-00001", b"x")
    third = discover(store, second.cursor)
    assert third.listed == 5 and keys(third) == ["val/part-r-00001"]


def test_the_backlog_is_taken_max_new_objects_per_tick_across_folders(store):
    for key in ("drops/2024-08-01/part-r-00000", "train/part-r-00000", "train/part-r-00001",
                "val/part-r-00000", "val/part-r-00001"):  # fmt: skip
        store.write_bytes(key, b"x")
    first = discover(store, DiscoveryCursor(), max_new=2)
    assert keys(first) == ["drops/2024-08-01/part-r-00000", "train/part-r-00000"]
    second = discover(store, first.cursor, max_new=2)
    assert keys(second) == ["train/part-r-00001", "val/part-r-00000"]
    third = discover(store, second.cursor, max_new=2)
    assert keys(third) == ["val/part-r-00001"]
    assert keys(discover(store, third.cursor, max_new=2)) == []
    assert keys(discover(store, DiscoveryCursor(), max_new=1)) == ["drops/2024-08-01/part-r-00000"]


def test_every_reupload_in_a_window_folder_is_found_once(store):
    """Past an unchanged shard and a deeper folder's shard, a re-upload in a recent folder is
    found, on that tick only."""
    for key in ("drops/2024-08-01/a/part-r-00000", "drops/2024-08-01/part-r-00000",
                "drops/2024-08-01/part-r-00001"):  # fmt: skip
        store.write_bytes(key, b"x")
    first = discover(store, DiscoveryCursor())
    assert len(keys(first)) == 3
    store.write_bytes("drops/2024-08-01/part-r-00001", b"new content")
    second = discover(store, first.cursor)
    assert keys(second) == ["drops/2024-08-01/part-r-00001"]
    assert second.found[0].previous_version is not None
    assert keys(discover(store, second.cursor)) == []


@pytest.mark.parametrize(
    ("window", "kept"),
    [(0, []), (1, ["drops/2024-08-02/"]), (2, ["drops/2024-08-01/", "drops/2024-08-02/"])],
)
def test_the_window_keeps_the_last_folders_shards_arrived_in(store, window, kept):
    for key in ("drops/2024-07-31/part-r-00000", "drops/2024-08-01/part-r-00000",
                "drops/2024-08-02/part-r-00000"):  # fmt: skip
        store.write_bytes(key, b"x")
    cursor = discover(store, DiscoveryCursor(), window_folders=window).cursor
    assert cursor.folders == kept
    assert sorted(cursor.window) == [f"{folder}part-r-00000" for folder in kept]


def test_what_is_skipped_says_why(store):
    store.write_bytes("drops/2024-08-01/part-r-00000", b"")
    store.write_bytes("drops/2024-08-01/_SUCCESS", b"x")
    store.write_bytes("drops/2024-08-01/bad dir/part-r-00000", b"x")
    expected = [
        ("drops/2024-08-01/_SUCCESS",
         "not a shard (shard names start with 'part-' and do not end in 'gstmp')"),
        ("drops/2024-08-01/bad dir/part-r-00000",
         "shard key 'drops/2024-08-01/bad dir/part-r-00000': segment 'bad dir' is not allowed; "
         "use letters, digits, '.', '_', '=' and '-', starting with a letter or digit (no '..', "
         "no empty or hidden segments, no spaces or control characters)"),
        ("drops/2024-08-01/part-r-00000", "empty object (0 bytes); waiting for content"),
    ]  # fmt: skip
    assert sorted(discover(store, DiscoveryCursor()).skipped) == expected
    found, skipped = full_scan(store, already_ingested=lambda info: False)
    assert found == [] and sorted(skipped) == expected


def test_key_length_and_root_level_names():
    assert is_shard_name("part-r-00000")  # at the root: still a shard's name
    longest = "a/" + "p" * 510
    assert validate_shard_key(longest) == longest  # 512 characters
    with pytest.raises(InvalidShardKey, match="must be 1 to 512 characters long"):
        validate_shard_key(longest + "p")
