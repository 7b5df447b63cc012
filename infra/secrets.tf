# Database credentials of the three application roles, one secret each, as JSON:
#   {"username": ..., "password": ..., "url": <SQLAlchemy URL with the password>}
# Task definitions inject single keys (valueFrom "<secret arn>:url::"), so no password is ever
# in a task's plain environment or in ecs/dagster.yaml. The passwords are generated here and so
# are in the Terraform state: keep the state in an encrypted, access-controlled backend.

locals {
  db_host = aws_db_instance.main.address
  db_roles = {
    # database/role => URL scheme the client expects
    dagster      = "postgresql"          # Dagster (DAGSTER_PG_URL)
    mlflow       = "postgresql+psycopg2" # MLflow backend store
    droughtwatch = "postgresql+psycopg2" # DROUGHTWATCH_METRICS_DB_URL
  }
  # "<arn>:url::" selects the JSON key url of the secret's current version.
  db_url_secret = { for role, _ in local.db_roles : role => "${aws_secretsmanager_secret.db[role].arn}:url::" }
}

resource "random_password" "db" {
  for_each = local.db_roles
  length   = 40
  special  = false # the password sits inside URLs
}

resource "aws_secretsmanager_secret" "db" {
  #checkov:skip=CKV2_AWS_57:The URL in the secret is derived from the password; rotate by replacing random_password.db[ROLE] (terraform apply -replace) and rerunning db-setup, see README.
  for_each                = local.db_roles
  name                    = "${var.name}/db/${each.key}"
  description             = "PostgreSQL role and database ${each.key}: username, password, url"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "db" {
  for_each  = local.db_roles
  secret_id = aws_secretsmanager_secret.db[each.key].id
  secret_string = jsonencode({
    username = each.key
    password = random_password.db[each.key].result
    url      = "${each.value}://${each.key}:${random_password.db[each.key].result}@${local.db_host}:5432/${each.key}?sslmode=require"
  })
}
