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
            # An automation-condition sensor targets assets, not jobs.
            "jobs": sorted(j.name for j in s.jobs) if s.has_jobs else [],
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


def test_build_definitions_takes_everything_from_the_settings_it_is_given(tmp_path, monkeypatch):
    """The environment of the importing process is not what counts: two Settings, two code
    locations, each with its own sensor interval, batch size, GPU tags and resources; values
    read from the environment reach resources as EnvVar (their names), others as values."""
    from droughtwatch_assets.settings import Settings

    for name in ("DATA_ROOT", "SENSOR_INTERVAL", "TRAINING_GPUS"):
        monkeypatch.delenv(f"DROUGHTWATCH_{name}", raising=False)
    monkeypatch.setenv("DROUGHTWATCH_METRICS_DB_URL", "postgresql://u:pw@db/metrics")
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path / "env"))
    from_env = Settings.from_env()
    given = Settings.from_env(
        {
            "DROUGHTWATCH_HOME": str(tmp_path),
            "DROUGHTWATCH_SENSOR_INTERVAL": "7",
            "DROUGHTWATCH_TRAINING_GPUS": "2",
            "DROUGHTWATCH_METRICS_DB_URL": "sqlite:///elsewhere.db",
        }
    )
    defs = build_definitions(given)
    assert defs.get_sensor_def("drop_sensor").minimum_interval_seconds == 6  # 7 s, less jitter
    limits = json.loads(defs.resolve_job_def("training_job").tags["dagster-k8s/config"])
    assert limits["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert defs.resources["metrics_db"].url == "sqlite:///elsewhere.db"
    assert defs.resources["storage"].data_root == str(tmp_path / "data")

    for name in ("ingest_job", "drop_job", "rescore_job", "drift_summary_job", "training_job"):
        assert "droughtwatch/image" not in defs.resolve_job_def(name).tags, name

    worker = "registry.example/droughtwatch:worker"
    defs = build_definitions(
        Settings.from_env({"DROUGHTWATCH_HOME": str(tmp_path), "DROUGHTWATCH_WORKER_IMAGE": worker})
    )
    for name in ("ingest_job", "drop_job", "rescore_job", "drift_summary_job"):
        tags = defs.resolve_job_def(name).tags
        assert tags["droughtwatch/image"] == worker, name
        assert json.loads(tags["dagster-k8s/config"]) == {"container_config": {"image": worker}}
    assert "droughtwatch/image" not in defs.resolve_job_def("training_job").tags
    # The drop sensor targets the very jobs the location defines (no second drop_job).
    sensor_jobs = {t.job_name for t in defs.get_sensor_def("drop_sensor").targets}
    assert sensor_jobs == {"ingest_job", "drop_job"}

    defs = build_definitions(from_env)
    assert defs.get_sensor_def("drop_sensor").minimum_interval_seconds == 29  # 30 s
    assert "dagster-k8s/config" not in defs.resolve_job_def("training_job").tags
    assert defs.resources["metrics_db"].url == dg.EnvVar("DROUGHTWATCH_METRICS_DB_URL")
    assert defs.resources["storage"].data_root == str(tmp_path / "env" / "data")


def test_every_asset_has_an_owner_and_a_link_to_its_code():
    from droughtwatch_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        assert spec.owners and spec.owners[0].startswith("team:"), key
        references = spec.metadata["dagster/code_references"].code_references
        assert any(
            Path(ref.file_path).is_relative_to(Path(__file__).parents[2] / "droughtwatch_assets")
            for ref in references
        ), (key, references)


def test_every_sensor_and_schedule_runs_from_the_start():
    """What `make dev` promises: the drop sensor, the retrain sensor, the daily schedule and
    declarative automation all run without anyone switching them on in the UI."""
    from droughtwatch_assets.definitions import defs

    repo = defs.get_repository_def()
    sensors = {s.name: s.default_status for s in repo.sensor_defs}
    assert sensors == {
        "drop_sensor": dg.DefaultSensorStatus.RUNNING,
        "retrain_on_new_labels": dg.DefaultSensorStatus.RUNNING,
        "default_automation_condition_sensor": dg.DefaultSensorStatus.RUNNING,
        "run_failure_alert": dg.DefaultSensorStatus.RUNNING,
        "check_alerts": dg.DefaultSensorStatus.RUNNING,
    }
    assert {s.name: s.default_status for s in repo.schedule_defs} == {
        "baseline_daily": dg.DefaultScheduleStatus.RUNNING
    }
