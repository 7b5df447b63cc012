# GPU capacity for training runs: an Auto Scaling group of ECS GPU-optimised instances behind
# the capacity provider var.gpu_capacity_provider_name. ECS managed scaling starts an instance
# when a training run (ecs/run_task_kwargs tag, defs/run_tags.py) waits for a GPU and scales the
# group back to zero when none runs. Other runs stay on Fargate.

data "aws_ssm_parameter" "gpu_ami" {
  name = var.gpu_ami_ssm_parameter
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.name}-gpu-"
  image_id               = nonsensitive(data.aws_ssm_parameter.gpu_ami.value)
  instance_type          = var.gpu_instance_type
  vpc_security_group_ids = [aws_security_group.gpu_instances.id]
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.gpu_instance.arn
  }

  # IMDSv2 only; one hop, so containers cannot reach the instance's credentials.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.gpu_root_volume_gb
      volume_type           = "gp3"
      encrypted             = true # the account's EBS key: the Auto Scaling service role can use it without a key grant
      delete_on_termination = true
    }
  }

  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<CONFIG
    ECS_CLUSTER=${var.name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_AWSVPC_BLOCK_IMDS=true
    ECS_ENABLE_TASK_IAM_ROLE=true
    CONFIG
  EOT
  )

  tag_specifications {
    resource_type = "instance"
    tags          = { Name = "${var.name}-gpu" }
  }
}

resource "aws_autoscaling_group" "gpu" {
  name                  = "${var.name}-gpu"
  min_size              = 0
  max_size              = var.gpu_max_instances
  desired_capacity      = 0
  vpc_zone_identifier   = aws_subnet.private[*].id
  protect_from_scale_in = true # ECS decides which instance may go (managed termination protection)

  launch_template {
    id      = aws_launch_template.gpu.id
    version = "$Latest"
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  lifecycle {
    ignore_changes = [desired_capacity] # ECS managed scaling owns it
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = var.gpu_capacity_provider_name

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu.arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = var.gpu_max_instances
      instance_warmup_period    = 300
    }
  }
}
