# Inputs. Every variable is documented in README.md ("Variables"); terraform.tfvars.example
# holds the ones without a default.

variable "name" {
  description = "Prefix of every resource name (buckets add account and region); at most 16 characters, as it also prefixes the task definitions of runs."
  type        = string
  default     = "droughtwatch"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.name))
    error_message = "name must be 2-16 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "aws_region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

# --- network ------------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC; split into two public and two private subnets."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr))
    error_message = "vpc_cidr must be a CIDR block such as 10.40.0.0/16."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for both AZs (cheaper) instead of one per AZ (survives an AZ outage)."
  type        = bool
  default     = true
}

# --- the UI -------------------------------------------------------------------------------------

variable "dagster_hostname" {
  description = "DNS name of the Dagster UI, e.g. dagster.example.org (covered by certificate_arn)."
  type        = string
}

variable "mlflow_hostname" {
  description = "DNS name of the MLflow UI, e.g. mlflow.example.org (covered by certificate_arn)."
  type        = string
}

variable "certificate_arn" {
  description = "ARN of an ACM certificate in aws_region covering dagster_hostname and mlflow_hostname."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "cognito_domain_prefix" {
  description = "Prefix of the Cognito hosted sign-in domain (<prefix>.auth.<region>.amazoncognito.com); globally unique."
  type        = string
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone to create the two UI alias records in; null to create the DNS records yourself."
  type        = string
  default     = null
}

variable "alb_ingress_cidrs" {
  description = "Client networks allowed to reach the load balancer (every request still signs in through Cognito)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "enable_waf" {
  description = "Put an AWS WAF web ACL (AWS managed common and known-bad-input rules) in front of the load balancer."
  type        = bool
  default     = true
}

# --- data ---------------------------------------------------------------------------------------

variable "drops_transition_days" {
  description = "Days after which raw shards in the drops bucket move to S3 Standard-IA (they are read once, at ingest)."
  type        = number
  default     = 30

  validation {
    condition     = var.drops_transition_days >= 30
    error_message = "S3 allows a transition to Standard-IA after 30 days at the earliest."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept in the versioned buckets."
  type        = number
  default     = 90
}

variable "enable_s3_event_queue" {
  description = "Send ObjectCreated events of the drops bucket to an SQS queue that the drop sensor reads instead of listing the bucket."
  type        = bool
  default     = true
}

# --- database -----------------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS instance class of the PostgreSQL server (databases dagster, mlflow, droughtwatch)."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major version of the RDS instance (minor versions upgrade automatically)."
  type        = string
  default     = "16"
}

variable "db_allocated_storage_gb" {
  description = "Initial storage of the RDS instance in GiB (grows automatically up to 10 times this)."
  type        = number
  default     = 50
}

variable "db_multi_az" {
  description = "Run the RDS instance with a synchronous standby in the second AZ (false halves the database cost, for a trial)."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days RDS keeps automated backups (point-in-time recovery window)."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be 1-35."
  }
}

variable "deletion_protection" {
  description = "Protect the RDS instance and the load balancer from deletion (set false before `terraform destroy`)."
  type        = bool
  default     = true
}

# --- containers ---------------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the droughtwatch image in the ECR repository that every task runs (tags are immutable)."
  type        = string
}

variable "worker_image_tag" {
  description = "Tag, in the same ECR repository, of the image built with --build-arg TF=none (no TensorFlow): ingest and inference runs start in it (DROUGHTWATCH_WORKER_IMAGE). Empty: they use image_tag like every run."
  type        = string
  default     = ""
}

variable "task_sizes" {
  description = "Fargate CPU units and memory (MiB) of each long-running service. Run sizes are in ecs/dagster.yaml (run_resources)."
  type = map(object({
    cpu    = number
    memory = number
  }))
  default = {
    webserver   = { cpu = 1024, memory = 2048 }
    daemon      = { cpu = 512, memory = 1024 }
    code_server = { cpu = 1024, memory = 4096 }
    mlflow      = { cpu = 512, memory = 2048 }
  }

  validation {
    condition     = length(setsubtract(["webserver", "daemon", "code_server", "mlflow"], keys(var.task_sizes))) == 0
    error_message = "task_sizes needs webserver, daemon, code_server and mlflow."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the logs of every task, the VPC flow logs and the WAF logs."
  type        = number
  default     = 365
}

# --- GPU capacity for training runs -------------------------------------------------------------

variable "training_gpus" {
  description = "GPUs each training run asks for (DROUGHTWATCH_TRAINING_GPUS on the code server); 0 runs training on Fargate CPUs."
  type        = number
  default     = 1

  validation {
    condition     = var.training_gpus >= 0 && floor(var.training_gpus) == var.training_gpus
    error_message = "training_gpus must be a whole number >= 0."
  }
}

variable "gpu_capacity_provider_name" {
  description = "Name of the ECS capacity provider of the GPU instances (DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER)."
  type        = string
  default     = "droughtwatch-gpu"
}

variable "gpu_instance_type" {
  description = "EC2 instance type of the GPU Auto Scaling group (must have at least training_gpus GPUs)."
  type        = string
  default     = "g4dn.xlarge"
}

variable "gpu_max_instances" {
  description = "Most GPU instances at once; the group scales to zero when no training run waits."
  type        = number
  default     = 1
}

variable "gpu_ami_ssm_parameter" {
  description = "SSM parameter holding the ECS GPU-optimised AMI id."
  type        = string
  default     = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

variable "gpu_root_volume_gb" {
  description = "Size of the GPU instances' encrypted root volume in GiB (the image is large)."
  type        = number
  default     = 100
}
