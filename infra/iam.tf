# Roles. Execution roles (what ECS itself does for a task: pull the image, read the task's
# secrets, write its logs) are per group of tasks so each reads only its own secrets; task roles
# (what the code in the task may do) are per service:
#   webserver    read compute logs; describe and stop run tasks (cancel a run)
#   daemon       launch, watch and stop run tasks; pass only the run roles; write compute logs
#   code_server  read drops, read/write lake and MLflow artifacts, write compute logs, read the
#                drops event queue (sensors are evaluated in the code server)
#   run          what a run needs: the code server's data access, no queue, no ECS
#   mlflow       the MLflow artifacts bucket only

locals {
  ecs_tasks_trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*" }
      }
    }]
  })

  bucket_arn       = { for key, bucket in aws_s3_bucket.data : key => bucket.arn }
  cluster_arn      = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:cluster/${var.name}"
  cluster_task_arn = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${var.name}/*"
  run_family_arn   = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${var.name}_*"

  # Secrets each execution role may read (ARNs without the ":key::" selector).
  execution_secrets = {
    dagster  = [aws_secretsmanager_secret.db["dagster"].arn, aws_secretsmanager_secret.db["droughtwatch"].arn]
    mlflow   = [aws_secretsmanager_secret.db["mlflow"].arn]
    db_setup = concat([for s in aws_secretsmanager_secret.db : s.arn], [aws_db_instance.main.master_user_secret[0].secret_arn])
  }
  execution_log_groups = {
    dagster  = [for k in ["webserver", "daemon", "code_server", "runs"] : aws_cloudwatch_log_group.ecs[k].arn]
    mlflow   = [aws_cloudwatch_log_group.ecs["mlflow"].arn]
    db_setup = [aws_cloudwatch_log_group.ecs["db_setup"].arn]
  }

  kms_data_statement = {
    Sid      = "UseTheDataKey"
    Effect   = "Allow"
    Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
    Resource = aws_kms_key.main.arn
  }

  # Data access shared by the code server and runs.
  data_statements = [
    {
      Sid      = "ListDataBuckets"
      Effect   = "Allow"
      Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
      Resource = [for k in ["drops", "lake", "mlflow", "dagster_logs"] : local.bucket_arn[k]]
    },
    {
      Sid      = "ReadDrops"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:GetObjectVersion"]
      Resource = "${local.bucket_arn["drops"]}/*"
    },
    {
      Sid      = "ReadWriteLakeAndModels"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
      Resource = ["${local.bucket_arn["lake"]}/*", "${local.bucket_arn["mlflow"]}/*"]
    },
    {
      Sid      = "WriteComputeLogs"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:PutObject"]
      Resource = "${local.bucket_arn["dagster_logs"]}/*"
    },
    local.kms_data_statement,
  ]
}

# --- execution roles ----------------------------------------------------------------------------

resource "aws_iam_role" "execution" {
  for_each           = local.execution_secrets
  name               = "${var.name}-exec-${replace(each.key, "_", "-")}"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy" "execution" {
  for_each = local.execution_secrets
  name     = "pull-image-read-secrets-write-logs"
  role     = aws_iam_role.execution[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "EcrLogin" # not resource-scoped by ECR
        Effect   = "Allow"
        Action   = "ecr:GetAuthorizationToken"
        Resource = "*"
      },
      {
        Sid      = "PullTheImage"
        Effect   = "Allow"
        Action   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
        Resource = aws_ecr_repository.main.arn
      },
      {
        Sid      = "WriteTaskLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = [for arn in local.execution_log_groups[each.key] : "${arn}:*"]
      },
      {
        Sid      = "ReadOwnSecrets"
        Effect   = "Allow"
        Action   = "secretsmanager:GetSecretValue"
        Resource = each.value
      },
      {
        Sid      = "DecryptSecretsAndImage"
        Effect   = "Allow"
        Action   = "kms:Decrypt"
        Resource = aws_kms_key.main.arn
      },
    ]
  })
}

# --- task roles ---------------------------------------------------------------------------------

resource "aws_iam_role" "task" {
  for_each           = toset(["webserver", "daemon", "code_server", "run", "mlflow"])
  name               = "${var.name}-task-${replace(each.key, "_", "-")}"
  assume_role_policy = local.ecs_tasks_trust
}

resource "aws_iam_role_policy" "webserver" {
  name = "read-compute-logs-cancel-runs"
  role = aws_iam_role.task["webserver"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadComputeLogs"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = local.bucket_arn["dagster_logs"]
      },
      {
        Sid      = "ReadComputeLogObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = "${local.bucket_arn["dagster_logs"]}/*"
      },
      {
        Sid       = "CancelRuns"
        Effect    = "Allow"
        Action    = ["ecs:DescribeTasks", "ecs:StopTask"]
        Resource  = local.cluster_task_arn
        Condition = { ArnEquals = { "ecs:cluster" = local.cluster_arn } }
      },
      local.kms_data_statement,
    ]
  })
}

resource "aws_iam_role_policy" "daemon" {
  name = "launch-and-watch-runs"
  role = aws_iam_role.task["daemon"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "RunRunTasksOnThisCluster"
        Effect    = "Allow"
        Action    = "ecs:RunTask"
        Resource  = ["${local.run_family_arn}:*", local.run_family_arn]
        Condition = { ArnEquals = { "ecs:cluster" = local.cluster_arn } }
      },
      {
        Sid       = "WatchAndStopRunTasks"
        Effect    = "Allow"
        Action    = ["ecs:DescribeTasks", "ecs:StopTask"]
        Resource  = local.cluster_task_arn
        Condition = { ArnEquals = { "ecs:cluster" = local.cluster_arn } }
      },
      {
        # Task definitions cannot be scoped by resource in IAM.
        Sid      = "RegisterRunTaskDefinitions"
        Effect   = "Allow"
        Action   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"]
        Resource = "*"
      },
      {
        Sid       = "TagRunTasksAtLaunch"
        Effect    = "Allow"
        Action    = "ecs:TagResource"
        Resource  = [local.cluster_task_arn, "${local.run_family_arn}:*"]
        Condition = { StringEquals = { "ecs:CreateAction" = ["RunTask", "RegisterTaskDefinition"] } }
      },
      {
        Sid      = "PassOnlyTheRunRoles"
        Effect   = "Allow"
        Action   = "iam:PassRole"
        Resource = [aws_iam_role.task["run"].arn, aws_iam_role.execution["dagster"].arn]
        Condition = {
          StringEquals = { "iam:PassedToService" = "ecs-tasks.amazonaws.com" }
        }
      },
      {
        # The ECS run launcher copies the daemon's subnets and security groups onto each run.
        Sid      = "ReadOwnNetworkInterface"
        Effect   = "Allow"
        Action   = "ec2:DescribeNetworkInterfaces"
        Resource = "*"
      },
      {
        # Run monitoring quotes a failed run's last log lines.
        Sid      = "ReadRunLogs"
        Effect   = "Allow"
        Action   = ["logs:GetLogEvents"]
        Resource = "${aws_cloudwatch_log_group.ecs["runs"].arn}:*"
      },
      {
        Sid      = "WriteComputeLogs"
        Effect   = "Allow"
        Action   = ["s3:PutObject", "s3:GetObject"]
        Resource = "${local.bucket_arn["dagster_logs"]}/*"
      },
      local.kms_data_statement,
    ]
  })
}

resource "aws_iam_role_policy" "code_server" {
  name = "data-and-drop-events"
  role = aws_iam_role.task["code_server"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(local.data_statements, var.enable_s3_event_queue ? [
      {
        Sid      = "ReadDropEvents"
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
        Resource = aws_sqs_queue.drops[0].arn
      },
    ] : [])
  })
}

resource "aws_iam_role_policy" "run" {
  name   = "data"
  role   = aws_iam_role.task["run"].id
  policy = jsonencode({ Version = "2012-10-17", Statement = local.data_statements })
}

resource "aws_iam_role_policy" "mlflow" {
  name = "artifacts"
  role = aws_iam_role.task["mlflow"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ListArtifacts"
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
        Resource = local.bucket_arn["mlflow"]
      },
      {
        Sid      = "ReadWriteArtifacts"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
        Resource = "${local.bucket_arn["mlflow"]}/*"
      },
      local.kms_data_statement,
    ]
  })
}

# --- GPU container instances --------------------------------------------------------------------

resource "aws_iam_role" "gpu_instance" {
  name = "${var.name}-gpu-instance"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

# What the ECS agent needs to join the cluster (the tasks use their own roles).
resource "aws_iam_role_policy_attachment" "gpu_instance_ecs" {
  role       = aws_iam_role.gpu_instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "gpu_instance" {
  name = "${var.name}-gpu-instance"
  role = aws_iam_role.gpu_instance.name
}
