"""`make mutation`'s report: mutmut's result lines grouped per module, with the score."""

from droughtwatch_tests.tools.mutation_report import module_of, parse, table

RESULTS = """\
    droughtwatch_assets.core.images.x_is_blank__mutmut_1: killed
    droughtwatch_assets.core.images.x_is_blank__mutmut_2: survived
    droughtwatch_assets.core.images.x_is_cloudy__mutmut_1: killed
    droughtwatch_assets.core.images.x_is_cloudy__mutmut_2: timeout
    droughtwatch_assets.pipeline.discovery.xǁDiscoveryCursorǁdumps__mutmut_2: no tests
    droughtwatch_assets.pipeline.discovery.x_discover__mutmut_9: not checked
"""


def test_results_are_grouped_per_module_and_scored():
    statuses = parse(RESULTS)
    assert len(statuses) == 6
    assert module_of(
        "droughtwatch_assets.pipeline.discovery.xǁDiscoveryCursorǁdumps__mutmut_2"
    ) == ("droughtwatch_assets.pipeline.discovery")
    lines = table(statuses).splitlines()
    assert lines[2] == "| droughtwatch_assets.core.images | 4 | 2 | 1 | 0 | 1 | 0 | 75% |"
    assert lines[3] == "| droughtwatch_assets.pipeline.discovery | 2 | 0 | 0 | 1 | 0 | 1 | - |"
    assert lines[4] == "| **all** | 6 | 2 | 1 | 1 | 1 | 1 | 75% |"


def test_the_slow_scope_replaces_only_what_is_mutated_and_which_tests_run(tmp_path):
    """`make mutation-slow`'s copy: the repository's [tool.mutmut] with the registry as the
    only mutated module and the training tests as the selection; every other setting and
    table kept, and a copy made again keeps the mutants/ an earlier run left."""
    import tomllib

    from droughtwatch_tests.tools.mutation_slow import REPO, copy_tree, slow_config

    original = (REPO / "pyproject.toml").read_text()
    ours = tomllib.loads(original)
    slow = tomllib.loads(slow_config(original))
    mutmut, base = slow["tool"]["mutmut"], ours["tool"]["mutmut"]
    assert mutmut["only_mutate"] == ["droughtwatch_assets/defs/registry/*"]
    tests = mutmut["pytest_add_cli_args_test_selection"]
    assert "droughtwatch_tests/defs/test_training_registry.py" in tests
    replaced = ("only_mutate", "pytest_add_cli_args_test_selection")
    kept = {k: v for k, v in mutmut.items() if k not in replaced}
    assert kept == {k: v for k, v in base.items() if k not in replaced}
    assert {k: v for k, v in slow.items() if k != "tool"} == {
        k: v for k, v in ours.items() if k != "tool"
    }
    assert slow["tool"]["ruff"] == ours["tool"]["ruff"]

    (tmp_path / "mutants").mkdir(parents=True)
    (tmp_path / "mutants" / "kept").write_text("an earlier run")
    (tmp_path / "stale.py").write_text("gone after the copy")
    copy_tree(tmp_path)
    assert (tmp_path / "mutants" / "kept").read_text() == "an earlier run"
    assert not (tmp_path / "stale.py").exists()
    assert (tmp_path / "droughtwatch_assets" / "defs" / "registry" / "assets.py").read_bytes() == (
        REPO / "droughtwatch_assets" / "defs" / "registry" / "assets.py"
    ).read_bytes()
    copied = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    assert copied["tool"]["mutmut"]["only_mutate"] == ["droughtwatch_assets/defs/registry/*"]
    assert not (tmp_path / ".venv").exists()  # ignored files stay behind
