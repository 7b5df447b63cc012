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
