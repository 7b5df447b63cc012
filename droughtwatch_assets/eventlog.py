"""The embedded instance's event log: Dagster's SQLite storage, without a new engine per event.

Dagster's ``SqliteEventLogStorage`` opens a new SQLAlchemy engine and SQLite connection for every
write, and commits with ``synchronous=FULL`` (an fsync per write). A batched run writes about 13
events per shard (planned materializations, materializations, check results), each to the run's
database and again to the cross-run index: measured on this project's machines, about 25 ms per
event, most of a real-sized shard's time.

This subclass keeps the same files, tables and semantics (the webserver and daemon read them as
before) and changes only how they are opened:

- one pooled engine per database file, the most recently used ``MAX_ENGINES`` kept open;
- ``PRAGMA synchronous=NORMAL``: in WAL mode (Dagster's) a commit no longer waits for the disk;
  a power cut may lose the last events, never corrupt the database;
- ``store_event_batch`` (used by Dagster for planned events when ``DAGSTER_EVENT_BATCH_SIZE`` is
  set) writes a whole batch in one transaction per database;
- the events a run writes for each shard as it goes (a materialization per asset, a result per
  check) are buffered and written together, in one transaction per database: at the latest when
  FLUSH_EVENTS are waiting or FLUSH_AFTER_S after the first of them (a thread sees to that when
  the run goes quiet). Any other event of the process (a step's end or failure, a log line) and
  any read through this storage write the buffer first, so the order of the events and what
  this process reads are unchanged; other processes (the webserver, the command's progress bar)
  see them when they are written. A buffer that fails as one transaction is written event by
  event, as Dagster does with a failed batch: one bad event costs only itself, and its error is
  raised to the writer of the next event (or the reader), after that event is written. The
  ingest path writes the buffer before the raw reports of a chunk of shards
  (``write_buffered_events``, eight shards at a time): a report tells discovery its shard is in,
  so it never lands before the shard's events, and a run killed outright (``kill -9``) loses at
  most the events of shards whose report is not written yet, which discovery and re-execution
  then redo. A chunk's eighty ingest events cost two commits instead of a hundred and sixty,
  and two runs writing at once wait less on each other's lock on the shared index: replaying a
  150-shard run's 1,500 shard events in one process, written a shard at a time, took about
  0.5 ms per event instead of 0.9 ms written one by one, and written eight shards at a time
  0.4-0.55 ms where a shard at a time took 0.7 ms in the same runs (three runs each);
- the events a batched run writes per shard and asset (a materialization, a planned
  materialization, a check result) and per check (a planned check, one row per partition of the
  run) are written with prepared SQL on the driver's connection instead of statements SQLAlchemy
  builds and compiles for every event: the same rows in the same tables, in a quarter of the
  time. Their values come from Dagster's own helpers and its columns' own type conversions;
  ``droughtwatch_tests/test_eventlog.py`` compares every table this writes with what Dagster's
  storage writes for the same events, so a Dagster upgrade that changes them fails there. Every
  other event goes through Dagster's code unchanged.

It is for the embedded, single-machine instance that ``droughtwatch home`` writes; deployments
use PostgreSQL (``dagster.yaml``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import sqlalchemy as db
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.event_api import EventLogRecord
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import create_db_conn_string
from dagster._serdes import ConfigurableClassData
from dagster._time import datetime_from_timestamp

BUSY_TIMEOUT_S = 30  # Dagster's own SQLITE_BUSY_TIMEOUT_SECONDS
MAX_ENGINES = 8  # the index, the runs in flight, and the ones the webserver is showing
EVENT_BATCH_SIZE = 1000
# A run's buffered per-shard events are written this many at a time (more than a chunk of
# eight shards makes: the ingest path writes each chunk's itself) ...
FLUSH_EVENTS = 200
FLUSH_AFTER_S = 1.0  # ... or this long after the first of them, whichever comes first


def share_alembic_scripts() -> None:
    """Load Dagster's migration scripts once per process, not once per database touched.

    Dagster's SQLite storages check each database's schema revision when they open it, and stamp
    a new one (the run, event, index and schedule databases of a new home; each run's own event
    database): every check and stamp builds a new alembic ``ScriptDirectory`` and reads the 90
    migration scripts again, about 0.03 s a time. A fresh home's instance did that seven times,
    each run worker three to five times. One directory is now shared by every config that points
    at Dagster's scripts (its storages' alembic.ini files are the same file): they are files of
    the installed Dagster, which does not change under a running process. Any other config, and
    a subclass, is built afresh as before. Idempotent; called when this module is imported, which
    the embedded instance does before its event log storage exists, and by the command line
    before it builds any instance."""
    from alembic.script import ScriptDirectory
    from dagster._core.storage.sql import ALEMBIC_SCRIPTS_LOCATION

    original = ScriptDirectory.__dict__["from_config"]
    if getattr(original, "_droughtwatch_shared", False):
        return
    shared: list[ScriptDirectory] = []
    lock = threading.Lock()

    def from_config(cls, config):
        if cls is not ScriptDirectory or (
            config.get_main_option("script_location") != ALEMBIC_SCRIPTS_LOCATION
        ):
            return original.__func__(cls, config)
        with lock:
            if not shared:
                shared.append(original.__func__(cls, config))
            return shared[0]

    from_config._droughtwatch_shared = True  # type: ignore[attr-defined]
    ScriptDirectory.from_config = classmethod(from_config)  # type: ignore[method-assign]


share_alembic_scripts()


def _set_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _record_json(event_json: str, storage_id: int) -> str:
    """``serialize_value(EventLogRecord(storage_id, event))`` from the event's own serialization:
    serdes writes sorted keys with json's default separators (pinned by the tests), so the record
    is the event's JSON wrapped, not serialized a second time."""
    return (
        f'{{"__class__": "{EventLogRecord.__name__}", "event_log_entry": {event_json}, '
        f'"storage_id": {int(storage_id)}}}'
    )


class _Statements:
    """Prepared SQL for the fast path, with each column's SQLAlchemy bind conversion (so a
    datetime is stored exactly as SQLAlchemy stores it)."""

    def __init__(self, dialect: Any):
        self._dialect = dialect
        self._processors: dict[tuple[str, str], Any] = {}
        self._sql: dict[tuple, str] = {}

    def _process(self, table: db.Table, values: dict[str, Any]) -> list[Any]:
        out = []
        for column, value in values.items():
            key = (table.name, column)
            if key not in self._processors:
                column_type = table.c[column].type.dialect_impl(self._dialect)
                self._processors[key] = column_type.bind_processor(self._dialect)
            processor = self._processors[key]
            out.append(processor(value) if processor is not None and value is not None else value)
        return out

    def insert(self, table: db.Table, values: dict[str, Any]) -> tuple[str, list[Any]]:
        key = ("insert", table.name, *values)
        if key not in self._sql:
            columns = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            self._sql[key] = f"INSERT INTO {table.name} ({columns}) VALUES ({marks})"
        return self._sql[key], self._process(table, values)

    def update(
        self, table: db.Table, values: dict[str, Any], where: dict[str, Any]
    ) -> tuple[str, list[Any]]:
        """UPDATE ... SET values WHERE each `where` column equals its value (IS NULL for None)."""
        key = ("update", table.name, *values, "where", *((c, v is None) for c, v in where.items()))
        if key not in self._sql:
            sets = ", ".join(f"{column} = ?" for column in values)
            conditions = " AND ".join(
                f"{column} IS NULL" if value is None else f"{column} = ?"
                for column, value in where.items()
            )
            self._sql[key] = f"UPDATE {table.name} SET {sets} WHERE {conditions}"
        bound = {c: v for c, v in where.items() if v is not None}
        return self._sql[key], self._process(table, values) + self._process(table, bound)


# The events a batched run writes for every shard and asset: they take the fast path.
FAST_EVENTS = frozenset(
    {
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        DagsterEventType.ASSET_CHECK_EVALUATION,
        DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
    }
)
CHECK_EVENTS = frozenset(
    {DagsterEventType.ASSET_CHECK_EVALUATION, DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}
)
# The events a run writes for each shard as it goes (a materialization per asset, a result per
# check): buffered, then written FLUSH_EVENTS at a time (module docstring).
BUFFERED_EVENTS = frozenset(
    {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
)


def _run_asset_event(event: EventLogEntry, kinds: frozenset[DagsterEventType]) -> bool:
    """Whether `event` is one of `kinds`, written by a run (runless events take Dagster's own
    path), and about an asset (a check's asset is in its data)."""
    dagster_event = event.dagster_event
    return (
        dagster_event is not None
        and dagster_event.event_type in kinds
        and bool(event.run_id)
        and (dagster_event.asset_key is not None or dagster_event.event_type in CHECK_EVENTS)
    )


def _driver(conn: db.engine.Connection) -> sqlite3.Connection:
    """The sqlite3 connection under a SQLAlchemy one: statements on it join its transaction."""
    return conn.connection.driver_connection


def write_buffered_events(instance: Any) -> None:
    """Write now the events this process has handed to `instance` and its event log still
    buffers (the embedded instance's event log buffers a run's per-shard events); nothing to do
    for any other storage. For what must not be done before its events are in the database: the
    ingest path's last writes, the raw reports that tell discovery a shard is in (shards.py)."""
    storage = instance.event_log_storage
    if isinstance(storage, PooledSqliteEventLogStorage):
        storage.flush()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with pooled engines and batched writes (module docstring)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        self._open = threading.local()  # shard -> connection held by store_event_batch
        self._has_index_cols: bool | None = None
        self._tables: set[str] = set()
        self._statements: _Statements | None = None
        self._connections: dict[str, db.engine.Connection] = {}
        self._pending: list[EventLogEntry] = []  # buffered events, oldest first
        self._first_pending = 0.0  # when the oldest arrived (time.monotonic)
        self._flusher: threading.Thread | None = None
        self._kick = threading.Event()  # set when an event enters an empty buffer
        self._disposed = threading.Event()  # ends the flush thread
        # Dagster hands planned events (one per partition of a run) to store_event_batch only
        # when this is set; it is read at each use, so setting it here covers this process.
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
        super().__init__(base_dir, inst_data)
        # Re-entrant: store_event_batch holds it while store_event connects again.
        self._db_lock = threading.RLock()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> db.engine.Engine:
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = db.create_engine(
                create_db_conn_string(self._base_dir, shard),
                connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
            )
            db.event.listen(engine, "connect", _set_pragmas)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > MAX_ENGINES:
            oldest, evicted = self._engines.popitem(last=False)
            self._close(oldest)
            evicted.dispose()
        return engine

    def _close(self, shard: str) -> None:
        conn = self._connections.pop(shard, None)
        if conn is not None:
            conn.close()

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        """A transaction on the shard's connection, which stays open between uses (checking a
        connection out of SQLAlchemy's pool and back, with its reset, cost as much as the
        statements of a fast event). The lock keeps one thread on it at a time."""
        held = getattr(self._open, "connections", None)
        if held is not None and shard in held:
            yield held[shard]  # inside store_event_batch: its transaction
            return
        with self._db_lock:
            if held is None and self._pending:
                self.flush()  # whatever reads or writes next sees the buffered events
            engine = self._engine(shard)
            conn = self._connections.get(shard)
            if conn is None or conn.closed or conn.invalidated:
                conn = self._connections[shard] = engine.connect()
            with conn.begin():
                yield conn

    def _has_asset_key_index_cols_on_connection(self, conn: db.engine.Connection) -> bool:
        # Dagster inspects the table on every asset event; the columns never go away.
        if not self._has_index_cols:
            self._has_index_cols = super()._has_asset_key_index_cols_on_connection(conn)
        return self._has_index_cols

    @contextmanager
    def _held(self, shards: Sequence[str]) -> Iterator[None]:
        """Hold one transaction on each of `shards`: every _connect to them inside joins it."""
        held = getattr(self._open, "connections", None)
        if held is not None:
            yield  # already inside one
            return
        with self._db_lock, ExitStack() as stack:
            held = {shard: stack.enter_context(self._connect(shard)) for shard in shards}
            self._open.connections = held
            try:
                yield
            finally:
                self._open.connections = None

    def store_event(self, event: EventLogEntry) -> None:
        """Dagster's store_event (up to five statements on two databases), in one transaction
        per database; a run's per-shard events are buffered and written FLUSH_EVENTS at a
        time (at most FLUSH_AFTER_S later), every other event after the buffered ones."""
        if _run_asset_event(event, BUFFERED_EVENTS):
            with self._db_lock:
                if not self._pending:
                    self._first_pending = time.monotonic()
                    self._start_flusher()
                self._pending.append(event)
                if len(self._pending) >= FLUSH_EVENTS:
                    self.flush()
            return
        with self._db_lock:
            error = self._flush_first()
            with self._held([event.run_id, INDEX_SHARD_NAME]):
                self._store(event)
        if error is not None:
            raise error

    def _flush_first(self) -> Exception | None:
        """Write the buffer before another event; its error is the caller's to raise once that
        event is written (a bad buffered event must not cost a good one that follows)."""
        try:
            self.flush()
        except Exception as exc:
            return exc
        return None

    def flush(self) -> None:
        """Write the buffered events now, in order, one transaction per database. If that
        fails, each is written on its own, as Dagster does with a batch that fails: one bad
        event does not hold back the others, and the first error is raised once they are
        written (an event that cannot be written is lost, as it was without the buffer)."""
        with self._db_lock:
            events, self._pending = self._pending, []
            if not events:
                return
            try:
                self.store_event_batch(events)
            except Exception:
                self._store_each(events)

    def _store_each(self, events: Sequence[EventLogEntry]) -> None:
        error: Exception | None = None
        for event in events:
            try:
                with self._held([event.run_id, INDEX_SHARD_NAME]):
                    self._store(event)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def _start_flusher(self) -> None:
        """Wake (or start) the thread that writes a buffer FLUSH_AFTER_S after its first event:
        a run that stops producing events (a slow shard, a hung read) still shows what it did."""
        self._kick.set()
        if self._flusher is None or not self._flusher.is_alive():  # none yet, or forked since
            self._flusher = threading.Thread(
                target=self._flush_when_due, name="droughtwatch event flush", daemon=True
            )
            self._flusher.start()

    def _flush_when_due(self) -> None:
        while True:
            self._kick.wait()
            self._kick.clear()
            due = self._first_pending + FLUSH_AFTER_S
            while (wait := due - time.monotonic()) > 0:
                if self._disposed.wait(wait):
                    return
                due = self._first_pending + FLUSH_AFTER_S  # a flush since may have reset it
            if self._disposed.is_set():
                return
            try:
                with self._db_lock:
                    if self._pending and self._first_pending + FLUSH_AFTER_S <= time.monotonic():
                        self.flush()
            except Exception as exc:  # a thread of its own: no caller to raise to
                logging.getLogger(__name__).error("writing buffered events failed: %s", exc)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Each event as store_event stores it, all in one transaction per database."""
        with self._held(sorted({event.run_id for event in events}) + [INDEX_SHARD_NAME]):
            for event in events:
                self._store(event)

    def _store(self, event: EventLogEntry) -> None:
        if not _run_asset_event(event, FAST_EVENTS):
            super().store_event(event)
            return
        dagster_event = event.get_dagster_event()
        connections = self._open.connections
        run_db = _driver(connections[event.run_id])
        index = connections[INDEX_SHARD_NAME]
        index_db = _driver(index)
        statements = self._prepared()
        row = self._event_to_row(event)  # Dagster's row, the event serialized once
        sql, params = statements.insert(SqlEventLogStorageTable, row)
        run_db.execute(sql, params)
        event_id = index_db.execute(sql, params).lastrowid
        if dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            self._store_check_result(index_db, event, row["event"], event_id)
            return
        if dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED:
            self._store_check_planned(index_db, event, row["event"], event_id)
            return
        if self._tags_for_asset_event(event):
            self._store_asset_event_tags(index, [event], [event_id])
        has_index_cols = self._has_asset_key_index_cols_on_connection(index)
        if dagster_event.is_step_materialization:
            values: dict[str, Any] = {
                "last_materialization": _record_json(row["event"], event_id),
                "last_run_id": event.run_id,
            }
            if has_index_cols:
                values["last_materialization_timestamp"] = datetime_from_timestamp(event.timestamp)
        else:
            values = self._get_asset_entry_values(event, event_id, has_index_cols)
        if not values:
            return
        asset_key = dagster_event.asset_key.to_string()
        # Dagster inserts and updates on a unique-key error; updating first is the same row.
        sql, params = statements.update(AssetKeyTable, values, {"asset_key": asset_key})
        if index_db.execute(sql, params).rowcount == 0:
            index_db.execute(*statements.insert(AssetKeyTable, {"asset_key": asset_key, **values}))

    def _store_check_planned(
        self, index_db: sqlite3.Connection, event: EventLogEntry, event_json: str, event_id: int
    ) -> None:
        """Dagster's ``_store_asset_check_evaluation_planned``: one PLANNED row per partition
        of the run (a batch's whole range), the event serialized once, not once per row."""
        planned = event.get_dagster_event().event_specific_data
        subset = planned.partitions_subset
        row = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "partition": None,
            "run_id": event.run_id,
            "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
            "evaluation_event": event_json,
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
        }
        statements = self._prepared()
        rows = [
            statements.insert(AssetCheckExecutionsTable, {**row, "partition": partition})
            for partition in (subset.get_partition_keys() if subset else [None])
        ]
        index_db.executemany(rows[0][0], [params for _, params in rows])

    def _store_check_result(
        self, index_db: sqlite3.Connection, event: EventLogEntry, event_json: str, event_id: int
    ) -> None:
        """Dagster's ``_update_asset_check_evaluation``: the planned row becomes the result."""
        evaluation = event.get_dagster_event().asset_check_evaluation_data
        status = (
            AssetCheckExecutionRecordStatus.SUCCEEDED
            if evaluation.passed
            else AssetCheckExecutionRecordStatus.FAILED
        )
        target = evaluation.target_materialization_data
        values = {
            "execution_status": status.value,
            "evaluation_event": event_json,
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
            "materialization_event_storage_id": target.storage_id if target else None,
            "partition": evaluation.partition,
        }
        planned = {
            "asset_key": evaluation.asset_key.to_string(),
            "check_name": evaluation.check_name,
            "run_id": event.run_id,
            "partition": evaluation.partition,
        }
        statements = self._prepared()
        updated = index_db.execute(
            *statements.update(AssetCheckExecutionsTable, values, planned)
        ).rowcount
        if updated == 0:  # no planned row (Dagster: step launchers)
            updated = index_db.execute(
                *statements.insert(AssetCheckExecutionsTable, {**planned, **values})
            ).rowcount
        if updated > 1:
            raise DagsterInvariantViolationError(
                f"Updated {updated} rows for asset check evaluation {evaluation.asset_check_key} "
                "as a result of duplicate AssetCheckPlanned events."
            )

    def _prepared(self) -> _Statements:
        if self._statements is None:
            self._statements = _Statements(self._engine(INDEX_SHARD_NAME).dialect)
        return self._statements

    def has_table(self, table_name: str) -> bool:
        # Dagster asks (with a new engine each time) on every check result; tables stay.
        if table_name not in self._tables:
            with self.index_connection() as conn:
                if db.inspect(conn).has_table(table_name):
                    self._tables.add(table_name)
        return table_name in self._tables

    def close_connections(self) -> None:
        """Write the buffered events, then close every pooled connection; the next use opens
        new ones."""
        with self._db_lock:
            self.flush()
            for shard in list(self._connections):
                self._close(shard)
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def wipe(self) -> None:
        with self._db_lock:
            self._pending = []  # their runs are being deleted
        self.close_connections()  # none may go on writing to a deleted run database
        super().wipe()

    def dispose(self) -> None:
        self.close_connections()
        self._disposed.set()
        self._kick.set()
        super().dispose()
