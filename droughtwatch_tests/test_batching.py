"""How shards are split into runs: contiguous partition ranges of a bounded size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from droughtwatch_assets.pipeline.batching import (
    MIN_SHARDS_PER_PARALLEL_RUN,
    batch_id,
    batch_size,
    contiguous_batches,
)

ORDER = [f"k{i:03d}" for i in range(300)]


def test_a_lone_shard_is_a_run_of_its_own():
    assert contiguous_batches(["k007"], ORDER, max_per_run=100, parallel=2) == [["k007"]]


def test_few_shards_stay_in_one_run_many_spread_over_the_cores():
    assert batch_size(10, max_per_run=100, parallel=2) == 10
    assert batch_size(MIN_SHARDS_PER_PARALLEL_RUN * 2, max_per_run=100, parallel=2) == (
        MIN_SHARDS_PER_PARALLEL_RUN
    )
    assert batch_size(200, max_per_run=100, parallel=2) == 100  # the cap wins
    # Three runs of 100 would leave one worker idle for the last: four of 75 keep both busy.
    assert batch_size(300, max_per_run=100, parallel=2) == 75
    assert batch_size(1200, max_per_run=100, parallel=2) == 100
    assert batch_size(300, max_per_run=100, parallel=1) == 100
    batches = contiguous_batches(ORDER[:120], ORDER, max_per_run=100, parallel=2)
    assert [len(b) for b in batches] == [60, 60]


def test_batches_never_span_a_key_that_is_not_wanted():
    wanted = ["k001", "k002", "k004", "k005", "k006", "k100"]
    assert contiguous_batches(wanted, ORDER, max_per_run=100) == [
        ["k001", "k002"],
        ["k004", "k005", "k006"],
        ["k100"],
    ]


def test_a_key_without_a_partition_is_an_error():
    with pytest.raises(KeyError, match="no partition for"):
        contiguous_batches(["nope"], ORDER, max_per_run=10)


@given(
    st.sets(st.integers(0, len(ORDER) - 1), max_size=200),
    st.integers(1, 40),
    st.integers(1, 4),
)
def test_batches_cover_every_wanted_key_once_as_valid_ranges(picked, max_per_run, parallel):
    wanted = [ORDER[i] for i in picked]
    batches = contiguous_batches(wanted, ORDER, max_per_run=max_per_run, parallel=parallel)
    assert sorted(k for b in batches for k in b) == sorted(wanted)
    for batch in batches:
        assert 1 <= len(batch) <= max_per_run
        start = ORDER.index(batch[0])
        assert ORDER[start : start + len(batch)] == batch  # a contiguous partition range


def test_batch_ids_are_stable_and_name_their_content():
    assert batch_id("ingest_job", ["a@1", "b@2"]) == batch_id("ingest_job", ["b@2", "a@1"])
    assert batch_id("ingest_job", ["a@1", "b@2"]) != batch_id("ingest_job", ["a@1", "b@3"])
    assert batch_id("ingest_job", ["a@1"]) != batch_id("drop_job", ["a@1"])
