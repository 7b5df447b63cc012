# Outputs, each used in README.md.

output "ecr_repository_url" {
  description = "Where to push the image: docker push <this>:<image_tag>."
  value       = aws_ecr_repository.main.repository_url
}

output "alb_dns_name" {
  description = "DNS name of the load balancer: point dagster_hostname and mlflow_hostname at it (CNAME or alias) unless route53_zone_id is set."
  value       = aws_lb.main.dns_name
}

output "dagster_url" {
  description = "The Dagster UI (signs in through Cognito)."
  value       = "https://${var.dagster_hostname}"
}

output "mlflow_url" {
  description = "The MLflow UI (signs in through Cognito)."
  value       = "https://${var.mlflow_hostname}"
}

output "cognito_user_pool_id" {
  description = "The Cognito user pool whose users may open the UIs: aws cognito-idp admin-create-user --user-pool-id <this> ..."
  value       = aws_cognito_user_pool.main.id
}

output "ecs_cluster_name" {
  description = "The ECS cluster of the services and runs."
  value       = aws_ecs_cluster.main.name
}

output "db_setup_command" {
  description = "Runs the one-shot task that creates the databases dagster, mlflow and droughtwatch and their roles."
  value = join(" ", [
    "aws ecs run-task --region ${local.region} --cluster ${aws_ecs_cluster.main.name}",
    "--launch-type FARGATE --task-definition ${aws_ecs_task_definition.db_setup.family}",
    "--network-configuration 'awsvpcConfiguration={subnets=[${join(",", aws_subnet.private[*].id)}],securityGroups=[${aws_security_group.db_setup.id}],assignPublicIp=DISABLED}'",
  ])
}

output "data_root" {
  description = "DROUGHTWATCH_DATA_ROOT: where to upload raw shards (train/, val/, drops/DATE/)."
  value       = local.data_root_uri
}

output "lake" {
  description = "DROUGHTWATCH_LAKE: where the assets store their outputs."
  value       = local.lake_uri
}

output "mlflow_artifacts" {
  description = "DROUGHTWATCH_MLFLOW_ARTIFACTS: the MLflow artifact root."
  value       = local.mlflow_artifacts_uri
}

output "drops_queue_url" {
  description = "The S3 event queue of the drops bucket (DROUGHTWATCH_SQS_QUEUE_URL), null when enable_s3_event_queue is false."
  value       = var.enable_s3_event_queue ? aws_sqs_queue.drops[0].url : null
}

output "code_server_env" {
  description = "The plain environment of the code server task, as set (secrets are listed by name only): what the code sees."
  value = merge(local.services["code_server"].env, {
    for s in local.services["code_server"].secrets : s.name => "(from Secrets Manager)"
  })
}
