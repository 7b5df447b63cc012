"""The Dagster UI's main pages, rendered by a real browser (Debian's headless Chromium, which
`make tools` installs where apt-get is available), on a webserver started as `make dev` starts
it: the catalog lists every asset, the lineage of batch_predictions shows the serving model, the
Automation page lists every sensor. Skipped, saying so, where no Chromium is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from droughtwatch_tests.conftest import free_port
from droughtwatch_tests.processes import STATES, ask_graphql, plain_env

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _rendered(url: str) -> str:
    """The page's DOM once its scripts have run (15 s of virtual time)."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (make tools installs it)")
def test_the_main_pages_show_the_graph_and_the_automation(tmp_path, serve):
    home = tmp_path / "home"
    env = {**plain_env(), "DROUGHTWATCH_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    subprocess.run([str(BIN / "droughtwatch"), "home"], env=env, check=True, capture_output=True)
    port = free_port()
    log = tmp_path / "web.log"
    proc = serve(
        [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
         "-p", str(port)],
        home / "dagster", env, log,
    )  # fmt: skip
    ask_graphql(port, STATES, proc, log)  # serving the code location
    base = f"http://127.0.0.1:{port}"

    catalog = _rendered(f"{base}/assets")
    for asset in ("raw_tfrecords", "filtered_images", "spectral_indices", "training_corpus",
                  "trained_model", "registered_model", "serving_model", "batch_predictions",
                  "monitoring_metrics", "drift_by_drop_date"):  # fmt: skip
        assert asset in catalog, f"{asset} not in the catalog page"
    lineage = _rendered(f"{base}/assets/batch_predictions?view=lineage")
    assert "serving_model" in lineage and "filtered_images" in lineage
    automation = _rendered(f"{base}/automation")
    for sensor in ("drop_sensor", "retrain_on_new_labels", "run_failure_alert", "check_alerts",
                   "baseline_daily"):  # fmt: skip
        assert sensor in automation, f"{sensor} not on the Automation page"
