"""Run launchers that honour a run's image tag (``droughtwatch/image``, defs/run_tags.py).

Dagster's Kubernetes run launcher already takes a run's image from its ``dagster-k8s/config``
tag. Its ECS run launcher gives every run the code location's image; ``get_image_for_run`` is
its documented hook for choosing another. Ingest and inference runs tagged with an image built
without TensorFlow then start as tasks of that image (a task definition per job, so one
registration per job, not one per run).
"""

from __future__ import annotations

from typing import Any

from dagster_aws.ecs import EcsRunLauncher as _EcsRunLauncher

from droughtwatch_assets.defs.run_tags import IMAGE


class EcsRunLauncher(_EcsRunLauncher):
    """Dagster's ECS run launcher; a run tagged ``droughtwatch/image`` runs in that image."""

    def get_image_for_run(self, context: Any) -> str | None:
        return context.dagster_run.tags.get(IMAGE) or super().get_image_for_run(context)
