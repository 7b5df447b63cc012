# The ECS cluster: Dagster webserver, daemon and code server and the MLflow server as Fargate
# services; runs as ECS tasks launched by the daemon (EcsRunLauncher, ecs/dagster.yaml), on
# Fargate, or on the GPU capacity provider (gpu.tf) when a training run carries the GPU tags.
# Configuration reaches the containers as plain environment (names, URIs, ARNs) and as
# Secrets Manager references (anything holding a password); see README "Configuration flow".

locals {
  image            = "${aws_ecr_repository.main.repository_url}:${var.image_tag}"
  namespace        = "${var.name}.internal"
  code_server_host = "code-server.${local.namespace}"
  mlflow_internal  = "http://mlflow.${local.namespace}:5000"

  # Read by ecs/dagster.yaml in every Dagster process: webserver, daemon, code server and runs.
  instance_env = {
    DAGSTER_HOME                        = "/opt/dagster/home/ecs"
    AWS_DEFAULT_REGION                  = local.region
    DROUGHTWATCH_COMPUTE_LOGS_BUCKET    = aws_s3_bucket.data["dagster_logs"].id
    DROUGHTWATCH_ECS_RUN_FAMILY_PREFIX  = var.name
    DROUGHTWATCH_ECS_RUN_TASK_ROLE_ARN  = aws_iam_role.task["run"].arn
    DROUGHTWATCH_ECS_EXECUTION_ROLE_ARN = aws_iam_role.execution["dagster"].arn
    DROUGHTWATCH_ECS_RUN_LOG_GROUP      = aws_cloudwatch_log_group.ecs["runs"].name
    DROUGHTWATCH_DAGSTER_PG_URL_SECRET  = local.db_url_secret["dagster"]
    DROUGHTWATCH_METRICS_DB_URL_SECRET  = local.db_url_secret["droughtwatch"]
  }

  # Read by droughtwatch's code (settings.py, tracking.py): the code server and runs.
  code_env = {
    DROUGHTWATCH_HOME             = "/var/lib/droughtwatch"
    DROUGHTWATCH_DATA_ROOT        = local.data_root_uri
    DROUGHTWATCH_LAKE             = local.lake_uri
    DROUGHTWATCH_MLFLOW_ARTIFACTS = local.mlflow_artifacts_uri
    DROUGHTWATCH_SENSOR_INTERVAL  = "30"
    MLFLOW_TRACKING_URI           = local.mlflow_internal
    MLFLOW_DISABLE_TELEMETRY      = "true"
    # Runs load models without drawing MLflow's download bar into their logs.
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = "false"
    # Dagster's links to MLflow runs open the public UI, not the internal address.
    DROUGHTWATCH_MLFLOW_UI_URL = "https://${var.mlflow_hostname}"
    # Alerts' links open the public Dagster UI. Their destinations (DROUGHTWATCH_ALERT_*,
    # DROUGHTWATCH_SMTP_URL) are not set here: add them to the code server, see README.md.
    DROUGHTWATCH_DAGSTER_UI_URL = "https://${var.dagster_hostname}"
  }

  workspace_env = {
    DAGSTER_CODE_SERVER_HOST = local.code_server_host
    DAGSTER_CODE_SERVER_PORT = "4000"
  }

  pg_url_secret      = { name = "DAGSTER_PG_URL", valueFrom = local.db_url_secret["dagster"] }
  metrics_url_secret = { name = "DROUGHTWATCH_METRICS_DB_URL", valueFrom = local.db_url_secret["droughtwatch"] }

  services = {
    webserver = {
      command   = ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/opt/dagster/workspace.yaml"]
      port      = 3000
      env       = merge(local.instance_env, local.workspace_env)
      secrets   = [local.pg_url_secret]
      execution = "dagster"
      sg        = aws_security_group.webserver.id
      discovery = null
    }
    daemon = {
      command = ["dagster-daemon", "run", "-w", "/opt/dagster/workspace.yaml"]
      port    = null
      # The run launcher copies code_env onto each run (env_vars in ecs/dagster.yaml).
      env       = merge(local.instance_env, local.workspace_env, local.code_env)
      secrets   = [local.pg_url_secret]
      execution = "dagster"
      sg        = aws_security_group.daemon.id
      discovery = null
    }
    code_server = {
      command = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "droughtwatch_assets.definitions"]
      port    = 4000
      env = merge(local.instance_env, local.code_env, {
        # Runs use this image (the run launcher reads it from the code location).
        DAGSTER_CURRENT_IMAGE = local.image
        # Training runs ask for GPUs on the GPU capacity provider (defs/run_tags.py).
        DROUGHTWATCH_TRAINING_GPUS             = tostring(var.training_gpus)
        DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER = var.gpu_capacity_provider_name
        # Ingest and inference runs in the image built without TensorFlow, when there is one
        # (defs/launchers.py reads the run tag this sets); empty: every run uses local.image.
        DROUGHTWATCH_WORKER_IMAGE = var.worker_image_tag == "" ? "" : "${aws_ecr_repository.main.repository_url}:${var.worker_image_tag}"
        }, var.enable_s3_event_queue ? {
        DROUGHTWATCH_SQS_QUEUE_URL = aws_sqs_queue.drops[0].url
      } : {})
      secrets   = [local.pg_url_secret, local.metrics_url_secret]
      execution = "dagster"
      sg        = aws_security_group.code_server.id
      discovery = "code-server"
    }
    mlflow = {
      command = [
        "mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "2",
        "--default-artifact-root", local.mlflow_artifacts_uri, "--no-serve-artifacts",
        "--allowed-hosts", "${var.mlflow_hostname},mlflow.${local.namespace}:5000,mlflow.${local.namespace}",
        "--cors-allowed-origins", "https://${var.mlflow_hostname}",
      ]
      port = 5000
      env = {
        AWS_DEFAULT_REGION       = local.region
        MLFLOW_DISABLE_TELEMETRY = "true"
      }
      # mlflow server reads --backend-store-uri from this variable.
      secrets   = [{ name = "MLFLOW_BACKEND_STORE_URI", valueFrom = local.db_url_secret["mlflow"] }]
      execution = "mlflow"
      sg        = aws_security_group.mlflow.id
      discovery = "mlflow"
    }
  }
}

resource "aws_ecs_cluster" "main" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_cluster_capacity_providers" "main" {
  cluster_name       = aws_ecs_cluster.main.name
  capacity_providers = ["FARGATE", aws_ecs_capacity_provider.gpu.name]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_cloudwatch_log_group" "ecs" {
  for_each          = toset(["webserver", "daemon", "code_server", "mlflow", "runs", "db_setup"])
  name              = "/${var.name}/ecs/${replace(each.key, "_", "-")}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

# --- service discovery: code-server.<name>.internal and mlflow.<name>.internal ------------------

resource "aws_service_discovery_private_dns_namespace" "main" {
  name        = local.namespace
  description = "droughtwatch services inside the VPC"
  vpc         = aws_vpc.main.id
}

resource "aws_service_discovery_service" "main" {
  for_each = toset(["code-server", "mlflow"])
  name     = each.key

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.main.id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
}

# --- services -----------------------------------------------------------------------------------

resource "aws_ecs_task_definition" "service" {
  #checkov:skip=CKV_AWS_336:Dagster, TensorFlow and MLflow write caches and temporary files under HOME, /tmp and DAGSTER_HOME; the run tasks that the EcsRunLauncher registers cannot be made read-only either.
  for_each                 = local.services
  family                   = "${var.name}-${replace(each.key, "_", "-")}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_sizes[each.key].cpu
  memory                   = var.task_sizes[each.key].memory
  execution_role_arn       = aws_iam_role.execution[each.value.execution].arn
  task_role_arn            = aws_iam_role.task[each.key].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name         = replace(each.key, "_", "-")
    image        = local.image
    essential    = true
    command      = each.value.command
    portMappings = each.value.port == null ? [] : [{ containerPort = each.value.port, protocol = "tcp" }]
    environment  = [for k in sort(keys(each.value.env)) : { name = k, value = each.value.env[k] }]
    secrets      = each.value.secrets
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.ecs[each.key].name
        awslogs-region        = local.region
        awslogs-stream-prefix = replace(each.key, "_", "-")
      }
    }
    stopTimeout = 60
  }])
}

resource "aws_ecs_service" "main" {
  for_each        = local.services
  name            = replace(each.key, "_", "-")
  cluster         = aws_ecs_cluster.main.id
  task_definition = aws_ecs_task_definition.service[each.key].arn
  desired_count   = 1
  # A launch type, not a capacity provider strategy: the EcsRunLauncher copies the daemon's
  # launch type onto runs (FARGATE) and replaces it with the GPU strategy for training runs.
  launch_type            = "FARGATE"
  platform_version       = "LATEST"
  propagate_tags         = "SERVICE"
  enable_execute_command = false
  # Exactly one daemon at any time: stop the old task before starting the new one.
  deployment_minimum_healthy_percent = each.key == "daemon" ? 0 : 100
  deployment_maximum_percent         = each.key == "daemon" ? 100 : 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [each.value.sg]
    assign_public_ip = false
  }

  dynamic "service_registries" {
    for_each = each.value.discovery == null ? [] : [each.value.discovery]
    content {
      registry_arn = aws_service_discovery_service.main[service_registries.value].arn
    }
  }

  dynamic "load_balancer" {
    for_each = contains(keys(aws_lb_target_group.ui), each.key) ? [each.key] : []
    content {
      target_group_arn = aws_lb_target_group.ui[load_balancer.value].arn
      container_name   = replace(each.key, "_", "-")
      container_port   = each.value.port
    }
  }

  depends_on = [aws_lb_listener.https, aws_iam_role_policy.execution]
}

# --- one-shot: create the databases and their roles --------------------------------------------

# Run once after the first apply, and again after replacing a password (README). Idempotent:
# creates or updates each role's password, creates its database if missing. Connection settings
# come from libpq's PG* variables.
locals {
  db_setup_script = <<-PY
    import os
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect("")
    conn.autocommit = True
    cur = conn.cursor()
    for role in os.environ["DB_ROLES"].split(","):
        ident = sql.Identifier(role)
        password = sql.Literal(os.environ[role.upper() + "_DB_PASSWORD"])
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD {}").format(ident, password))
        cur.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (role,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
        print("role and database ready:", role)
  PY
}

resource "aws_ecs_task_definition" "db_setup" {
  #checkov:skip=CKV_AWS_336:Same image as the services (see aws_ecs_task_definition.service); a one-shot task.
  family                   = "${var.name}-db-setup"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution["db_setup"].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name      = "db-setup"
    image     = local.image
    essential = true
    command   = ["python", "-c", local.db_setup_script]
    environment = [
      { name = "PGHOST", value = aws_db_instance.main.address },
      { name = "PGPORT", value = "5432" },
      { name = "PGDATABASE", value = "postgres" },
      { name = "PGSSLMODE", value = "require" },
      { name = "DB_ROLES", value = join(",", sort(keys(local.db_roles))) },
    ]
    secrets = concat(
      [
        { name = "PGUSER", valueFrom = "${aws_db_instance.main.master_user_secret[0].secret_arn}:username::" },
        { name = "PGPASSWORD", valueFrom = "${aws_db_instance.main.master_user_secret[0].secret_arn}:password::" },
      ],
      [for role in sort(keys(local.db_roles)) : {
        name      = "${upper(role)}_DB_PASSWORD"
        valueFrom = "${aws_secretsmanager_secret.db[role].arn}:password::"
      }],
    )
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.ecs["db_setup"].name
        awslogs-region        = local.region
        awslogs-stream-prefix = "db-setup"
      }
    }
  }])
}
