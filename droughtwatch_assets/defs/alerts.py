"""Alerts as sensors: a failed run, failed blocking checks and prediction drift reach people.

- ``run_failure_alert``: every run of this code location that fails, with Dagster's failure
  message (for a batch of shards it names each shard that failed and why).
- ``check_alerts``: every failed blocking check (severity ERROR), every prediction-drift
  warning and every estimated-performance warning since the previous tick, one alert per kind
  per tick that lists the shards. Its cursor starts at the newest results when the sensor
  first runs, so turning alerts on does not replay history.

Both send through :class:`AlertsResource` (``adapters/alerts.py``) to whatever destinations the
settings configure, skip with their reason when none is, and log what each destination
answered; a destination that is down fails nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from droughtwatch_assets.adapters.alerts import Alert, Destinations
from droughtwatch_assets.defs.keys import MONITORING

DRIFT_CHECK = dg.AssetCheckKey(MONITORING, "prediction_drift")
PERFORMANCE_CHECK = dg.AssetCheckKey(MONITORING, "estimated_performance")
HISTORY_LIMIT = 500  # results per check read per tick


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go (any, all or none) and where the Dagster UI is, for links."""

    webhook_url: str | None = None
    slack_webhook_url: str | None = None
    email_to: str | None = None
    email_from: str | None = None
    smtp_url: str | None = None
    dagster_ui_url: str = "http://127.0.0.1:3000"

    def destinations(self) -> Destinations:
        return Destinations(
            self.webhook_url, self.slack_webhook_url, self.email_to, self.email_from, self.smtp_url
        )

    def link(self, path: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/{path.lstrip('/')}"


def _send(context, alerts: AlertsResource, alert: Alert) -> None:
    for destination, outcome in alerts.destinations().send(alert).items():
        log = context.log.info if outcome == "sent" else context.log.warning
        log(f"alert '{alert.title}' to {destination}: {outcome}")


@dg.run_failure_sensor(
    name="run_failure_alert",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends an alert for every failed run of this code location (webhook, Slack, "
    "e-mail: DROUGHTWATCH_ALERT_* settings).",
)
def run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertsResource):
    if not alerts.destinations().configured:
        return dg.SkipReason("no alert destination configured (DROUGHTWATCH_ALERT_* settings)")
    run = context.dagster_run
    # The steps' own failures say what went wrong (for a batch: each shard and why); the run's
    # failure event only that steps failed.
    reasons = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        failure = data.user_failure_data
        reasons.append(
            (failure.description if failure is not None else None)
            or (data.error.message.strip() if data.error is not None else None)
            or event.message
            or ""
        )
    message = "\n".join(r for r in reasons if r) or context.failure_event.message or "failed"
    partition = run.tags.get("dagster/partition") or (
        f"{run.tags['dagster/asset_partition_range_start']}..."
        f"{run.tags['dagster/asset_partition_range_end']}"
        if "dagster/asset_partition_range_start" in run.tags
        else None
    )
    _send(
        context,
        alerts,
        Alert(
            kind="run_failure",
            title=f"{run.job_name} failed" + (f" ({partition})" if partition else ""),
            text=message,
            url=alerts.link(f"/runs/{run.run_id}"),
            details={"run_id": run.run_id, "job": run.job_name, "partition": partition},
        ),
    )


def _failed_since(
    instance: dg.DagsterInstance, check: dg.AssetCheckKey, after: int
) -> list[tuple[int, dg.AssetCheckEvaluation]]:
    records = instance.event_log_storage.get_asset_check_execution_history(
        check, limit=HISTORY_LIMIT, status={AssetCheckExecutionRecordStatus.FAILED}
    )
    found = []
    for record in records:
        if record.id <= after or record.event is None or record.event.dagster_event is None:
            continue
        evaluation = record.event.dagster_event.event_specific_data
        if isinstance(evaluation, dg.AssetCheckEvaluation):
            found.append((record.id, evaluation))
    return found


def _latest_id(instance: dg.DagsterInstance, check: dg.AssetCheckKey) -> int:
    records = instance.event_log_storage.get_asset_check_execution_history(check, limit=1)
    return records[0].id if records else 0


def build_check_alerts(checks: Sequence[dg.AssetCheckKey], interval_s: int = 30):
    """The sensor over `checks` (every asset check of the code location)."""

    @dg.sensor(
        name="check_alerts",
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends an alert for failed blocking checks and for prediction drift above "
        "the threshold, one per kind per tick, naming the shards.",
    )
    def check_alerts(context: dg.SensorEvaluationContext, alerts: AlertsResource):
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        names = {check: check.to_user_string() for check in checks}
        if not cursor:
            context.update_cursor(
                json.dumps({n: _latest_id(context.instance, c) for c, n in names.items()})
            )
            return dg.SkipReason("started: alerting on check results from now on")
        failed: list[dg.AssetCheckEvaluation] = []
        drift: list[dg.AssetCheckEvaluation] = []
        performance: list[dg.AssetCheckEvaluation] = []
        for check, name in names.items():
            found = _failed_since(context.instance, check, cursor.get(name, 0))
            if found:
                cursor[name] = max(i for i, _ in found)
            for _, evaluation in found:
                if check == DRIFT_CHECK:
                    drift.append(evaluation)
                elif check == PERFORMANCE_CHECK:
                    performance.append(evaluation)
                elif evaluation.severity == dg.AssetCheckSeverity.ERROR:
                    failed.append(evaluation)
        context.update_cursor(json.dumps(cursor))
        if not failed and not drift and not performance:
            return dg.SkipReason(
                "no failed blocking check, no drift and no estimated-performance drop since "
                "the last tick"
            )
        if not alerts.destinations().configured:
            return dg.SkipReason(
                f"{len(failed)} failed checks, {len(drift)} drift warnings and "
                f"{len(performance)} estimated-performance warnings, but no alert destination "
                "is configured (DROUGHTWATCH_ALERT_* settings)"
            )
        if failed:
            _send(context, alerts, _check_alert("check_failure", "failed blocking checks", failed,
                                                alerts))  # fmt: skip
        if drift:
            _send(context, alerts, _check_alert("drift", "prediction drift above the threshold",
                                                drift, alerts))  # fmt: skip
        if performance:
            _send(context, alerts, _check_alert(
                "performance", "estimated accuracy below the model's validation accuracy",
                performance, alerts))  # fmt: skip
        return dg.SkipReason(
            f"alerted: {len(failed)} failed checks, {len(drift)} drift warnings, "
            f"{len(performance)} estimated-performance warnings"
        )

    return check_alerts


def _check_alert(
    kind: str, what: str, evaluations: list[dg.AssetCheckEvaluation], alerts: AlertsResource
) -> Alert:
    lines = [
        f"- {e.partition or '(unpartitioned)'}: {e.asset_key.to_user_string()}.{e.check_name}"
        + (f": {e.description}" if e.description else "")
        for e in evaluations
    ]
    shards = sorted({e.partition for e in evaluations if e.partition})
    first = evaluations[0]
    return Alert(
        kind=kind,
        title=f"{what}: {len(evaluations)} on {len(shards)} shard(s)",
        text="\n".join(lines),
        url=alerts.link(f"/assets/{first.asset_key.to_user_string()}?view=checks"),
        details={"shards": shards, "checks": sorted({e.check_name for e in evaluations})},
    )
