"""Run tags that deployments act on.

- ``droughtwatch/run-kind`` (``ingest``, ``inference``, ``training``): the run queue's limits in
  ``dagster.yaml`` key on it (training one at a time, the rest in parallel).
- With ``DROUGHTWATCH_TRAINING_GPUS`` > 0, training runs also ask the run launcher for GPUs: the
  Kubernetes run launcher reads ``dagster-k8s/config`` (a GPU limit and the usual GPU-node
  toleration), the ECS run launcher ``ecs/run_task_kwargs`` (the GPU capacity provider that
  ``infra/`` creates, named by ``DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER``) and
  ``ecs/container_overrides`` (a GPU resource requirement). Other launchers ignore them. Unset
  (the default), training runs on whatever the launcher gives every run.
- With ``DROUGHTWATCH_WORKER_IMAGE`` set (an image built with ``--build-arg TF=none``), ingest
  and inference runs ask for that image: the Kubernetes run launcher takes ``image`` from
  ``dagster-k8s/config``'s ``container_config``; on ECS, ``droughtwatch/image`` is read by
  :class:`droughtwatch_assets.defs.launchers.EcsRunLauncher` (``infra/ecs/dagster.yaml``).
  Docker's run launcher has no per-run image: there every run keeps the code location's.
"""

from __future__ import annotations

import json

RUN_KIND = "droughtwatch/run-kind"
IMAGE = "droughtwatch/image"
K8S_CONFIG = "dagster-k8s/config"


def run_tags(
    kind: str,
    *,
    gpus: int = 0,
    ecs_capacity_provider: str = "droughtwatch-gpu",
    image: str | None = None,
) -> dict[str, str]:
    tags = {RUN_KIND: kind}
    k8s: dict = {}
    if image:
        tags[IMAGE] = image
        k8s["container_config"] = {"image": image}
    if gpus > 0:
        k8s.setdefault("container_config", {})["resources"] = {
            "limits": {"nvidia.com/gpu": str(gpus)}
        }
        k8s["pod_spec_config"] = {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        }
        tags["ecs/container_overrides"] = json.dumps(
            {"resourceRequirements": [{"type": "GPU", "value": str(gpus)}]}
        )
        tags["ecs/run_task_kwargs"] = json.dumps(
            {"capacityProviderStrategy": [{"capacityProvider": ecs_capacity_provider, "weight": 1}]}
        )
    if k8s:
        tags[K8S_CONFIG] = json.dumps(k8s)
    return tags
