"""The Grafana provisioning under docker/grafana: its structure, and every panel's and the alert's
SQL run against a real PostgreSQL (pgserver) holding rows that ``core.drift.monitoring_row`` built.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from droughtwatch_assets.adapters import metricsdb
from droughtwatch_assets.core.drift import (
    TRAINING_LABEL_FRACTIONS,
    monitoring_row,
    reference_profile,
)
from droughtwatch_assets.pipeline.monitoring import drift_by_drop_date

GRAFANA = Path(__file__).resolve().parents[1] / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "droughtwatch-monitoring.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "droughtwatch.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "droughtwatch.yaml"
ALERTS = GRAFANA / "provisioning" / "alerting" / "droughtwatch-alerts.yaml"
CONTACT_POINT = GRAFANA / "provisioning" / "alerting" / "droughtwatch-contact-point.yaml"

PANEL_TITLES = {
    "Predicted class fractions",
    "Prediction drift",
    "Feature drift",
    "Accuracy where labels exist",
    "Processed shards",
    "Drift by drop date",
    "Estimated and measured performance by drop date",
    "Which input moved",
}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels() -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in _dashboard()["panels"]}


def _datasource() -> dict[str, Any]:
    (source,) = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    return source


def _alert_rule() -> dict[str, Any]:
    (group,) = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    (rule,) = group["rules"]
    return rule


def _alert_query(rule: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in rule["data"] if d["datasourceUid"] != "__expr__")


def _alert_threshold(rule: dict[str, Any]) -> float:
    condition = next(d for d in rule["data"] if d["refId"] == rule["condition"])
    assert condition["model"]["type"] == "threshold"
    (evaluator,) = [c["evaluator"] for c in condition["model"]["conditions"]]
    assert evaluator["type"] == "gt"
    return float(evaluator["params"][0])


# ---- structure ---------------------------------------------------------------------------------


def test_datasource_is_postgres_from_environment():
    source = _datasource()
    assert source["name"] == source["uid"] == "droughtwatch-metrics"
    assert source["type"] == "grafana-postgresql-datasource"
    assert source["url"] == "${DROUGHTWATCH_PG_HOST}"
    assert source["user"] == "${DROUGHTWATCH_PG_USER}"
    assert source["jsonData"]["database"] == "${DROUGHTWATCH_PG_DATABASE}"
    assert source["secureJsonData"]["password"] == "${DROUGHTWATCH_PG_PASSWORD}"


def test_dashboard_provider_reads_the_mounted_folder():
    (provider,) = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_is_raw_sql_on_the_provisioned_source():
    uid = _datasource()["uid"]
    panels = _panels()
    assert set(panels) == PANEL_TITLES
    assert len({p["id"] for p in panels.values()}) == len(panels)
    for title, panel in panels.items():
        assert panel["datasource"]["uid"] == uid, title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, title
            assert target["rawQuery"] is True, title
            assert "monitoring_metrics" in target["rawSql"], title
            assert "$__timeFilter(recorded_at)" in target["rawSql"], title
            expected = "time_series" if panel["type"] == "timeseries" else "table"
            assert target["format"] == expected, title


def test_prediction_drift_panel_thresholds():
    steps = _panels()["Prediction drift"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [
        (None, "green"),
        (0.2, "orange"),
        (0.3, "red"),
    ]
    custom = _panels()["Prediction drift"]["fieldConfig"]["defaults"]["custom"]
    assert custom["thresholdsStyle"]["mode"] != "off"  # the lines are drawn


def test_alert_rule_is_prediction_drift_above_025_over_the_last_hour():
    rule = _alert_rule()
    assert _alert_threshold(rule) == 0.25
    query = _alert_query(rule)
    assert query["datasourceUid"] == _datasource()["uid"]
    assert query["relativeTimeRange"] == {"from": 3600, "to": 0}
    assert "prediction_drift" in query["model"]["rawSql"]
    # The threshold reads the reduced query, which reads the SQL query.
    by_ref = {d["refId"]: d for d in rule["data"]}
    threshold_input = by_ref[rule["condition"]]["model"]["expression"]
    assert by_ref[threshold_input]["model"]["expression"] == query["refId"]


def test_alerts_reach_the_contact_point_the_settings_name():
    """Grafana's alerts go to a webhook contact point whose URL is the alert webhook setting,
    which the compose file gives the Grafana container."""
    provisioned = yaml.safe_load(CONTACT_POINT.read_text())
    [point] = provisioned["contactPoints"]
    [receiver] = point["receivers"]
    assert receiver["type"] == "webhook"
    assert receiver["settings"]["url"] == "$DROUGHTWATCH_ALERT_WEBHOOK_URL"
    [policy] = provisioned["policies"]
    assert policy["receiver"] == point["name"]
    compose = yaml.safe_load((GRAFANA.parent / "docker-compose.yml").read_text())
    grafana_env = compose["services"]["grafana"]["environment"]
    assert grafana_env["DROUGHTWATCH_ALERT_WEBHOOK_URL"].startswith(
        "${DROUGHTWATCH_ALERT_WEBHOOK_URL:-"
    )


# ---- the SQL against a real PostgreSQL ---------------------------------------------------------


def _timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_macros(sql: str, start: dt.datetime, end: dt.datetime) -> str:
    """Grafana's PostgreSQL macros, expanded as its SQL data source does for the range start-end.

    ``$__timeFilter(c)`` -> ``c BETWEEN '<start>' AND '<end>'`` (RFC 3339, UTC);
    ``$__time(c)`` -> ``c AS "time"``; ``$__timeFrom()`` / ``$__timeTo()`` -> the quoted bounds.
    Any other ``$__`` macro raises, so a panel using one fails here until it is added.
    """
    lo, hi = f"'{_timestamp(start)}'", f"'{_timestamp(end)}'"
    sql = re.sub(r"\$__timeFilter\(\s*([^)]+?)\s*\)", rf"\1 BETWEEN {lo} AND {hi}", sql)
    sql = re.sub(r"\$__time\(\s*([^)]+?)\s*\)", r'\1 AS "time"', sql)
    sql = sql.replace("$__timeFrom()", lo).replace("$__timeTo()", hi)
    left = re.findall(r"\$__\w+", sql)
    if left:
        raise ValueError(f"expand_macros does not know {sorted(set(left))}")
    return sql


def _relative(now: dt.datetime, spec: str) -> dt.datetime:
    """A Grafana relative time like ``now-30d`` or ``now-6h``."""
    if spec == "now":
        return now
    match = re.fullmatch(r"now-(\d+)([mhd])", spec)
    assert match, f"unsupported dashboard time {spec!r}"
    unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return now - dt.timedelta(**{unit: int(match.group(1))})


def _query(engine: sa.Engine, sql: str) -> tuple[list[str], list[tuple]]:
    # The DB-API cursor, as Grafana sends the text: no SQLAlchemy bind-parameter parsing of ':'.
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(sql)
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        cursor.close()
        return columns, rows
    finally:
        raw.close()


MODEL = "droughtwatch-nd"
RNG = np.random.default_rng(23)
NDVI_REF = reference_profile(RNG.normal(0.25, 0.1, 2000))
NDMI_REF = reference_profile(RNG.normal(0.05, 0.08, 2000))


def _probabilities(counts: list[int]) -> np.ndarray:
    labels = np.repeat(np.arange(4), counts)
    probs = np.full((labels.size, 4), 0.1)
    probs[np.arange(labels.size), labels] = 0.7
    return probs


def _shard(
    shard_key: str,
    version: str,
    recorded_at: dt.datetime,
    counts: list[int],
    labelled: bool,
    ndvi_shift: float = 0.0,
) -> dict[str, Any]:
    probs = _probabilities(counts)
    n = probs.shape[0]
    # Labelled shards: the truth agrees with the argmax except for every fifth row.
    truth = np.argmax(probs, axis=1)
    truth[::5] = (truth[::5] + 1) % 4
    row = monitoring_row(
        shard_key=shard_key,
        model_name=MODEL,
        model_version=version,
        probabilities=probs,
        reference_labels_dist=TRAINING_LABEL_FRACTIONS,
        ndvi_means=RNG.normal(0.25 + ndvi_shift, 0.1, n),
        ndmi_means=RNG.normal(0.05, 0.08, n),
        ndvi_reference=NDVI_REF,
        ndmi_reference=NDMI_REF,
        true_labels=truth if labelled else np.full(n, -1),
        dagster_run_id=f"run-{shard_key}-{version}",
    )
    return {**row, "recorded_at": recorded_at}


@pytest.fixture
def pg_engine(tmp_path: Path):
    import pgserver

    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        engine = metricsdb.connect(server.get_uri())
        try:
            yield engine
        finally:
            engine.dispose()
    finally:
        server.cleanup()


@pytest.mark.slow
def test_every_panel_and_the_alert_run_on_pipeline_rows(pg_engine: sa.Engine):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    typical = [36, 9, 9, 6]  # the training distribution: little drift
    shards = [
        # Older than the dashboard's range: every panel must leave it out.
        _shard("drops/2024-06-01/part-r-00000", "1", now - dt.timedelta(days=60), typical, True),
        _shard("drops/2024-08-01/part-r-00000", "1", now - dt.timedelta(days=3), typical, True),
        _shard("drops/2024-08-02/part-r-00000", "1", now - dt.timedelta(days=2), typical, False),
        _shard(
            "drops/2024-08-02/part-r-00000",
            "2",
            now - dt.timedelta(days=2, minutes=-5),
            typical,
            True,
        ),
        # Within the alert's last hour: one typical shard, one almost all class 3 with NDVI shifted.
        _shard(
            "drops/2024-08-03/part-r-00000", "1", now - dt.timedelta(minutes=40), typical, False
        ),
        _shard(
            "drops/2024-08-03/part-r-00000",
            "2",
            now - dt.timedelta(minutes=10),
            [1, 1, 2, 56],
            False,
            0.3,
        ),
    ]
    for row in shards[:-1]:
        metricsdb.upsert_monitoring_row(pg_engine, row)
    # The NDVI-shifted shard, with the input drift monitoring writes beside it.
    moved = [
        {"feature": "ndvi", "kind": "input", "psi": 1.5, "wasserstein": 0.3, "shard_value": 0.55,
         "reference_value": 0.25, "shift": None},
        {"feature": "B4", "kind": "input", "psi": 0.02, "wasserstein": 0.1, "shard_value": 80.0,
         "reference_value": 79.5, "shift": None},
        {"feature": "cloudy_share", "kind": "quality", "psi": None, "wasserstein": None,
         "shard_value": 0.10, "reference_value": 0.06, "shift": 0.04},
    ]  # fmt: skip
    metricsdb.upsert_monitoring_row(pg_engine, {**shards[-1], "moved_input": "ndvi"}, moved)
    in_range = [s for s in shards if s["recorded_at"] > now - dt.timedelta(days=30)]
    high = shards[-1]
    assert high["prediction_drift"] > 0.3 > max(s["prediction_drift"] for s in shards[:-1])

    dashboard = _dashboard()
    start = _relative(now, dashboard["time"]["from"])
    end = _relative(now, dashboard["time"]["to"]) + dt.timedelta(seconds=1)
    results = {}
    for title, panel in _panels().items():
        (target,) = panel["targets"]
        columns, rows = _query(pg_engine, expand_macros(target["rawSql"], start, end))
        if target["format"] == "time_series":
            # Grafana needs a "time" column, ascending.
            assert columns[0] == "time", title
            times = [r[0] for r in rows]
            assert times == sorted(times), title
        results[title] = [dict(zip(columns, r, strict=True)) for r in rows]

    fractions = results["Predicted class fractions"]
    assert len(fractions) == len(in_range)
    for r in fractions:
        assert sum(r[f"class_{k}_frac"] for k in range(4)) == pytest.approx(1.0)
    assert fractions[-1]["class_3_frac"] == pytest.approx(56 / 60)

    drift = results["Prediction drift"]
    assert {r["metric"] for r in drift} == {f"{MODEL} v1", f"{MODEL} v2"}
    assert drift[-1]["prediction_drift"] == pytest.approx(high["prediction_drift"])

    features = results["Feature drift"]
    assert len(features) == len(in_range)
    assert features[-1]["ndvi_wasserstein"] == pytest.approx(high["ndvi_wasserstein"])
    assert features[-1]["ndvi_wasserstein"] > 0.2  # the shifted shard
    assert all(r["ndmi_psi"] >= 0 for r in features)

    accuracy = results["Accuracy where labels exist"]
    labelled = [s for s in in_range if s["accuracy"] is not None]
    assert len(accuracy) == len(labelled) == 2
    assert [r["accuracy"] for r in accuracy] == pytest.approx([s["accuracy"] for s in labelled])
    assert all(r["macro_f1"] is not None for r in accuracy)

    table = results["Processed shards"]
    assert [(r["shard_key"], r["model_version"]) for r in table] == [
        (s["shard_key"], s["model_version"]) for s in reversed(in_range)
    ]
    assert {r["model_version"] for r in table} == {"1", "2"}
    assert table[0]["n_predictions"] == 60

    # In drop-date order, each shard at its latest scoring (2024-08-03: the drifting v2 row),
    # and the same numbers as Dagster's drift_by_drop_date summary of the same rows.
    by_date = results["Drift by drop date"]
    assert [r["drop_date"] for r in by_date] == ["2024-08-01", "2024-08-02", "2024-08-03"]
    assert [r["shards"] for r in by_date] == [1, 1, 1]
    assert by_date[-1]["prediction_drift"] == pytest.approx(high["prediction_drift"])
    summary = drift_by_drop_date(sorted(in_range, key=lambda s: s["recorded_at"]))
    assert [(r["drop_date"], r["prediction_drift"], r["ndvi_psi"]) for r in summary] == [
        (r["drop_date"], pytest.approx(r["prediction_drift"]), pytest.approx(r["ndvi_psi"]))
        for r in by_date
    ]

    # Which input moved: the shifted shard names NDVI; the others, with no input rows, "-".
    moved_table = results["Which input moved"]
    latest_scoring: dict[str, dict] = {}
    for shard in sorted(in_range, key=lambda s: s["recorded_at"]):
        latest_scoring[shard["shard_key"]] = shard
    newest_first = sorted(latest_scoring.values(), key=lambda s: s["recorded_at"], reverse=True)
    assert [(r["shard_key"], r["model_version"]) for r in moved_table] == [
        (s["shard_key"], s["model_version"]) for s in newest_first
    ]
    top = moved_table[0]
    assert (top["moved_input"], top["max_input_psi"]) == ("ndvi", pytest.approx(1.5))
    assert top["max_quality_shift"] == pytest.approx(0.04)
    assert all(r["moved_input"] == "-" and r["max_input_psi"] is None for r in moved_table[1:])

    # Estimated next to measured: the latest scoring of each drop date's shard.
    performance = results["Estimated and measured performance by drop date"]
    latest = {s["shard_key"][6:16]: s for s in sorted(in_range, key=lambda s: s["recorded_at"])}
    assert [r["drop_date"] for r in performance] == sorted(latest)
    for r in performance:
        shard = latest[r["drop_date"]]
        assert r["estimated_accuracy"] == pytest.approx(shard["estimated_accuracy"])
        assert (r["accuracy"] is None) == (shard["accuracy"] is None)

    rule = _alert_rule()
    window = _alert_query(rule)["relativeTimeRange"]
    columns, rows = _query(
        pg_engine,
        expand_macros(
            _alert_query(rule)["model"]["rawSql"],
            now - dt.timedelta(seconds=window["from"]),
            now - dt.timedelta(seconds=window["to"]) + dt.timedelta(seconds=1),
        ),
    )
    alert_rows = [dict(zip(columns, r, strict=True)) for r in rows]
    # The last hour holds the two newest shards; only the high-drift one crosses the threshold.
    assert {(r["shard_key"], r["model_version"]) for r in alert_rows} == {
        ("drops/2024-08-03/part-r-00000", "1"),
        ("drops/2024-08-03/part-r-00000", "2"),
    }
    firing = [r for r in alert_rows if r["prediction_drift"] > _alert_threshold(rule)]
    assert [(r["shard_key"], r["model_version"]) for r in firing] == [
        ("drops/2024-08-03/part-r-00000", "2")
    ]


def test_expand_macros():
    start = dt.datetime(2024, 8, 7, 10, 0, tzinfo=dt.UTC)
    end = dt.datetime(2024, 8, 7, 11, 30, tzinfo=dt.UTC)
    sql = "SELECT $__time(recorded_at), x FROM t WHERE $__timeFilter(recorded_at) AND $__timeTo()"
    assert expand_macros(sql, start, end) == (
        'SELECT recorded_at AS "time", x FROM t WHERE recorded_at BETWEEN '
        "'2024-08-07T10:00:00Z' AND '2024-08-07T11:30:00Z' AND '2024-08-07T11:30:00Z'"
    )
    with pytest.raises(ValueError, match="__timeGroup"):
        expand_macros("SELECT $__timeGroup(recorded_at, '1h')", start, end)
