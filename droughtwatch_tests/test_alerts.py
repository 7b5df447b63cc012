"""Alerts reach real receivers on 127.0.0.1: an HTTP server (the webhook and Slack's incoming
webhook) and an SMTP server, from the adapter and from the two sensors."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from droughtwatch_assets.adapters.alerts import Alert, Destinations
from droughtwatch_assets.definitions import build_definitions
from droughtwatch_assets.defs.alerts import AlertsResource, build_check_alerts, run_failure_alert
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.conftest import free_port
from droughtwatch_tests.defs.helpers import copy_sample, ingest


class _Receiver:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.mails: list[str] = []


@pytest.fixture
def receiver() -> Iterator[tuple[_Receiver, str, str]]:
    """An HTTP server that records JSON POSTs and an SMTP server that records messages: their
    base URL and SMTP URL."""
    got = _Receiver()

    class Http(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.posts.append((self.path, json.loads(body)))
            self.send_response(500 if self.path == "/broken" else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    class Smtp(socketserver.StreamRequestHandler):
        """Just enough SMTP: greeting, EHLO, MAIL, RCPT, DATA, QUIT."""

        def handle(self):
            self.wfile.write(b"220 test ESMTP\r\n")
            while line := self.rfile.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    self.wfile.write(b"250-test\r\n250 OK\r\n")
                elif verb == b"DATA":
                    self.wfile.write(b"354 go on\r\n")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        data += self.rfile.readline()
                    got.mails.append(data.decode())
                    self.wfile.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"250 OK\r\n")

    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Smtp)
    for server in (http, smtp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield got, f"http://127.0.0.1:{http.server_port}", f"smtp://127.0.0.1:{smtp.server_address[1]}"
    finally:
        for server in (http, smtp):
            server.shutdown()
            server.server_close()


def test_an_alert_reaches_the_webhook_slack_and_email(receiver):
    got, http, smtp = receiver
    destinations = Destinations(
        webhook_url=f"{http}/hook",
        slack_webhook_url=f"{http}/slack",
        email_to="ops@example.org, ml@example.org",
        email_from="droughtwatch@example.org",
        smtp_url=smtp,
    )
    alert = Alert("drift", "prediction drift above the threshold", "- drops/x: 0.41",
                  url="http://127.0.0.1:3000/assets/monitoring_metrics")  # fmt: skip
    assert destinations.send(alert) == {"webhook": "sent", "slack": "sent", "email": "sent"}
    posts = dict(got.posts)
    assert posts["/hook"]["kind"] == "drift" and posts["/hook"]["text"] == "- drops/x: 0.41"
    assert posts["/hook"]["url"].endswith("/assets/monitoring_metrics")
    assert posts["/slack"] == {
        "text": "*prediction drift above the threshold*\n- drops/x: 0.41\n"
        "<http://127.0.0.1:3000/assets/monitoring_metrics|Open in Dagster>"
    }
    [mail] = got.mails
    assert "Subject: [droughtwatch] prediction drift above the threshold" in mail
    assert "To: ops@example.org, ml@example.org" in mail and "- drops/x: 0.41" in mail


def test_a_destination_that_is_down_does_not_stop_the_others(receiver):
    got, http, smtp = receiver
    closed = f"http://127.0.0.1:{free_port()}/hook"
    destinations = Destinations(webhook_url=closed, slack_webhook_url=f"{http}/broken",
                                email_to="ops@example.org", smtp_url=smtp)  # fmt: skip
    outcome = destinations.send(Alert("run_failure", "ingest_job failed", "boom"))
    assert outcome["webhook"].startswith("URLError")
    assert outcome["slack"].startswith("HTTPError") and "500" in outcome["slack"]
    assert outcome["email"] == "sent" and len(got.mails) == 1
    assert Destinations().configured == [] and Destinations().send(Alert("x", "y", "z")) == {}
    # E-mail needs both a recipient and a server.
    assert Destinations(email_to="ops@example.org").configured == []


@pytest.fixture
def alerts(receiver) -> AlertsResource:
    _, http, smtp = receiver
    return AlertsResource(webhook_url=f"{http}/hook", email_to="ops@example.org", smtp_url=smtp)


def test_a_failed_run_is_alerted_with_its_shard_and_reason(tmp_path, sample_shard_path, receiver,
                                                           alerts):  # fmt: skip
    """A truncated shard fails its blocking checks; run_failure_alert sends the run's failure,
    which names the shard and why, with a link to the run."""
    got, _, _ = receiver
    settings = Settings(tmp_path, str(tmp_path / "data"), str(tmp_path / "lake"), None)
    key = "drops/2024-08-07/part-r-00000"
    shard = copy_sample(Path(settings.data_root), key, sample_shard_path)
    shard.write_bytes(shard.read_bytes()[:5000])
    with dg.instance_for_test() as instance:
        result = ingest(settings, instance, key, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure.dagster_event,
        ).for_run_failure()
        run_failure_alert(context, alerts=alerts)
    [(path, body)] = got.posts
    assert path == "/hook" and body["kind"] == "run_failure"
    assert body["title"] == f"ingest_job failed ({key})"
    assert key in body["text"] and "truncated" in body["text"].lower()
    assert body["url"] == f"http://127.0.0.1:3000/runs/{run.run_id}"
    [mail] = got.mails
    assert "Subject: [droughtwatch] ingest_job failed" in mail


def test_failed_blocking_checks_and_drift_are_alerted_once(tmp_path, sample_shard_path, receiver,
                                                           alerts):  # fmt: skip
    got, _, _ = receiver
    settings = Settings(tmp_path, str(tmp_path / "data"), str(tmp_path / "lake"), None)
    defs = build_definitions(settings)
    checks = sorted({k for a in defs.resolve_asset_graph().assets_defs for k in a.check_keys},
                    key=str)  # fmt: skip
    sensor = build_check_alerts(checks)
    good, bad = "train/part-r-00012", "drops/2024-08-07/part-r-00000"
    copy_sample(Path(settings.data_root), good, sample_shard_path)
    copy_sample(Path(settings.data_root), bad, sample_shard_path).write_bytes(b"not a shard")
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None):
            context = dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"alerts": alerts}
            )
            result = sensor(context)
            return context.cursor, result

        cursor, result = tick(None)  # the first tick only marks where alerting starts
        assert "from now on" in result.skip_message and not got.posts
        assert ingest(settings, instance, good).success
        assert not ingest(settings, instance, bad, raise_on_error=False).success
        # A drift warning, as monitoring_metrics records it for a drifting shard.
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey("monitoring_metrics"),
                check_name="prediction_drift",
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description="prediction drift 0.412 > 0.25",
                partition=good,
            )
        )
        cursor, result = tick(cursor)
        assert result.skip_message.startswith("alerted")
        bodies = {body["kind"]: body for _, body in got.posts}
        assert set(bodies) == {"check_failure", "drift"}
        assert bodies["check_failure"]["details"]["shards"] == [bad]
        failed_text = bodies["check_failure"]["text"]
        assert bad in failed_text and good not in failed_text
        assert bodies["drift"]["details"]["shards"] == [good]
        assert "0.412 > 0.25" in bodies["drift"]["text"]
        assert len(got.mails) == 2

        _, result = tick(cursor)  # nothing new: nothing sent again
        assert len(got.posts) == 2 and "no failed blocking check" in result.skip_message


def test_without_destinations_the_sensors_skip_and_say_why(tmp_path):
    drift = dg.AssetCheckKey(dg.AssetKey("monitoring_metrics"), "prediction_drift")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=drift.asset_key, check_name=drift.name, passed=False,
                severity=dg.AssetCheckSeverity.WARN, partition=None,
            )
        )  # fmt: skip
        context = dg.build_sensor_context(
            instance=instance,
            cursor=json.dumps({drift.to_user_string(): 0}),
            resources={"alerts": AlertsResource()},
        )
        result = build_check_alerts([drift])(context)
        message = result.skip_message
        assert "1 drift warnings and 0 estimated-performance warnings, but no alert" in message
