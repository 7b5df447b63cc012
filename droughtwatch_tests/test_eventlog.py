"""The embedded instance's event log: Dagster's SQLite files, pooled, with batched writes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from alembic.script import ScriptDirectory
from dagster._core.event_api import EventLogRecord
from dagster._core.events import (
    AssetCheckEvaluationPlanned,
    AssetMaterializationPlannedData,
    DagsterEvent,
    StepMaterializationData,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.execution.plan.objects import StepSuccessData
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite import sqlite_run_storage
from dagster._core.storage.sql import get_alembic_config
from dagster._serdes import serialize_value

from droughtwatch_assets import eventlog, runs
from droughtwatch_assets.eventlog import PooledSqliteEventLogStorage

parts = dg.StaticPartitionsDefinition([f"p{i}" for i in range(5)])


@dg.asset(
    partitions_def=parts,
    check_specs=[dg.AssetCheckSpec("positive", asset="numbers")],
)
def numbers(context):
    yield dg.MaterializeResult(metadata={"value": int(context.partition_key[1:])})
    yield dg.AssetCheckResult(check_name="positive", passed=context.partition_key != "p3")


def _instance(home: Path) -> dg.DagsterInstance:
    runs_dir = home / "history" / "runs"
    (home / "dagster.yaml").write_text(
        "event_log_storage:\n"
        "  module: droughtwatch_assets.eventlog\n"
        "  class: PooledSqliteEventLogStorage\n"
        f"  config:\n    base_dir: {str(runs_dir)!r}\n"
    )
    return dg.DagsterInstance.from_config(str(home))


def test_runs_record_the_same_events_dagsters_own_storage_reads(tmp_path):
    with _instance(tmp_path) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        for key in parts.get_partition_keys():
            result = dg.materialize([numbers], instance=instance, partition_key=key,
                                    raise_on_error=False)  # fmt: skip
            assert result.success
        instance.event_log_storage.close_connections()  # then write again: it reopens
        assert dg.materialize([numbers], instance=instance, partition_key="p4").success
        written = instance.get_materialized_partitions(dg.AssetKey("numbers"))
        run_ids = [r.run_id for r in instance.get_runs()]
        [p3_run] = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": "p3"}))

    # What the webserver of a default instance would read from the same files.
    plain = SqliteEventLogStorage(str(tmp_path / "history" / "runs"))
    assert written == set(parts.get_partition_keys())
    assert plain.get_materialized_partitions(dg.AssetKey("numbers")) == written
    for run_id in run_ids:
        types = {e.dagster_event.event_type for e in plain.get_logs_for_run(run_id)
                 if e.dagster_event}  # fmt: skip
        assert dg.DagsterEventType.ASSET_MATERIALIZATION in types
        assert dg.DagsterEventType.RUN_SUCCESS in types
    executions = plain.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("numbers"), "positive"), limit=10
    )
    assert len(executions) == 6
    failed = [e for e in executions if not e.event.dagster_event.event_specific_data.passed]
    assert [e.run_id for e in failed] == [p3_run.run_id]
    plain.dispose()


def test_progress_reads_the_partitions_materialized_since_its_last_look(tmp_path):
    with _instance(tmp_path) as instance:
        tags = {runs.RANGE_START: "p0", runs.RANGE_END: "p2"}
        first = dg.materialize([shard_like_numbers], instance=instance, tags=tags).run_id
        other = dg.materialize([numbers], instance=instance, partition_key="p4").run_id
        found, cursor = runs.materialized_since(instance, first, None)
        assert found == {"p0", "p1", "p2"}  # not p4, another run's
        assert runs.materialized_since(instance, first, cursor) == (set(), cursor)
        assert runs.materialized_since(instance, other, None)[0] == {"p4"}


@dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
def shard_like_numbers():
    return dg.MaterializeResult()  # one materialization per partition of the run's range


def test_a_batch_is_one_transaction_per_database(tmp_path):
    with _instance(tmp_path) as instance:
        result = dg.materialize([numbers], instance=instance, partition_key="p0")
        run_id = result.run_id
        storage = instance.event_log_storage
        events = [
            e for e in instance.all_logs(run_id)
            if e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        ]  # fmt: skip
        before = len(instance.all_logs(run_id))

        class Boom(Exception):
            pass

        original, seen = PooledSqliteEventLogStorage._store, []

        def fail_second(self, event):
            seen.append(event)
            if len(seen) == 2:
                raise Boom
            return original(self, event)

        storage.store_event_batch(events * 3)
        assert len(instance.all_logs(run_id)) == before + 3 * len(events)
        # A failure part-way through a batch leaves none of it: all or nothing.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(PooledSqliteEventLogStorage, "_store", fail_second)
            with pytest.raises(Boom):
                storage.store_event_batch(events * 3)
        assert len(instance.all_logs(run_id)) == before + 3 * len(events)


def test_droughtwatch_home_writes_the_pooled_log_and_keeps_a_users_own_file(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    runs.prepare_dagster_home()
    written = (home / "dagster.yaml").read_text()
    assert written.startswith(runs.EMBEDDED_HEADER)
    assert "PooledSqliteEventLogStorage" in written
    assert str(home / "history" / "runs") in written
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)

    (home / "dagster.yaml").write_text(written.replace("max_concurrent_runs", "#"))
    runs.prepare_dagster_home()  # still ours (first line kept): rewritten
    assert (home / "dagster.yaml").read_text() == written

    mine = "telemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(mine)
    runs.prepare_dagster_home()  # the user's own: left alone
    assert (home / "dagster.yaml").read_text() == mine


# --- the fast path writes what Dagster writes

shard_parts = dg.StaticPartitionsDefinition([f"s{i}" for i in range(4)])


@dg.multi_asset(
    specs=[dg.AssetSpec("raw", partitions_def=shard_parts, skippable=True),
           dg.AssetSpec("clean", deps=["raw"], partitions_def=shard_parts, skippable=True)],
    check_specs=[dg.AssetCheckSpec("valid", asset="raw", blocking=True),
                 dg.AssetCheckSpec("kept", asset="clean")],
    partitions_def=shard_parts,
    can_subset=True,
    backfill_policy=dg.BackfillPolicy.single_run(),
)  # fmt: skip
def shard_like(context):
    """What process_shards yields: per-partition materializations and check results."""
    for key in context.partition_keys:
        bad = key == "s2"
        yield dg.AssetMaterialization("raw", partition=key, metadata={"records": 81})
        yield dg.AssetCheckEvaluation(asset_key=dg.AssetKey("raw"), check_name="valid",
                                      passed=not bad, partition=key, blocking=True,
                                      description="record 3 bad" if bad else None)  # fmt: skip
        if not bad:
            yield dg.AssetMaterialization("clean", partition=key, metadata={"kept": 79})
            yield dg.AssetCheckEvaluation(asset_key=dg.AssetKey("clean"), check_name="kept",
                                          passed=True, partition=key,
                                          severity=dg.AssetCheckSeverity.WARN)  # fmt: skip


@dg.asset(check_specs=[dg.AssetCheckSpec("nonempty", asset="summary")])
def summary():
    yield dg.MaterializeResult(metadata={"rows": 3})
    yield dg.AssetCheckResult(check_name="nonempty", passed=True)


WRITE_TIMES = {"create_timestamp", "migration_completed"}  # SQLite's clock at the write


def _tables(base: Path) -> dict[str, list[tuple]]:
    """Every row of every table in every database under `base`, run databases named by order of
    first event, without the columns SQLite fills with the time of the write."""
    dumped: dict[str, list[tuple]] = {}
    for path in sorted(base.glob("*.db")):
        conn = sqlite3.connect(path)
        name = "index" if path.stem == "index" else "run"
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')
                       if row[1] not in WRITE_TIMES]  # fmt: skip
            listed = ", ".join(f'"{column}"' for column in columns)
            rows = conn.execute(f'SELECT {listed} FROM "{table}" ORDER BY 1').fetchall()
            dumped.setdefault(f"{name}.{table}", []).extend(rows)
        conn.close()
    return dumped


def _entry(run_id: str, kind: dg.DagsterEventType, data) -> EventLogEntry:
    return EventLogEntry(
        error_info=None, level=10, user_message="", run_id=run_id, timestamp=time.time(),
        dagster_event=DagsterEvent(kind.value, job_name="ingest_job", event_specific_data=data),
    )  # fmt: skip


def _replayed_events(tmp_path: Path) -> list[list[EventLogEntry]]:
    """The events of real runs (a range run like a CLI batch with a failed blocking check, single
    partitions with data-version tags, an unpartitioned check), grouped as Dagster stored them:
    planned events in batches, the rest one at a time."""
    with dg.DagsterInstance.ephemeral() as instance:
        range_run = dg.materialize([shard_like], instance=instance, raise_on_error=False,
                                   tags={runs.RANGE_START: "s0", runs.RANGE_END: "s3"})  # fmt: skip
        assert not range_run.success  # s2's blocking check failed
        run_ids = [range_run.run_id]
        for key in ("s1", "s3"):
            run_ids.append(
                dg.materialize([shard_like], instance=instance, partition_key=key).run_id
            )
        run_ids.append(dg.materialize([summary], instance=instance).run_id)
        groups: list[list[EventLogEntry]] = []
        planned = {dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                   dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}  # fmt: skip
        for run_id in run_ids:
            events = instance.all_logs(run_id)
            groups.append([e for e in events if e.dagster_event_type in planned])
            groups.extend([e] for e in events if e.dagster_event_type not in planned)
    # A CLI batch's run plans its checks per partition (runs.create_run): results update those
    # rows, partition by partition. A result with no planned row is inserted (Dagster: step
    # launchers).
    batch_run = "b0a1c2d3-0000-4000-8000-000000000000"
    planned_rows = AssetCheckEvaluationPlanned(
        asset_key=dg.AssetKey("raw"), check_name="valid",
        partitions_subset=shard_parts.subset_with_partition_keys(["s0", "s1", "s2"]),
    )  # fmt: skip
    groups.append([
        _entry(batch_run, dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, planned_rows),
        _entry(batch_run, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
               AssetMaterializationPlannedData(dg.AssetKey("raw"), partition="s0")),
    ])  # fmt: skip
    for key, passed in (("s0", True), ("s2", False), ("s3", True)):  # s3 was not planned
        result = dg.AssetCheckEvaluation(asset_key=dg.AssetKey("raw"), check_name="valid",
                                         passed=passed, partition=key)  # fmt: skip
        groups.append([_entry(batch_run, dg.DagsterEventType.ASSET_CHECK_EVALUATION, result)])
    return groups


def test_the_fast_path_writes_the_rows_dagsters_storage_writes(tmp_path):
    groups = _replayed_events(tmp_path)
    kinds = {e.dagster_event_type for group in groups for e in group}
    assert kinds >= eventlog.FAST_EVENTS
    theirs = SqliteEventLogStorage(str(tmp_path / "dagster"))
    ours = PooledSqliteEventLogStorage(str(tmp_path / "ours"))
    slow: list[dg.DagsterEventType] = []  # what went through Dagster's own store_event
    original = SqliteEventLogStorage.store_event

    def watched(self, event):
        if isinstance(self, PooledSqliteEventLogStorage):
            slow.append(event.dagster_event_type)
        return original(self, event)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SqliteEventLogStorage, "store_event", watched)
        for group in groups:
            for storage in (theirs, ours):
                if len(group) > 1:
                    storage.store_event_batch(group)
                elif group:
                    storage.store_event(group[0])
    assert slow and not set(slow) & eventlog.FAST_EVENTS
    theirs.dispose()
    ours.dispose()
    expected, written = _tables(tmp_path / "dagster"), _tables(tmp_path / "ours")
    assert written.keys() == expected.keys()
    for table in expected:
        assert written[table] == expected[table], table
    # The compared rows cover each way a result lands: the batch's planned rows updated one
    # partition at a time (s1 never reported), a result with no planned row inserted.
    batch = {row[3]: row[5] for row in expected["index.asset_check_executions"]
             if row[4] == "b0a1c2d3-0000-4000-8000-000000000000"}  # fmt: skip
    assert batch == {"s0": "SUCCEEDED", "s1": "PLANNED", "s2": "FAILED", "s3": "SUCCEEDED"}
    assert [row[3] for row in expected["index.asset_event_tags"]] == ["dagster/data_version"]
    assert len(expected["index.asset_keys"]) == 3


def test_a_last_materialization_is_the_events_own_json_wrapped():
    event = EventLogEntry(
        error_info=None, level=10, user_message="", run_id="r", timestamp=1_700_000_000.25,
        dagster_event=DagsterEvent(
            dg.DagsterEventType.ASSET_MATERIALIZATION.value, job_name="j",
            event_specific_data=StepMaterializationData(
                dg.AssetMaterialization("raw", partition="s0",
                                        metadata={"path": dg.MetadataValue.path("/x"), "n": 1.5})
            ),
        ),
    )  # fmt: skip
    record = EventLogRecord(storage_id=1234, event_log_entry=event)
    assert eventlog._record_json(serialize_value(event), 1234) == serialize_value(record)


# --- a run's per-shard events are buffered, then written many at a time

RUN = "c0ffee00-0000-4000-8000-000000000000"


def _shard_events(count: int) -> list[EventLogEntry]:
    """What a batch writes as it goes: a materialization and a check result per shard."""
    events = []
    for n in range(count):
        mat = StepMaterializationData(dg.AssetMaterialization("raw", partition=f"s{n}"))
        result = dg.AssetCheckEvaluation(asset_key=dg.AssetKey("raw"), check_name="valid",
                                         passed=n != 1, partition=f"s{n}")  # fmt: skip
        events.append(_entry(RUN, dg.DagsterEventType.ASSET_MATERIALIZATION, mat))
        events.append(_entry(RUN, dg.DagsterEventType.ASSET_CHECK_EVALUATION, result))
    return events


def _on_disk(base: Path, run_id: str = RUN) -> list[str]:
    """The event types in the run's database file, in storage order, as another process (the
    webserver, the command's progress bar) reads them."""
    path = base / f"{run_id}.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT dagster_event_type FROM event_logs ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # created, no table yet
        rows = []
    conn.close()
    return [row[0] for row in rows]


def _step_success() -> EventLogEntry:
    return _entry(RUN, dg.DagsterEventType.STEP_SUCCESS, StepSuccessData(duration_ms=1.0))


@pytest.fixture
def slow_timer(monkeypatch):
    """No timed flush during the test: what is written is what the sizes and reads flushed."""
    monkeypatch.setattr(eventlog, "FLUSH_AFTER_S", 3600.0)


def test_shard_events_wait_in_a_buffer_and_a_read_in_the_process_sees_them(tmp_path, slow_timer):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    events = _shard_events(3)
    for event in events:
        storage.store_event(event)
    assert _on_disk(tmp_path) == []  # not written yet: no commit per event
    # Any read through the storage (Dagster's own, or a check's) writes them first.
    assert len(storage.get_logs_for_run(RUN)) == len(events)
    assert _on_disk(tmp_path) == [e.dagster_event_type.value for e in events]
    storage.dispose()


def test_a_full_buffer_and_any_other_event_write_the_buffer_in_order(tmp_path, slow_timer):
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    events = _shard_events(eventlog.FLUSH_EVENTS // 2)  # exactly FLUSH_EVENTS events
    for event in events[:-1]:
        storage.store_event(event)
    assert _on_disk(tmp_path) == []
    storage.store_event(events[-1])
    assert len(_on_disk(tmp_path)) == eventlog.FLUSH_EVENTS
    storage.store_event(events[0])
    storage.store_event(_step_success())  # a step's end: the buffer goes first
    assert _on_disk(tmp_path)[-2:] == [events[0].dagster_event_type.value, "STEP_SUCCESS"]
    storage.dispose()


def test_a_run_that_goes_quiet_is_written_within_the_flush_delay(tmp_path, monkeypatch):
    monkeypatch.setattr(eventlog, "FLUSH_AFTER_S", 0.05)
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    events = _shard_events(2)
    for event in events:
        storage.store_event(event)  # then nothing more: a slow shard, a hung read
    deadline = time.monotonic() + 10
    while len(_on_disk(tmp_path)) < len(events) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_on_disk(tmp_path)) == len(events)
    storage.dispose()
    storage._flusher.join(5)  # noqa: SLF001
    assert not storage._flusher.is_alive()  # noqa: SLF001 (disposing ends the flush thread)


def test_one_event_that_cannot_be_written_does_not_hold_back_the_others(tmp_path, slow_timer):
    """As Dagster does with a batch that fails: each event on its own, the error raised where
    Dagster writes (a bad event was lost without the buffer too), the others all written."""
    storage = PooledSqliteEventLogStorage(str(tmp_path))
    events = _shard_events(3)
    bad = events[2]
    for event in events:
        storage.store_event(event)

    class Bad(Exception):
        pass

    original = PooledSqliteEventLogStorage._store

    def refuse_one(self, event):
        if event is bad:
            raise Bad("cannot be written")
        return original(self, event)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PooledSqliteEventLogStorage, "_store", refuse_one)
        with pytest.raises(Bad):
            storage.store_event(_step_success())  # a step's end writes the buffer first
        storage.store_event(_step_success())  # the bad one is not tried again
    kinds = [e.dagster_event_type.value for e in events]
    assert _on_disk(tmp_path) == kinds[:2] + kinds[3:] + ["STEP_SUCCESS"] * 2
    storage.dispose()


def test_a_fresh_home_reads_dagsters_migration_scripts_once(tmp_path: Path):
    """Dagster checks or stamps the schema revision of every database it opens, each time from a
    new alembic ScriptDirectory that reads all the migration scripts again: a fresh home's
    instance and a run's own database read them once per process here, and every database is
    stamped at Dagster's head revision as before."""
    script = """
import sqlite3, sys
from pathlib import Path
from alembic.script import ScriptDirectory
loads = []
real = ScriptDirectory._load_revisions
def counted(self):
    loads.append(1)
    return real(self)
ScriptDirectory._load_revisions = counted
from droughtwatch_assets import eventlog, runs
eventlog.share_alembic_scripts()  # installing it twice changes nothing
inst = runs.instance()
with inst.event_log_storage.run_connection("a-run-id"):  # a run's own database
    pass
for db in sorted(Path(sys.argv[1]).rglob("*.db")):
    [(rev,)] = sqlite3.connect(db).execute("select version_num from alembic_version").fetchall()
    print(db.name, rev)
print("loads", len(loads))
"""
    env = {
        **os.environ,
        "DROUGHTWATCH_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    lines = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    head = ScriptDirectory.from_config(get_alembic_config(sqlite_run_storage.__file__))
    revision = head.as_revision_number("head")
    assert sorted(lines[:-1]) == sorted(
        f"{name} {revision}" for name in ("runs.db", "schedules.db", "index.db", "a-run-id.db")
    )
    assert lines[-1] == "loads 1"  # not once per check or stamp: seven times for these four


def test_only_dagsters_migration_scripts_are_shared(tmp_path: Path):
    """Dagster's script directory is built once; another project's, or a subclass's, afresh."""
    from alembic.config import Config

    eventlog.share_alembic_scripts()
    dagsters = get_alembic_config(sqlite_run_storage.__file__)
    assert ScriptDirectory.from_config(dagsters) is ScriptDirectory.from_config(dagsters)

    class Other(ScriptDirectory):
        pass

    assert Other.from_config(dagsters) is not Other.from_config(dagsters)
    (tmp_path / "versions").mkdir()
    other = Config()
    other.set_main_option("script_location", str(tmp_path))
    assert ScriptDirectory.from_config(other) is not ScriptDirectory.from_config(other)
