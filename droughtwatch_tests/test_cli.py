"""The `droughtwatch` command in-process: sample data to a local folder and to S3."""

from __future__ import annotations

from pathlib import Path

from droughtwatch_assets.cli import main
from droughtwatch_assets.core.tfrecord import decode_shard
from droughtwatch_assets.storage import open_store


def test_sample_data_to_s3_is_deterministic(tmp_path: Path, moto_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    monkeypatch.setenv("DROUGHTWATCH_S3_ENDPOINT_URL", moto_endpoint)
    args = ["sample-data", "--train", "120", "--val", "60", "--records-per-shard", "60"]
    assert (
        main([*args, "--drops", "2", "--records-per-drop", "30", "--dest", f"s3://{s3_bucket}/a"])
        == 0
    )
    assert main([*args, "--dest", str(tmp_path / "local")]) == 0
    s3 = open_store(f"s3://{s3_bucket}/a", endpoint_url=moto_endpoint)
    assert [i.key for i in s3.list("")] == [
        "drops/2024-08-01/part-r-00000",
        "drops/2024-08-02/part-r-00000",
        "train/part-r-00000",
        "train/part-r-00001",
        "val/part-r-00000",
    ]
    local = open_store(str(tmp_path / "local"))
    # Same seed, same bytes, wherever they are written.
    assert s3.read_bytes("train/part-r-00001") == local.read_bytes("train/part-r-00001")
    shard = decode_shard(s3.read_bytes("drops/2024-08-02/part-r-00000"), "drop")
    assert len(shard) == 30 and set(shard.labels.tolist()) <= {0, 1, 2, 3}


def test_home_prepares_the_embedded_instance(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["home"]) == 0
    assert "telemetry" in (tmp_path / "dagster" / "dagster.yaml").read_text()
    assert f"DAGSTER_HOME={tmp_path / 'dagster'}" in capsys.readouterr().out
