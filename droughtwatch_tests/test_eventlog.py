"""The embedded instance's event log: Dagster's SQLite files, pooled, with batched writes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from droughtwatch_assets import runs
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

        original, seen = SqliteEventLogStorage.store_event, []

        def fail_second(self, event):
            seen.append(event)
            if len(seen) == 2:
                raise Boom
            return original(self, event)

        storage.store_event_batch(events * 3)
        assert len(instance.all_logs(run_id)) == before + 3 * len(events)
        # A failure part-way through a batch leaves none of it: all or nothing.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(SqliteEventLogStorage, "store_event", fail_second)
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
