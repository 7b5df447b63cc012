"""The code location as a whole: it loads, and its graph matches the reviewed snapshot.

Regenerate the snapshot after an intended change with
``DROUGHTWATCH_UPDATE_SNAPSHOTS=1 pytest droughtwatch_tests/defs/test_definitions.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from droughtwatch_assets.definitions import build_definitions

SNAPSHOT = Path(__file__).resolve().parents[1] / "snapshots" / "asset_graph.json"


def graph_snapshot(defs: dg.Definitions) -> dict:
    checks: dict[str, list] = {}
    for assets_def in defs.assets or []:
        for spec in getattr(assets_def, "check_specs", []):
            checks.setdefault(spec.asset_key.to_user_string(), []).append(
                [spec.name, spec.blocking]
            )
    assets = {
        spec.key.to_user_string(): {
            "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
            "group": spec.group_name,
            "partitions": getattr(spec.partitions_def, "name", None),
            "checks": sorted(checks.get(spec.key.to_user_string(), [])),
            "automation": str(spec.automation_condition) if spec.automation_condition else None,
            "kinds": sorted(spec.kinds),
        }
        for spec in defs.resolve_all_asset_specs()
    }
    sensors = {
        s.name: {
            "jobs": sorted(j.name for j in s.jobs),
            "default_status": s.default_status.value,
            "minimum_interval_seconds": s.minimum_interval_seconds,
        }
        for s in defs.sensors or []
    }
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    return {"assets": dict(sorted(assets.items())), "sensors": sensors, "jobs": jobs}


def test_code_location_loads_and_validates():
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)


def test_asset_graph_matches_snapshot():
    snapshot = graph_snapshot(build_definitions())
    if os.environ.get("DROUGHTWATCH_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
    assert snapshot == json.loads(SNAPSHOT.read_text()), (
        "the asset graph changed; if intended, regenerate with DROUGHTWATCH_UPDATE_SNAPSHOTS=1"
    )
