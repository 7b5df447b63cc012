"""The drop sensor in notification mode: real S3 uploads on a moto server send real S3 event
notifications to a real SQS queue on the same server, and the sensor reads the queue."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import boto3
import dagster as dg
import pytest

from droughtwatch_assets.adapters import notifications
from droughtwatch_assets.adapters.storage import open_store
from droughtwatch_assets.settings import Settings
from droughtwatch_tests.defs.helpers import ingest, tick

DROP = "drops/2024-08-07/part-r-00000"


@pytest.fixture
def queue_settings(s3_settings: Settings, moto_endpoint: str, monkeypatch) -> Settings:
    """s3_settings plus a queue that receives the bucket's ObjectCreated events under incoming/."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_endpoint)
    bucket = s3_settings.data_root.removeprefix("s3://").split("/", 1)[0]
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint)
    queue_url = sqs.create_queue(QueueName=f"drops-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    boto3.client("s3", endpoint_url=moto_endpoint).put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn["Attributes"]["QueueArn"],
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}},
                }
            ]
        },
    )
    _drain(sqs, queue_url)  # the test event S3 sends when notifications are configured
    return dataclasses.replace(s3_settings, sqs_queue_url=queue_url)


def _drain(sqs, queue_url: str) -> list[dict]:
    out = []
    while batch := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
        out += batch
        for m in batch:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return out


def upload(settings: Settings, key: str, data: bytes) -> None:
    bucket, prefix = settings.data_root.removeprefix("s3://").split("/", 1)
    boto3.client("s3", endpoint_url=settings.s3_endpoint_url).put_object(
        Bucket=bucket, Key=f"{prefix}/{key}", Body=data
    )


def waiting(settings: Settings) -> int:
    sqs = boto3.client("sqs")
    attrs = sqs.get_queue_attributes(
        QueueUrl=settings.sqs_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def test_new_drop_arrives_through_the_queue_without_listing(
    queue_settings, instance, sample_shard_path, capsys, monkeypatch
):
    upload(queue_settings, DROP, sample_shard_path.read_bytes())
    upload(queue_settings, "drops/2024-08-07/_SUCCESS", b"")

    # The bucket is never listed in notification mode.
    from droughtwatch_assets.adapters.storage import S3Store

    def no_listing(*args, **kwargs):
        raise AssertionError("the sensor listed the bucket")

    monkeypatch.setattr(S3Store, "list", no_listing)
    monkeypatch.setattr(S3Store, "list_prefixes", no_listing)

    first = tick(queue_settings, instance)
    [request] = first.run_requests
    assert request.partition_key == DROP and request.job_name == "drop_job"
    assert request.run_key.startswith(f"{DROP}@")
    assert instance.get_dynamic_partitions("shards") == [DROP]
    assert "incoming/drops/2024-08-07/_SUCCESS: not a shard" in capsys.readouterr().err
    assert len(json.loads(first.cursor)["sqs_pending"]) == 2

    # The next tick acknowledges (deletes) what the committed tick read, and asks for nothing.
    second = tick(queue_settings, instance, first.cursor)
    assert second.run_requests == []
    assert json.loads(second.cursor)["sqs_pending"] == []
    assert waiting(queue_settings) == 0


def test_reupload_arrives_as_new_data_and_ingested_versions_are_not_asked_again(
    queue_settings, instance, sample_shard_path
):
    data = sample_shard_path.read_bytes()
    upload(queue_settings, DROP, data)
    first = tick(queue_settings, instance)
    assert ingest(queue_settings, instance, DROP).success

    upload(queue_settings, DROP, data)  # the same bytes again: an event, but not new data
    assert tick(queue_settings, instance, first.cursor).run_requests == []

    upload(queue_settings, DROP, data[: len(data) // 2])  # new content under the same key
    third = tick(queue_settings, instance, first.cursor)
    [request] = third.run_requests
    assert request.partition_key == DROP
    assert request.run_key != first.run_requests[0].run_key


def test_a_failed_tick_leaves_its_messages_in_the_queue(queue_settings, sample_shard_path):
    """Messages are deleted only by the tick after the one that read them: a tick that fails
    (its cursor never saved) leaves them to come back after the visibility timeout."""
    upload(queue_settings, DROP, sample_shard_path.read_bytes())
    sqs = notifications.sqs_client(queue_settings.sqs_queue_url)
    store = open_store(queue_settings.data_root, endpoint_url=queue_settings.s3_endpoint_url)
    url = queue_settings.sqs_queue_url

    lost = notifications.poll(sqs, url, store, visibility_timeout_s=300)  # its tick then fails
    assert [f.key for f in lost.found] == [DROP]
    assert notifications.poll(sqs, url, store).found == []  # invisible, not deleted:
    assert waiting(queue_settings) == 1
    # The visibility timeout ends: what SQS does then, done now instead of waited for.
    for receipt in lost.receipts:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=0)
    again = poll_until_found(sqs, url, store)
    assert [f.run_key for f in again.found] == [f.run_key for f in lost.found]
    # That tick committed; the next acknowledges and the queue is empty.
    assert notifications.acknowledge(sqs, url, again.receipts) == []
    assert waiting(queue_settings) == 0


def poll_until_found(sqs, url: str, store, deadline_s: float = 30) -> notifications.Polled:
    """Poll as a tick does until a message comes back (a visible message may take a moment)."""
    deadline = time.monotonic() + deadline_s
    while not (polled := notifications.poll(sqs, url, store, visibility_timeout_s=300)).found:
        assert time.monotonic() < deadline, f"nothing came back to the queue within {deadline_s} s"
        time.sleep(0.05)
    return polled


def event(bucket: str, key: str, name: str = "ObjectCreated:Put") -> str:
    record = {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    return json.dumps({"Records": [record]})


def test_malformed_and_foreign_messages_are_skipped_and_acknowledged(
    queue_settings, instance, capsys
):
    sqs = boto3.client("sqs")
    url = queue_settings.sqs_queue_url
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    sqs.send_message(
        QueueUrl=url, MessageBody=event("someone-else", "incoming/drops/x/part-r-00000")
    )
    bucket = queue_settings.data_root.split("/")[2]
    sqs.send_message(QueueUrl=url, MessageBody=event(bucket, "lake/part-r-00000"))

    first = tick(queue_settings, instance)
    assert first.run_requests == []
    err = capsys.readouterr().err
    assert "ignored: not JSON" in err
    assert "s3://someone-else/incoming/drops/x/part-r-00000: another bucket" in err
    assert "lake/part-r-00000: outside the data root" in err
    tick(queue_settings, instance, first.cursor)
    assert waiting(queue_settings) == 0


def test_queue_mode_refuses_a_local_data_root(local_settings, instance):
    settings = dataclasses.replace(
        local_settings, sqs_queue_url="https://sqs.eu-west-1.amazonaws.com/123456789012/drops"
    )
    with pytest.raises(dg.Failure, match="need an s3:// data root"):
        tick(settings, instance)


def test_parse_s3_events_decodes_keys_and_ignores_test_and_removal_events():
    body = json.dumps(
        {
            "Records": [
                {"eventName": "ObjectCreated:CompleteMultipartUpload",
                 "s3": {"bucket": {"name": "b"}, "object": {"key": "drops/a+b%3D1/part-r-00001"}}},
                {"eventName": "ObjectRemoved:Delete",
                 "s3": {"bucket": {"name": "b"}, "object": {"key": "drops/x/part-r-00002"}}},
            ]
        }
    )  # fmt: skip
    [created] = notifications.parse_s3_events(body)
    assert created == notifications.ObjectEvent(
        "b", "drops/a b=1/part-r-00001", "ObjectCreated:CompleteMultipartUpload"
    )
    assert notifications.parse_s3_events(json.dumps({"Event": "s3:TestEvent"})) == []
    sns = json.dumps({"Type": "Notification", "Message": body})
    assert len(notifications.parse_s3_events(sns)) == 1
    with pytest.raises(ValueError, match="no Records"):
        notifications.parse_s3_events(json.dumps({"hello": 1}))
