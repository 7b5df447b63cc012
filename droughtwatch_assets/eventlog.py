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
  set) writes a whole batch in one transaction per database.

It is for the embedded, single-machine instance that ``droughtwatch home`` writes; deployments
use PostgreSQL (``dagster.yaml``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import sqlalchemy as db
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import create_db_conn_string
from dagster._serdes import ConfigurableClassData

BUSY_TIMEOUT_S = 30  # Dagster's own SQLITE_BUSY_TIMEOUT_SECONDS
MAX_ENGINES = 8  # the index, the runs in flight, and the ones the webserver is showing
EVENT_BATCH_SIZE = 1000


def _set_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with pooled engines and batched writes (module docstring)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        self._open = threading.local()  # shard -> connection held by store_event_batch
        self._has_index_cols: bool | None = None
        self._tables: set[str] = set()
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
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        held = getattr(self._open, "connections", None)
        if held is not None and shard in held:
            yield held[shard]  # inside store_event_batch: its transaction
            return
        with self._db_lock, self._engine(shard).connect() as conn, conn.begin():
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
        per database."""
        with self._held([event.run_id, INDEX_SHARD_NAME]):
            super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Each event as store_event stores it, all in one transaction per database."""
        with self._held(sorted({event.run_id for event in events}) + [INDEX_SHARD_NAME]):
            for event in events:
                super().store_event(event)

    def has_table(self, table_name: str) -> bool:
        # Dagster asks (with a new engine each time) on every check result; tables stay.
        if table_name not in self._tables:
            with self.index_connection() as conn:
                if db.inspect(conn).has_table(table_name):
                    self._tables.add(table_name)
        return table_name in self._tables

    def close_connections(self) -> None:
        """Close every pooled connection; the next use opens new ones."""
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def dispose(self) -> None:
        self.close_connections()
        super().dispose()
