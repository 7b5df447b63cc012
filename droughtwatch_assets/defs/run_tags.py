"""Run tags that deployments act on.

- ``droughtwatch/run-kind`` (``ingest``, ``inference``, ``training``): the run queue's limits in
  ``dagster.yaml`` key on it (training one at a time, the rest in parallel).
- With ``DROUGHTWATCH_TRAINING_GPUS`` > 0, training runs also ask the run launcher for GPUs: the
  Kubernetes run launcher reads ``dagster-k8s/config`` (a GPU limit and the usual GPU-node
  toleration), the ECS run launcher ``ecs/run_task_kwargs`` (the GPU capacity provider that
  ``infra/`` creates, named by ``DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER``) and
  ``ecs/container_overrides`` (a GPU resource requirement). Other launchers ignore them. Unset
  (the default), training runs on whatever the launcher gives every run.
"""

from __future__ import annotations

import json

RUN_KIND = "droughtwatch/run-kind"


def run_tags(
    kind: str, *, gpus: int = 0, ecs_capacity_provider: str = "droughtwatch-gpu"
) -> dict[str, str]:
    tags = {RUN_KIND: kind}
    if gpus > 0:
        tags["dagster-k8s/config"] = json.dumps(
            {
                "container_config": {"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}},
                "pod_spec_config": {
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ]
                },
            }
        )
        tags["ecs/container_overrides"] = json.dumps(
            {"resourceRequirements": [{"type": "GPU", "value": str(gpus)}]}
        )
        tags["ecs/run_task_kwargs"] = json.dumps(
            {"capacityProviderStrategy": [{"capacityProvider": ecs_capacity_provider, "weight": 1}]}
        )
    return tags
