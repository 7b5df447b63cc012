"""The monitoring database: promotion history and per-shard monitoring metrics (SQLAlchemy Core).

One schema for SQLite (the embedded default under DROUGHTWATCH_HOME) and PostgreSQL
(``DROUGHTWATCH_METRICS_DB_URL``); :func:`connect` creates and migrates it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

DEFAULT_FILENAME = "metrics.db"
SCHEMA_VERSION = 2


class _Settings(Protocol):  # droughtwatch_assets.settings.Settings, or anything shaped like it
    home: Path
    metrics_db_url: str | None


class SchemaVersionError(RuntimeError):
    """The database was written by a newer droughtwatch, or no migration path exists."""


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on the way in and out, also on SQLite (which stores no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

promotions = sa.Table(
    "promotions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("recorded_at", UTCDateTime, nullable=False, default=_utcnow),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("variant", sa.String(255), nullable=False),
    sa.Column("challenger_version", sa.String(64), nullable=False),
    # The champion before the decision: None for the first model of a variant.
    sa.Column("champion_version", sa.String(64), nullable=True),
    sa.Column("promoted", sa.Boolean, nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("challenger_value", sa.Float, nullable=False),
    sa.Column("champion_value", sa.Float, nullable=True),
    sa.Column("majority_value", sa.Float, nullable=False),
    sa.Column("challenger_accuracy", sa.Float, nullable=False),
    sa.Column("majority_accuracy", sa.Float, nullable=False),
    sa.Column("margin", sa.Float, nullable=False),
    sa.Column("tolerance", sa.Float, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),
    sa.Column("mlflow_run_id", sa.String(64), nullable=False),
    sa.Index("ix_promotions_model_recorded", "model_name", "recorded_at"),
)

MONITORING_KEY = ("shard_key", "model_name", "model_version")


def _scoring_columns() -> list[sa.Column]:
    """What identifies one scoring of a shard (MONITORING_KEY), with its id and time."""
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("shard_key", sa.String(255), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False, default=_utcnow),
    ]


monitoring_metrics = sa.Table(
    "monitoring_metrics",
    metadata,
    *_scoring_columns(),
    sa.Column("n_predictions", sa.Integer, nullable=False),
    sa.Column("class_0_frac", sa.Float, nullable=False),
    sa.Column("class_1_frac", sa.Float, nullable=False),
    sa.Column("class_2_frac", sa.Float, nullable=False),
    sa.Column("class_3_frac", sa.Float, nullable=False),
    sa.Column("most_common_percentage", sa.Float, nullable=False),
    sa.Column("share_missing_values", sa.Float, nullable=False),
    sa.Column("prediction_drift", sa.Float, nullable=False),
    sa.Column("ndvi_psi", sa.Float, nullable=False),
    sa.Column("ndvi_wasserstein", sa.Float, nullable=False),
    sa.Column("ndmi_psi", sa.Float, nullable=False),
    sa.Column("ndmi_wasserstein", sa.Float, nullable=False),
    # Only known when the shard carries labels.
    sa.Column("accuracy", sa.Float, nullable=True),
    sa.Column("macro_f1", sa.Float, nullable=True),
    # What the calibrated probabilities expect accuracy and macro F1 to be (CBPE), labels or not
    # (schema version 2; NULL on rows written before).
    sa.Column("estimated_accuracy", sa.Float, nullable=True),
    sa.Column("estimated_macro_f1", sa.Float, nullable=True),
    # The input that moved most (table input_drift has every input), NULL when none did.
    sa.Column("moved_input", sa.String(64), nullable=True),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),
    sa.UniqueConstraint(*MONITORING_KEY, name="uq_monitoring_shard_model_version"),
)

# Drift of every input the model reads, one row per shard, model version and input: PSI and
# Wasserstein distance of the per-image means of each band and index, and the shift of each
# data-quality share (blank, cloudy, EVI-guarded) from the training reference (schema 2).
input_drift = sa.Table(
    "input_drift",
    metadata,
    *_scoring_columns(),
    sa.Column("feature", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # input or quality
    sa.Column("psi", sa.Float, nullable=True),
    sa.Column("wasserstein", sa.Float, nullable=True),
    sa.Column("shard_value", sa.Float, nullable=True),
    sa.Column("reference_value", sa.Float, nullable=True),
    sa.Column("shift", sa.Float, nullable=True),
    sa.UniqueConstraint(*MONITORING_KEY, "feature", name="uq_input_drift"),
)

Migration = Callable[[sa.Connection], None]

# MIGRATIONS[v] upgrades a database from schema version v to v + 1, inside the transaction
# that then records v + 1. Tables new in a version need no migration: create_all adds them.
def _add_estimated_performance(conn: sa.Connection) -> None:
    for column in ("estimated_accuracy", "estimated_macro_f1"):
        conn.execute(sa.text(f"ALTER TABLE monitoring_metrics ADD COLUMN {column} FLOAT"))
    conn.execute(sa.text("ALTER TABLE monitoring_metrics ADD COLUMN moved_input VARCHAR(64)"))


MIGRATIONS: dict[int, Migration] = {1: _add_estimated_performance}


def database_url(settings: _Settings) -> str:
    """``DROUGHTWATCH_METRICS_DB_URL`` when set, else ``$DROUGHTWATCH_HOME/metrics.db`` (SQLite)."""
    return settings.metrics_db_url or f"sqlite:///{settings.home}/{DEFAULT_FILENAME}"


def _stored_version(conn: sa.Connection) -> int | None:
    if not sa.inspect(conn).has_table(schema_version.name):
        return None
    versions = conn.execute(sa.select(schema_version.c.version)).scalars().all()
    if len(versions) != 1:
        raise SchemaVersionError(
            f"table schema_version must hold exactly one row, found {len(versions)}"
        )
    return int(versions[0])


def _set_version(conn: sa.Connection, version: int) -> None:
    conn.execute(schema_version.delete())
    conn.execute(schema_version.insert().values(version=version))


def _prepare(
    conn: sa.Connection, url: str, target: int, migrations: Mapping[int, Migration]
) -> None:
    if conn.dialect.name == "postgresql":
        # Serialise concurrent first connections (several Dagster steps at once); released at
        # commit. The key is arbitrary but fixed.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(727100001)"))
    stored = _stored_version(conn)
    if stored is None:
        metadata.create_all(conn)
        _set_version(conn, target)
        return
    if stored > target:
        raise SchemaVersionError(
            f"metrics database {sa.make_url(url).render_as_string(hide_password=True)} has "
            f"schema version {stored}, newer than this droughtwatch's {target}: "
            "upgrade droughtwatch (downgrades are not supported)"
        )
    for version in range(stored, target):
        if version not in migrations:
            raise SchemaVersionError(f"no migration from schema version {version} to {version + 1}")
        migrations[version](conn)
    metadata.create_all(conn)  # checkfirst: only tables that do not exist yet
    if stored != target:
        _set_version(conn, target)


def connect(
    url: str,
    *,
    migrations: Mapping[int, Migration] = MIGRATIONS,
    target_version: int = SCHEMA_VERSION,
) -> sa.Engine:
    """An engine on ``url`` whose schema is created or migrated to ``target_version``.

    Raises :class:`SchemaVersionError` for a database written by a newer schema version.
    ``migrations`` and ``target_version`` exist for tests of the migration mechanism.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        try:
            with engine.begin() as conn:
                _prepare(conn, url, target_version, migrations)
        except (sa.exc.OperationalError, sa.exc.IntegrityError):
            # SQLite runs DDL outside transactions: two processes creating the schema at once
            # can collide ("table already exists"); the second pass sees the finished schema.
            if engine.dialect.name != "sqlite":
                raise
            with engine.begin() as conn:
                _prepare(conn, url, target_version, migrations)
    except Exception:
        engine.dispose()
        raise
    return engine


def _checked_row(table: sa.Table, row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(row) - set(table.c.keys()))
    if unknown:
        raise ValueError(f"{table.name}: unknown columns {unknown}")
    missing = sorted(
        c.name
        for c in table.columns
        if not c.nullable and c.default is None and not c.primary_key and c.name not in row
    )
    if missing:
        raise ValueError(f"{table.name}: missing required columns {missing}")
    values = dict(row)
    if "recorded_at" in table.c:
        when = values.get("recorded_at")
        if when is None:
            values["recorded_at"] = _utcnow()
        elif not isinstance(when, dt.datetime) or when.tzinfo is None:
            raise ValueError(
                f"{table.name}: recorded_at must be a timezone-aware datetime, got {when!r}"
            )
    return values


def record_promotion(engine: sa.Engine, row: Mapping[str, Any]) -> int:
    """Store one promotion decision (promoted or refused); returns its id."""
    values = _checked_row(promotions, row)
    values.pop("id", None)
    with engine.begin() as conn:
        result = conn.execute(promotions.insert().values(**values))
        return int(result.inserted_primary_key[0])


def promotion_history(engine: sa.Engine, model_name: str | None = None) -> list[dict[str, Any]]:
    """Every recorded decision, newest first; only ``model_name``'s when given."""
    query = sa.select(promotions).order_by(promotions.c.recorded_at.desc(), promotions.c.id.desc())
    if model_name is not None:
        query = query.where(promotions.c.model_name == model_name)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def upsert_monitoring_row(
    engine: sa.Engine, row: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Insert or replace the row for (shard_key, model_name, model_version), and with `inputs`
    its input_drift rows, in one transaction: never duplicates, never half written."""
    values = _checked_row(monitoring_metrics, row)
    values.pop("id", None)
    updates = {k: v for k, v in values.items() if k not in MONITORING_KEY}
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if inputs:
            key = sa.and_(*(input_drift.c[k] == values[k] for k in MONITORING_KEY))
            conn.execute(input_drift.delete().where(key))
            conn.execute(
                input_drift.insert(),
                [
                    _checked_row(input_drift, {
                        **{k: values[k] for k in MONITORING_KEY},
                        "recorded_at": values.get("recorded_at") or _utcnow(),
                        **r,
                    })
                    for r in inputs
                ],
            )  # fmt: skip
        if dialect in ("sqlite", "postgresql"):
            insert = (sqlite if dialect == "sqlite" else postgresql).insert(monitoring_metrics)
            conn.execute(
                insert.values(**values).on_conflict_do_update(
                    index_elements=list(MONITORING_KEY), set_=updates
                )
            )
            return
        # Other backends: replace inside one transaction.
        key = sa.and_(*(monitoring_metrics.c[k] == values[k] for k in MONITORING_KEY))
        conn.execute(monitoring_metrics.delete().where(key))
        conn.execute(monitoring_metrics.insert().values(**values))


def input_drift_rows(engine: sa.Engine, shard_key: str) -> list[dict[str, Any]]:
    """A shard's input_drift rows (every model version), the most moved first."""
    query = (
        sa.select(input_drift)
        .where(input_drift.c.shard_key == shard_key)
        .order_by(input_drift.c.model_version, input_drift.c.psi.desc().nulls_last())
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def monitoring_rows(engine: sa.Engine, model_name: str | None = None) -> list[dict[str, Any]]:
    """Monitoring rows in recording order (oldest first); only ``model_name``'s when given."""
    query = sa.select(monitoring_metrics).order_by(
        monitoring_metrics.c.recorded_at, monitoring_metrics.c.id
    )
    if model_name is not None:
        query = query.where(monitoring_metrics.c.model_name == model_name)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
