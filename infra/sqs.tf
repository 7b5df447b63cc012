# Optional (enable_s3_event_queue): the drops bucket announces every new object on an SQS queue;
# with DROUGHTWATCH_SQS_QUEUE_URL set, the drop sensor reads these events instead of listing
# the bucket. Messages the sensor fails on 5 times move to the dead-letter queue.

locals {
  event_queue_count = var.enable_s3_event_queue ? 1 : 0
}

resource "aws_sqs_queue" "drops_dlq" {
  count                     = local.event_queue_count
  name                      = "${var.name}-drops-events-dlq"
  kms_master_key_id         = aws_kms_key.main.arn
  message_retention_seconds = 1209600 # 14 days, the most SQS keeps
}

resource "aws_sqs_queue" "drops" {
  count                      = local.event_queue_count
  name                       = "${var.name}-drops-events"
  kms_master_key_id          = aws_kms_key.main.arn
  message_retention_seconds  = 345600 # 4 days
  visibility_timeout_seconds = 300    # longer than a sensor tick takes to handle a batch
  receive_wait_time_seconds  = 10     # long polling
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.drops_dlq[0].arn
    maxReceiveCount     = 5
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "drops_dlq" {
  count     = local.event_queue_count
  queue_url = aws_sqs_queue.drops_dlq[0].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.drops[0].arn]
  })
}

# Only the drops bucket of this account may send to the queue.
resource "aws_sqs_queue_policy" "drops" {
  count     = local.event_queue_count
  queue_url = aws_sqs_queue.drops[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DropsBucketSendsObjectCreatedEvents"
      Effect    = "Allow"
      Principal = { Service = "s3.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.drops[0].arn
      Condition = {
        ArnEquals    = { "aws:SourceArn" = aws_s3_bucket.data["drops"].arn }
        StringEquals = { "aws:SourceAccount" = local.account_id }
      }
    }]
  })
}

resource "aws_s3_bucket_notification" "drops" {
  count  = local.event_queue_count
  bucket = aws_s3_bucket.data["drops"].id

  queue {
    queue_arn     = aws_sqs_queue.drops[0].arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = "data/" # the data root (DROUGHTWATCH_DATA_ROOT)
  }

  depends_on = [aws_sqs_queue_policy.drops]
}
