"""Asset checks of the shard assets: declared per shard, evaluated per shard.

Every check of a shard asset is partitioned like the shards, and each evaluation is recorded
against one shard's partition, however many shards a run covers: the UI's check pages and
GraphQL then show which shard passed or failed.
"""

from __future__ import annotations

import warnings

import dagster as dg

from droughtwatch_assets.defs.partitions import shards


def specs(asset: str, checks: dict[str, str], blocking: set[str]) -> list[dg.AssetCheckSpec]:
    """Check specs partitioned like the shards: each result belongs to one shard.

    Partitioned checks are a preview feature of Dagster 1.13: without them a check result of a
    partitioned asset shows with partition "-" and cannot say which shard it is about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=asset,
                description=text,
                blocking=name in blocking,
                partitions_def=shards,
            )
            for name, text in checks.items()
        ]


def evaluation(
    asset: str,
    name: str,
    partition: str,
    *,
    passed: bool,
    blocking: bool,
    metadata: dict | None = None,
    description: str | None = None,
) -> dg.AssetCheckEvaluation:
    """One check's result on one shard, recorded against the shard's partition. A check that
    does not block only warns."""
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(asset),
        check_name=name,
        passed=bool(passed),
        partition=partition,
        blocking=blocking,
        metadata=metadata or {},
        description=description,
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
    )


def blocking_passed(results: list[dg.AssetCheckEvaluation]) -> bool:
    """Whether every blocking check passed: only then does the asset write to the lake."""
    return all(r.passed for r in results if r.blocking)
