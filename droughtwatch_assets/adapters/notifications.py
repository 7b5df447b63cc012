"""New shards from S3 event notifications (SQS) instead of listing the bucket.

With ``DROUGHTWATCH_SQS_QUEUE_URL`` set, the drops bucket sends ``s3:ObjectCreated:*`` events to
an SQS queue (``infra/`` builds both) and the drop sensor reads the queue: a tick costs the
messages waiting in it, whatever the bucket holds, and lists nothing.

The rule, which keeps "no shard missed, none processed twice" when a tick fails halfway:

* A tick receives up to ``max_messages`` messages, keeping them invisible to other readers for
  ``visibility_timeout_s`` (longer than a few sensor intervals).
* Each event's object is looked up once (``HEAD``): the run asks for the object's *current*
  version, so a stale event for an overwritten key asks for the new content, and an event for an
  object deleted since is dropped with a log line. Stray objects (``_SUCCESS``, ``*.gstmp``),
  objects outside the data root's prefix and malformed messages are skipped with their reason.
* Messages are deleted only at the start of the *next* tick, which means after the tick that
  received them was committed (its run requests submitted and its cursor saved). A tick that
  fails leaves them in the queue; they come back after the visibility timeout and their run
  keys (``<key>@<version>``) and the lake's ``raw_tfrecords`` report keep them from running
  twice. A message that keeps failing ends in the queue's dead-letter queue (``infra/``).
* ``droughtwatch discover`` still lists the whole data root once, for anything that arrived
  before the notifications were configured.

Nothing here imports Dagster; the sensor wraps it.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from droughtwatch_assets.adapters.storage import ObjectInfo, S3Store, Store
from droughtwatch_assets.pipeline.discovery import Found, classify

SQS_BATCH = 10  # SQS's own limit for ReceiveMessage and DeleteMessageBatch


@dataclass(frozen=True)
class ObjectEvent:
    bucket: str
    key: str  # the full object key in the bucket, URL-decoded
    event: str  # e.g. ObjectCreated:Put


def parse_s3_events(body: str) -> list[ObjectEvent]:
    """The object-created records of one SQS message body (an S3 event notification).

    S3's test message (``s3:TestEvent``, sent when notifications are configured) and removal
    events give no records. Raises ValueError for a body that is not an S3 notification.
    """
    try:
        message = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {body[:80]!r}") from exc
    if not isinstance(message, dict):
        raise ValueError(f"not an S3 event notification: {body[:80]!r}")
    if message.get("Event") == "s3:TestEvent":
        return []
    if "Message" in message and "Records" not in message:  # delivered through SNS
        return parse_s3_events(message["Message"])
    records = message.get("Records")
    if not isinstance(records, list):
        raise ValueError(f"not an S3 event notification (no Records): {body[:80]!r}")
    events = []
    for record in records:
        try:
            name = str(record["eventName"])
            bucket = record["s3"]["bucket"]["name"]
            # S3 URL-encodes keys in notifications, spaces as '+'.
            key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"S3 event record without bucket or key: {record!r:.120}") from exc
        if name.startswith("ObjectCreated:"):
            events.append(ObjectEvent(bucket, key, name))
    return events


@dataclass
class QueueCursor:
    """What the sensor keeps between ticks: receipts to delete once this tick is committed."""

    pending: list[str] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps({"sqs_pending": self.pending})

    @classmethod
    def loads(cls, text: str | None) -> QueueCursor:
        if not text:
            return cls()
        return cls(list(json.loads(text).get("sqs_pending", [])))


@dataclass
class Polled:
    found: list[Found]
    skipped: list[tuple[str, str]]  # (the object's URL or the message's id, reason)
    receipts: list[str]
    messages: int


def sqs_client(queue_url: str) -> Any:
    """A boto3 SQS client; its endpoint follows boto3's own resolution (``AWS_ENDPOINT_URL_SQS``
    for a local server), its region the queue URL's where it names one."""
    import boto3
    from botocore.config import Config

    region = None
    host = urllib.parse.urlparse(queue_url).hostname or ""
    parts = host.split(".")
    if len(parts) >= 4 and parts[0] == "sqs":  # sqs.<region>.amazonaws.com
        region = parts[1]
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5)
    return boto3.session.Session().client("sqs", region_name=region, config=config)


def acknowledge(sqs: Any, queue_url: str, receipts: Iterable[str]) -> list[str]:
    """Delete messages by receipt handle; returns the error messages of those not deleted.

    A receipt that expired (its message was received again since) cannot be deleted; that copy
    is acknowledged by the tick that received it again.
    """
    receipts = list(receipts)
    errors = []
    for start in range(0, len(receipts), SQS_BATCH):
        batch = receipts[start : start + SQS_BATCH]
        response = sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(batch)],
        )
        errors += [f"{e.get('Code')}: {e.get('Message')}" for e in response.get("Failed", [])]
    return errors


def poll(
    sqs: Any,
    queue_url: str,
    store: Store,
    *,
    already_ingested: Callable[[ObjectInfo], bool] = lambda info: False,
    max_messages: int = 100,
    visibility_timeout_s: int = 300,
) -> Polled:
    """Receive what is waiting (no long poll: a tick must not block) and turn it into shards."""
    bucket = store.bucket if isinstance(store, S3Store) else None
    root = store.prefix + "/" if isinstance(store, S3Store) and store.prefix else ""
    found: dict[str, Found] = {}
    skipped: list[tuple[str, str]] = []
    receipts: list[str] = []
    messages = 0
    while messages < max_messages:
        response = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(SQS_BATCH, max_messages - messages),
            VisibilityTimeout=visibility_timeout_s,
            WaitTimeSeconds=0,
        )
        batch = response.get("Messages", [])
        if not batch:
            break
        messages += len(batch)
        for message in batch:
            receipts.append(message["ReceiptHandle"])
            try:
                events = parse_s3_events(message.get("Body", ""))
            except ValueError as exc:
                skipped.append((f"message {message.get('MessageId')}", f"ignored: {exc}"))
                continue
            for event in events:
                if bucket is not None and event.bucket != bucket:
                    skipped.append((f"s3://{event.bucket}/{event.key}", "another bucket"))
                    continue
                if not event.key.startswith(root):
                    skipped.append((f"s3://{event.bucket}/{event.key}", "outside the data root"))
                    continue
                key = event.key[len(root) :]
                if key in found:
                    continue  # several events for one key: one run for its current version
                where = f"s3://{event.bucket}/{event.key}"
                reason = _skip_reason(key)
                if reason is not None:
                    skipped.append((where, reason))
                    continue
                info = store.info(key)
                if info is None:
                    skipped.append((where, "deleted since the event was sent"))
                    continue
                reason = classify(info)
                if reason is not None:
                    skipped.append((where, reason))
                elif not already_ingested(info):
                    found[key] = Found(info)
    return Polled(list(found.values()), skipped, receipts, messages)


def _skip_reason(key: str) -> str | None:
    """classify() without the HEAD request: the name rules alone."""
    return classify(ObjectInfo(key, 1, ""))
