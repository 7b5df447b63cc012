"""The monitoring database on SQLite and on a real PostgreSQL server (pgserver)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.settings import Settings


@pytest.fixture(scope="module")
def pg_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _fresh_pg_database(server_uri: str) -> str:
    name = f"m_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_uri, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return str(sa.make_url(server_uri).set(database=name).render_as_string(hide_password=False))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/nested/metrics.db"
    return _fresh_pg_database(request.getfixturevalue("pg_server_uri"))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = metricsdb.connect(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _promotion(**overrides) -> dict:
    row = {
        "model_name": "droughtwatch-baseline",
        "variant": "baseline",
        "challenger_version": "1",
        "champion_version": None,
        "promoted": True,
        "metric": "macro_f1",
        "challenger_value": 0.52,
        "champion_value": None,
        "majority_value": 0.187,
        "challenger_accuracy": 0.71,
        "majority_accuracy": 0.598,
        "margin": 0.10,
        "tolerance": 0.0,
        "reason": "promoted: no champion yet",
        "dagster_run_id": "dagster-run-1",
        "mlflow_run_id": "mlflow-run-1",
    }
    row.update(overrides)
    return row


def _monitoring(**overrides) -> dict:
    row = {
        "shard_key": "2024-08-07/part-r-00000",
        "model_name": "droughtwatch-baseline",
        "model_version": "1",
        "n_predictions": 81,
        "class_0_frac": 0.6,
        "class_1_frac": 0.2,
        "class_2_frac": 0.1,
        "class_3_frac": 0.1,
        "most_common_percentage": 60.0,
        "share_missing_values": 0.0,
        "prediction_drift": 0.05,
        "ndvi_psi": 0.01,
        "ndvi_wasserstein": 0.02,
        "ndmi_psi": 0.03,
        "ndmi_wasserstein": 0.04,
        "accuracy": None,
        "macro_f1": None,
        "dagster_run_id": "dagster-run-7",
    }
    row.update(overrides)
    return row


def test_database_url_default_and_env(tmp_path):
    env = {"DROUGHTWATCH_HOME": str(tmp_path)}
    assert metricsdb.database_url(Settings.from_env(env)) == f"sqlite:///{tmp_path}/metrics.db"
    env["DROUGHTWATCH_METRICS_DB_URL"] = "postgresql://u@h/db"
    assert metricsdb.database_url(Settings.from_env(env)) == "postgresql://u@h/db"


def test_connect_creates_the_schema_and_records_the_version(engine):
    inspector = sa.inspect(engine)
    assert {"schema_version", "promotions", "monitoring_metrics"} <= set(
        inspector.get_table_names()
    )
    with engine.connect() as conn:
        assert conn.execute(sa.select(metricsdb.schema_version.c.version)).scalars().all() == [
            metricsdb.SCHEMA_VERSION
        ]


def test_connect_twice_is_harmless(engine, db_url):
    metricsdb.record_promotion(engine, _promotion())
    again = metricsdb.connect(db_url)
    try:
        assert len(metricsdb.promotion_history(again)) == 1
        with again.connect() as conn:
            assert (
                conn.execute(
                    sa.select(sa.func.count()).select_from(metricsdb.schema_version)
                ).scalar()
                == 1
            )
    finally:
        again.dispose()


def test_record_promotion_and_history_newest_first(engine):
    t0 = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    first = metricsdb.record_promotion(engine, _promotion(recorded_at=t0))
    second = metricsdb.record_promotion(
        engine,
        _promotion(
            recorded_at=t0 + dt.timedelta(hours=1),
            challenger_version="2",
            champion_version="1",
            promoted=False,
            challenger_value=0.40,
            champion_value=0.52,
            reason="refused: macro_f1 0.4000 is worse than the champion's 0.5200",
        ),
    )
    other = metricsdb.record_promotion(
        engine, _promotion(model_name="droughtwatch-ndvi", variant="ndvi", recorded_at=t0)
    )
    assert len({first, second, other}) == 3

    history = metricsdb.promotion_history(engine, "droughtwatch-baseline")
    assert [h["id"] for h in history] == [second, first]
    newest = history[0]
    assert newest["promoted"] is False
    assert (newest["challenger_version"], newest["champion_version"]) == ("2", "1")
    assert newest["champion_value"] == pytest.approx(0.52)
    assert newest["reason"].startswith("refused")
    assert newest["recorded_at"] == t0 + dt.timedelta(hours=1)
    assert newest["recorded_at"].utcoffset() == dt.timedelta(0)
    assert history[1]["champion_version"] is None and history[1]["champion_value"] is None
    assert len(metricsdb.promotion_history(engine)) == 3


def test_recorded_at_defaults_to_now_utc(engine):
    before = dt.datetime.now(dt.UTC)
    metricsdb.record_promotion(engine, _promotion())
    (row,) = metricsdb.promotion_history(engine)
    assert before - dt.timedelta(seconds=1) <= row["recorded_at"] <= dt.datetime.now(dt.UTC)


def test_bad_rows_are_refused_with_the_column_named(engine):
    with pytest.raises(ValueError, match=r"unknown columns \['colour'\]"):
        metricsdb.record_promotion(engine, _promotion(colour="red"))
    row = _promotion()
    del row["reason"]
    with pytest.raises(ValueError, match=r"missing required columns \['reason'\]"):
        metricsdb.record_promotion(engine, row)
    with pytest.raises(ValueError, match="recorded_at must be a timezone-aware datetime"):
        metricsdb.record_promotion(engine, _promotion(recorded_at=dt.datetime(2026, 1, 1)))
    assert metricsdb.promotion_history(engine) == []


def test_upsert_monitoring_row_replaces_never_duplicates(engine):
    metricsdb.upsert_monitoring_row(engine, _monitoring())
    metricsdb.upsert_monitoring_row(
        engine, _monitoring(prediction_drift=0.31, accuracy=0.7, macro_f1=0.5, n_predictions=80)
    )
    metricsdb.upsert_monitoring_row(engine, _monitoring(model_version="2", prediction_drift=0.1))
    rows = metricsdb.monitoring_rows(engine)
    assert len(rows) == 2
    by_version = {r["model_version"]: r for r in rows}
    replaced = by_version["1"]
    assert replaced["prediction_drift"] == pytest.approx(0.31)
    assert (replaced["accuracy"], replaced["macro_f1"], replaced["n_predictions"]) == (
        pytest.approx(0.7),
        pytest.approx(0.5),
        80,
    )
    assert by_version["2"]["prediction_drift"] == pytest.approx(0.1)
    assert by_version["2"]["accuracy"] is None


def test_a_newer_schema_is_refused(db_url):
    engine = metricsdb.connect(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(metricsdb.schema_version.update().values(version=99))
    finally:
        engine.dispose()
    with pytest.raises(metricsdb.SchemaVersionError, match="schema version 99, newer than"):
        metricsdb.connect(db_url)


def test_migration_from_an_older_schema(db_url):
    # A "version 0" database: promotions without the tolerance column.
    old = sa.MetaData()
    sa.Table("schema_version", old, sa.Column("version", sa.Integer, nullable=False))
    old_columns = [
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in metricsdb.promotions.columns
        if c.name != "tolerance"
    ]
    sa.Table("promotions", old, *old_columns)
    database = sa.make_url(db_url).database
    if db_url.startswith("sqlite"):
        Path(database).parent.mkdir(parents=True)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            old.create_all(conn)
            conn.execute(sa.text("INSERT INTO schema_version (version) VALUES (0)"))
    finally:
        engine.dispose()

    with pytest.raises(metricsdb.SchemaVersionError, match="no migration from schema version 0"):
        metricsdb.connect(db_url, migrations={})

    def add_tolerance(conn: sa.Connection) -> None:
        conn.execute(
            sa.text("ALTER TABLE promotions ADD COLUMN tolerance FLOAT NOT NULL DEFAULT 0")
        )

    engine = metricsdb.connect(db_url, migrations={0: add_tolerance}, target_version=1)
    try:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("promotions")}
        assert "tolerance" in columns
        assert "monitoring_metrics" in sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(sa.select(metricsdb.schema_version.c.version)).scalar() == 1
        metricsdb.record_promotion(engine, _promotion(tolerance=0.02))
        assert metricsdb.promotion_history(engine)[0]["tolerance"] == pytest.approx(0.02)
    finally:
        engine.dispose()


def test_version_1_databases_gain_the_estimated_performance_columns(db_url):
    """A database written by schema version 1 (before CBPE and input drift) upgrades in place:
    its rows stay, with no estimate, and new rows carry one; the input_drift table appears."""
    old = sa.MetaData()
    sa.Table("schema_version", old, sa.Column("version", sa.Integer, nullable=False))
    for table in (metricsdb.promotions, metricsdb.monitoring_metrics):
        sa.Table(
            table.name,
            old,
            *[
                sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                for c in table.columns
                if not c.name.startswith("estimated_") and c.name != "moved_input"
            ],
            *[
                sa.UniqueConstraint(*c.columns.keys(), name=c.name)
                for c in list(table.constraints)
                if isinstance(c, sa.UniqueConstraint)
            ],
        )
    database = sa.make_url(db_url).database
    if db_url.startswith("sqlite"):
        Path(database).parent.mkdir(parents=True)
    engine = sa.create_engine(db_url)
    row = {
        "shard_key": "drops/2024-08-01/part-r-00000", "model_name": "droughtwatch-baseline",
        "model_version": "1", "recorded_at": dt.datetime(2024, 8, 1, tzinfo=dt.UTC),
        "n_predictions": 10, "class_0_frac": 1.0, "class_1_frac": 0.0, "class_2_frac": 0.0,
        "class_3_frac": 0.0, "most_common_percentage": 100.0, "share_missing_values": 0.0,
        "prediction_drift": 0.1, "ndvi_psi": 0.0, "ndvi_wasserstein": 0.0, "ndmi_psi": 0.0,
        "ndmi_wasserstein": 0.0, "accuracy": None, "macro_f1": None, "dagster_run_id": "r1",
    }  # fmt: skip
    try:
        with engine.begin() as conn:
            old.create_all(conn)
            conn.execute(sa.text("INSERT INTO schema_version (version) VALUES (1)"))
            conn.execute(old.tables["monitoring_metrics"].insert().values(**row))
    finally:
        engine.dispose()

    engine = metricsdb.connect(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.select(metricsdb.schema_version.c.version)).scalar() == 2
        [kept] = metricsdb.monitoring_rows(engine)
        assert kept["shard_key"] == row["shard_key"] and kept["estimated_accuracy"] is None
        assert kept["moved_input"] is None
        assert "input_drift" in sa.inspect(engine).get_table_names()
        metricsdb.upsert_monitoring_row(
            engine, {**row, "model_version": "2", "estimated_accuracy": 0.7,
                     "estimated_macro_f1": 0.5}  # fmt: skip
        )
        new = [r for r in metricsdb.monitoring_rows(engine) if r["model_version"] == "2"]
        assert new[0]["estimated_accuracy"] == pytest.approx(0.7)
    finally:
        engine.dispose()
