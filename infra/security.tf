# Security groups, one per role, with every rule spelled out:
#   clients -> alb (443, 80 redirect) -> webserver:3000, mlflow:5000
#   webserver, daemon -> code_server:4000; runs share the daemon's group (the ECS run launcher
#   gives a run its launcher's network configuration) and reach mlflow:5000 and the database.
#   Every task and the GPU instances reach AWS APIs and ECR over 443 (NAT, S3 endpoint).

locals {
  # Groups whose members talk to PostgreSQL.
  db_clients = {
    webserver   = aws_security_group.webserver.id
    daemon      = aws_security_group.daemon.id
    code_server = aws_security_group.code_server.id
    mlflow      = aws_security_group.mlflow.id
    db_setup    = aws_security_group.db_setup.id
  }
  # Groups whose members call AWS APIs, ECR and S3 over HTTPS.
  https_clients = merge(local.db_clients, { gpu_instances = aws_security_group.gpu_instances.id })
}

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Load balancer in front of the Dagster and MLflow UIs"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "webserver" {
  name        = "${var.name}-webserver"
  description = "Dagster webserver: from the load balancer only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "daemon" {
  name        = "${var.name}-daemon-and-runs"
  description = "Dagster daemon and the run tasks it launches"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "code_server" {
  name        = "${var.name}-code-server"
  description = "Dagster code server (gRPC): from the webserver and the daemon only"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "mlflow" {
  name        = "${var.name}-mlflow"
  description = "MLflow tracking server: from the load balancer, the code server and runs"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "db" {
  name        = "${var.name}-db"
  description = "PostgreSQL: from the Dagster services, runs, MLflow and the setup task"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "db_setup" {
  #checkov:skip=CKV2_AWS_5:Attached when the one-shot task runs (aws ecs run-task, output db_setup_command), not to a standing resource.
  name        = "${var.name}-db-setup"
  description = "One-shot task that creates the databases and their roles"
  vpc_id      = aws_vpc.main.id
}

resource "aws_security_group" "gpu_instances" {
  name        = "${var.name}-gpu-instances"
  description = "GPU container instances: no inbound; tasks on them use their own ENIs and groups"
  vpc_id      = aws_vpc.main.id
}

# --- load balancer ------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from clients"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers with a redirect to HTTPS (alb.tf); nothing is served over HTTP.
  for_each          = toset(var.alb_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from clients, redirected to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_egress_rule" "alb_to_webserver" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the Dagster webserver"
  referenced_security_group_id = aws_security_group.webserver.id
  ip_protocol                  = "tcp"
  from_port                    = 3000
  to_port                      = 3000
}

resource "aws_vpc_security_group_egress_rule" "alb_to_mlflow" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the MLflow server"
  referenced_security_group_id = aws_security_group.mlflow.id
  ip_protocol                  = "tcp"
  from_port                    = 5000
  to_port                      = 5000
}

# The load balancer calls the Cognito token and user-info endpoints (public) to authenticate.
resource "aws_vpc_security_group_egress_rule" "alb_to_cognito" {
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS to the Cognito endpoints (authenticate-cognito)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# --- services -----------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "webserver_from_alb" {
  security_group_id            = aws_security_group.webserver.id
  description                  = "Dagster UI from the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 3000
  to_port                      = 3000
}

resource "aws_vpc_security_group_ingress_rule" "code_server" {
  for_each = {
    webserver = aws_security_group.webserver.id
    daemon    = aws_security_group.daemon.id
  }
  security_group_id            = aws_security_group.code_server.id
  description                  = "gRPC from the Dagster ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 4000
  to_port                      = 4000
}

resource "aws_vpc_security_group_egress_rule" "to_code_server" {
  for_each = {
    webserver = aws_security_group.webserver.id
    daemon    = aws_security_group.daemon.id
  }
  security_group_id            = each.value
  description                  = "gRPC to the code server"
  referenced_security_group_id = aws_security_group.code_server.id
  ip_protocol                  = "tcp"
  from_port                    = 4000
  to_port                      = 4000
}

resource "aws_vpc_security_group_ingress_rule" "mlflow" {
  for_each = {
    alb         = aws_security_group.alb.id
    code_server = aws_security_group.code_server.id
    runs        = aws_security_group.daemon.id
  }
  security_group_id            = aws_security_group.mlflow.id
  description                  = "MLflow from the ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5000
  to_port                      = 5000
}

resource "aws_vpc_security_group_egress_rule" "to_mlflow" {
  for_each = {
    code_server = aws_security_group.code_server.id
    runs        = aws_security_group.daemon.id
  }
  security_group_id            = each.value
  description                  = "To the MLflow tracking server"
  referenced_security_group_id = aws_security_group.mlflow.id
  ip_protocol                  = "tcp"
  from_port                    = 5000
  to_port                      = 5000
}

# --- database -----------------------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "db" {
  for_each                     = local.db_clients
  security_group_id            = aws_security_group.db.id
  description                  = "PostgreSQL from the ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

resource "aws_vpc_security_group_egress_rule" "to_db" {
  for_each                     = local.db_clients
  security_group_id            = each.value
  description                  = "To PostgreSQL"
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
}

# --- AWS APIs -----------------------------------------------------------------------------------

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = local.https_clients
  security_group_id = each.value
  description       = "HTTPS to AWS APIs, ECR and S3 (NAT gateway, S3 endpoint)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}
