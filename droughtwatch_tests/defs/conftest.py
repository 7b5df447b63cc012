"""Fixtures for the Dagster layer: code locations bound to throwaway data roots and lakes."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from droughtwatch_assets.settings import Settings


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        data_root=str(tmp_path / "data"),
        lake=str(tmp_path / "lake"),
        s3_endpoint_url=None,
    )


@pytest.fixture
def s3_settings(tmp_path: Path, moto_endpoint: str, s3_bucket: str) -> Settings:
    return Settings(
        home=tmp_path,
        data_root=f"s3://{s3_bucket}/incoming",
        lake=f"s3://{s3_bucket}/lake",
        s3_endpoint_url=moto_endpoint,
    )


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst
