"""The tiers stay what their names say: core is pure, pipeline and adapters know no Dagster.

Each tier's modules are imported in a fresh interpreter, which then reports what came with them.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import droughtwatch_assets

PACKAGE = droughtwatch_assets.__path__[0]


def _modules(tier: str) -> list[str]:
    return [
        f"droughtwatch_assets.{tier}.{m.name}"
        for m in pkgutil.iter_modules([f"{PACKAGE}/{tier}"])
    ]


def _imported_with(modules: list[str], suspects: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(','.join(s for s in {suspects!r} if s in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [s for s in out.stdout.strip().split(",") if s]


@pytest.mark.parametrize(
    ("tier", "forbidden"),
    [
        # Pure: no orchestration, no network or cloud clients, no databases, no progress bars.
        ("core", ("dagster", "boto3", "urllib.request", "http.client", "sqlalchemy", "tqdm",
                  "mlflow")),
        # The data path and the I/O adapters work without Dagster (the CLI's benchmarks and
        # tests use them alone).
        ("pipeline", ("dagster", "mlflow")),
        ("adapters", ("dagster",)),
    ],
)  # fmt: skip
def test_a_tier_imports_nothing_above_it(tier: str, forbidden: tuple[str, ...]):
    modules = _modules(tier)
    assert len(modules) >= 5, modules
    assert _imported_with(modules, forbidden) == []


def test_what_the_command_needs_before_its_workers_start_imports_no_data_libraries():
    """`droughtwatch discover --materialize` lists the data root and the lake, and registers
    partitions, while its fork server imports the data path: none of that may pull in pandas,
    Arrow or xarray (0.6-0.8 s on the command's critical path)."""
    modules = [
        "droughtwatch_assets.cli",
        "droughtwatch_assets.runs",
        "droughtwatch_assets.pipeline.discovery",
        "droughtwatch_assets.defs.partitions",
    ]
    assert _imported_with(modules, ("pandas", "pyarrow", "xarray")) == []


def test_the_layouts_suffixes_are_the_lakes_encodings():
    from droughtwatch_assets.pipeline import lake, layout

    assert {a: lake.SUFFIXES[kind] for a, kind in lake.KINDS.items()} == layout.OBJECT_SUFFIXES
