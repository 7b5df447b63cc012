"""infra/ (AWS in Terraform) checked with what runs here: terraform fmt, checkov, and static
checks of variables, outputs, the ECS instance file and the environment the task definitions set.

Nothing here talks to AWS: terraform init/validate/plan need provider downloads, which this
machine cannot do (infra/README.md, "What was checked here and what was not"). The HCL is read
with small regular expressions over the files as written (no HCL parser is installed).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
README = INFRA / "README.md"
ECS_INSTANCE = INFRA / "ecs" / "dagster.yaml"
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"
SHARED_SECTIONS = (
    "storage",
    "run_coordinator",
    "concurrency",
    "run_retries",
    "run_monitoring",
    "telemetry",
)


def tf_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(INFRA.glob("*.tf"))}


def all_tf() -> str:
    return "\n".join(tf_files().values())


def block_body(text: str, start: int) -> str:
    """The text between the brace at or after ``start`` and its matching closing brace."""
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    raise AssertionError(f"unbalanced braces after offset {start}")


def blocks(kind: str) -> dict[str, str]:
    """Top-level ``variable "x" {...}`` / ``output "x" {...}`` blocks of infra/*.tf by name."""
    found = {}
    text = all_tf()
    for m in re.finditer(rf'^{kind} "([^"]+)" \{{', text, re.MULTILINE):
        found[m.group(1)] = block_body(text, m.start())
    return found


def local_map_keys(name: str) -> set[str]:
    """Upper-case keys of the map ``<name> = { ... }`` in ecs.tf's locals."""
    text = tf_files()["ecs.tf"]
    m = re.search(rf"^\s+{name} = \{{", text, re.MULTILINE)
    assert m, f"ecs.tf has no local {name}"
    return set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", block_body(text, m.start()), re.MULTILINE))


def service_env(service: str) -> set[str]:
    """Names a service's container gets: env (locals merged in + literal keys) and secrets."""
    text = tf_files()["ecs.tf"]
    services = block_body(text, re.search(r"^\s+services = \{", text, re.MULTILINE).start())
    m = re.search(rf"^    {service} = \{{", services, re.MULTILINE)
    assert m, f"ecs.tf local.services has no {service}"
    body = block_body(services, m.start())
    names = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", body, re.MULTILINE))
    names |= set(re.findall(r'name = "([A-Z][A-Z0-9_]+)"', body))
    for local in ("instance_env", "code_env", "workspace_env"):
        if f"local.{local}" in body:
            names |= local_map_keys(local)
    for local in re.findall(r"local\.(\w+_secret)\b", body):
        names |= set(re.findall(rf'{local}\s+= {{ name = "([A-Z_]+)"', text))
    return names


# --- terraform fmt and checkov -------------------------------------------------------------------


def test_terraform_fmt_check_passes():
    terraform = shutil.which("terraform") or "/usr/local/bin/terraform"
    assert Path(terraform).exists(), "terraform is not installed (CI installs it; see infra/README)"
    proc = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(INFRA)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"},
        timeout=60,
    )
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


def run_checkov() -> dict:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make tools`"
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(INFRA), "--framework", "terraform", "--compact"]
        + ["-o", "json", "--skip-download"],  # no network: no external modules, no guidelines
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    assert isinstance(report, dict), "expected one report (terraform framework only)"
    return report


def test_checkov_has_no_failed_checks_and_every_skip_has_a_reason():
    report = run_checkov()
    results = report["results"]
    assert report["summary"]["parsing_errors"] == 0, results.get("parsing_errors")
    assert report["summary"]["resource_count"] > 100, "checkov scanned far fewer resources"
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in results["failed_checks"]
    ]
    assert not failed, "checkov failed checks (fix them or skip inline with a reason):\n" + (
        "\n".join(failed)
    )
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in results["skipped_checks"]
        if len((c["check_result"].get("suppress_comment") or "").strip()) < 20
    ]
    assert not unexplained, f"skipped without a reason: {unexplained}"


def test_every_inline_checkov_skip_names_a_check_and_a_reason():
    skips = re.findall(r"#\s*checkov:skip=([^\n]*)", all_tf())
    assert skips, "no inline skips found: the pattern below no longer matches what is written"
    bad = [s for s in skips if not re.fullmatch(r"CKV2?_AWS_\d+:\s*\S.{19,}", s)]
    assert not bad, f"inline skips need `#checkov:skip=CKV_AWS_N:<reason>`: {bad}"


# --- variables and outputs -----------------------------------------------------------------------


def test_every_variable_is_described_typed_documented_and_used():
    variables = blocks("variable")
    assert len(variables) > 20, f"found only {sorted(variables)}: is the parsing broken?"
    readme = README.read_text()
    text = all_tf()
    problems = []
    for name, body in variables.items():
        if not re.search(r'^\s*description\s*=\s*"[^"\s][^"]*"', body, re.MULTILINE):
            problems.append(f"{name}: no description")
        if not re.search(r"^\s*type\s*=\s*\S", body, re.MULTILINE):
            problems.append(f"{name}: no type")
        if f"`{name}`" not in readme:
            problems.append(f"{name}: not documented in infra/README.md (as `{name}`)")
        if not re.search(rf"\bvar\.{name}\b", text.replace(body, "")):
            problems.append(f"{name}: never used (no var.{name} outside its own block)")
    assert not problems, "\n".join(problems)


def test_every_output_is_used_in_the_readme_and_has_a_value():
    outputs = blocks("output")
    assert len(outputs) > 5, f"found only {sorted(outputs)}: is the parsing broken?"
    readme = README.read_text()
    problems = []
    for name, body in outputs.items():
        if not re.search(r'^\s*description\s*=\s*"[^"\s]', body, re.MULTILINE):
            problems.append(f"{name}: no description")
        if not re.search(r"^\s*value\s*=\s*(?!null\s*$)\S", body, re.MULTILINE):
            problems.append(f"{name}: no value")
        if not re.search(rf"terraform output (-raw |-json )?{name}\b|`{name}`", readme):
            problems.append(f"{name}: not referenced in infra/README.md")
    assert not problems, "\n".join(problems)


# --- the ECS instance file -----------------------------------------------------------------------


def test_ecs_instance_shares_the_server_instance_sections():
    root = yaml.safe_load((INFRA / "server" / "dagster.yaml").read_text())
    ecs = yaml.safe_load(ECS_INSTANCE.read_text())
    for section in SHARED_SECTIONS:
        assert ecs.get(section) == root[section], f"infra/ecs/dagster.yaml {section} differs"
    assert ecs["run_launcher"]["class"] == "EcsRunLauncher"
    assert ecs["compute_logs"]["class"] == "S3ComputeLogManager"


def env_refs(node) -> set[str]:
    """Every ``{env: NAME}`` in a config tree."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node)) if node else set()
    return set()


def test_ecs_instance_loads_through_the_launcher_and_log_manager_schemas(monkeypatch):
    from dagster._config import process_config, resolve_to_config_type

    instance = yaml.safe_load(ECS_INSTANCE.read_text())
    for name in env_refs(instance):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    # What infra sets: the run family prefix is var.name (at most 16 characters).
    monkeypatch.setenv("DROUGHTWATCH_ECS_RUN_FAMILY_PREFIX", "droughtwatch")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for section in ("run_launcher", "compute_logs"):
        spec = instance[section]
        cls = getattr(importlib.import_module(spec["module"]), spec["class"])
        result = process_config(resolve_to_config_type(cls.config_type()), spec["config"])
        assert result.success, f"{section}: {[e.message for e in result.errors]}"
        # Construction makes boto3 clients only (no AWS call for this configuration).
        assert isinstance(cls.from_config_value(None, result.value), cls)


def test_ecs_launcher_starts_tagged_runs_in_the_worker_image(monkeypatch):
    """The instance's launcher (ours: Dagster's EcsRunLauncher plus its image hook) gives a run
    tagged by the worker-image setting that image, and any other run the code location's. No
    AWS here: the launcher is built from the instance file (boto3 clients only, never called)."""
    import types

    import dagster as dg
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

    from droughtwatch_assets.defs.run_tags import run_tags

    instance = yaml.safe_load(ECS_INSTANCE.read_text())
    for name in env_refs(instance):
        monkeypatch.setenv(name, f"value-of-{name.lower()}")
    monkeypatch.setenv("DROUGHTWATCH_ECS_RUN_FAMILY_PREFIX", "droughtwatch")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    spec = instance["run_launcher"]
    assert spec["module"] == "droughtwatch_assets.defs.launchers"
    cls = getattr(importlib.import_module(spec["module"]), spec["class"])
    result = process_config(resolve_to_config_type(cls.config_type()), spec["config"])
    launcher = cls.from_config_value(None, result.value)

    location_image = "123.dkr.ecr.eu-west-1.amazonaws.com/droughtwatch:v1"
    worker = "123.dkr.ecr.eu-west-1.amazonaws.com/droughtwatch:v1-worker"
    origin = JobPythonOrigin(  # what a run launched from the code server carries
        "drop_job",
        RepositoryPythonOrigin(
            executable_path="/opt/droughtwatch/.venv/bin/python",
            code_pointer=ModuleCodePointer("droughtwatch_assets.definitions", "defs", None),
            container_image=location_image,
        ),
    )

    def image(tags: dict[str, str]) -> str | None:
        run = dg.DagsterRun(job_name="drop_job", tags=tags, job_code_origin=origin)
        return launcher.get_image_for_run(types.SimpleNamespace(dagster_run=run))

    assert image(run_tags("inference", image=worker)) == worker
    assert image(run_tags("ingest", image=worker)) == worker
    assert image(run_tags("inference")) == location_image
    assert image(run_tags("training", gpus=1)) == location_image


# --- environment of the task definitions ---------------------------------------------------------

# What droughtwatch's code reads (settings.py, tracking.py, metricsdb.py, workspace.yaml, the
# Dagster instance), by process. Not set on AWS, on purpose: DROUGHTWATCH_S3_ENDPOINT_URL and
# MLFLOW_S3_ENDPOINT_URL (MinIO only; AWS is boto3's default), AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY (task roles give credentials), MLFLOW_DISABLE_TELEMETRY is set.
CODE_READS = {
    "DROUGHTWATCH_HOME",
    "DROUGHTWATCH_DATA_ROOT",
    "DROUGHTWATCH_LAKE",
    "DROUGHTWATCH_SENSOR_INTERVAL",
    "DROUGHTWATCH_MLFLOW_ARTIFACTS",
    "DROUGHTWATCH_METRICS_DB_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_DISABLE_TELEMETRY",
    "DAGSTER_HOME",
    "DAGSTER_PG_URL",
    "AWS_DEFAULT_REGION",
}
CODE_SERVER_ALSO = {
    "DROUGHTWATCH_TRAINING_GPUS",
    "DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER",
    "DROUGHTWATCH_SQS_QUEUE_URL",
    "DAGSTER_CURRENT_IMAGE",
    "DROUGHTWATCH_WORKER_IMAGE",
}
WORKSPACE = {"DAGSTER_CODE_SERVER_HOST", "DAGSTER_CODE_SERVER_PORT"}
SECRET_NAMES = {"DAGSTER_PG_URL", "DROUGHTWATCH_METRICS_DB_URL", "MLFLOW_BACKEND_STORE_URI"}


def test_task_definitions_set_what_the_code_and_the_instance_read():
    instance = yaml.safe_load(ECS_INSTANCE.read_text())
    instance_reads = env_refs(instance)
    launcher = instance["run_launcher"]["config"]
    runs = set(launcher["env_vars"]) | {s["name"] for s in launcher["secrets"]}
    envs = {s: service_env(s) for s in ("webserver", "daemon", "code_server", "mlflow")}
    missing = {
        "code_server": (CODE_READS | CODE_SERVER_ALSO | instance_reads) - envs["code_server"],
        "runs (env_vars + secrets)": (CODE_READS | instance_reads) - runs,
        "webserver": (WORKSPACE | instance_reads | {"DAGSTER_PG_URL"}) - envs["webserver"],
        "daemon": (WORKSPACE | instance_reads | {"DAGSTER_PG_URL"}) - envs["daemon"],
        # The run launcher copies env_vars from the daemon's own environment.
        "daemon (for env_vars)": set(launcher["env_vars"]) - envs["daemon"],
        "mlflow": {"MLFLOW_BACKEND_STORE_URI"} - envs["mlflow"],
    }
    missing = {k: sorted(v) for k, v in missing.items() if v}
    assert not missing, f"task environments miss: {missing}"
    # URLs with passwords come from Secrets Manager, never as plain environment values.
    text = tf_files()["ecs.tf"]
    plain = {name for name in SECRET_NAMES if re.search(rf"^\s+{name}\s+=", text, re.MULTILINE)} | (
        SECRET_NAMES & set(launcher["env_vars"])
    )
    assert not plain, f"set as plain environment instead of a secret: {sorted(plain)}"


def test_gpu_capacity_provider_name_matches_what_the_code_server_is_told():
    text = all_tf()
    assert "name = var.gpu_capacity_provider_name" in text
    assert "DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER = var.gpu_capacity_provider_name" in text
    default = blocks("variable")["gpu_capacity_provider_name"]
    from droughtwatch_assets.settings import Settings

    assert f'"{Settings.from_env({}).ecs_gpu_capacity_provider}"' in default


# --- the one-shot database setup -----------------------------------------------------------------


def test_db_setup_script_creates_roles_and_databases_and_reruns(tmp_path):
    """The script in ecs.tf, run against a real PostgreSQL (pgserver), twice."""
    pgserver = pytest.importorskip("pgserver")
    import psycopg2

    # <<- strips the common indentation, as textwrap.dedent does.
    script = re.search(r"<<-PY\n(.*?)\n\s*PY\n", tf_files()["ecs.tf"], re.DOTALL)
    assert script, "ecs.tf has no db_setup_script heredoc"
    server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        uri = server.get_uri()
        sock = re.search(r"host=([^&]+)", uri).group(1)
        env = {
            **os.environ,
            "PGHOST": sock,
            "PGUSER": "postgres",
            "PGDATABASE": "postgres",
            "DB_ROLES": "dagster,droughtwatch,mlflow",
            "DAGSTER_DB_PASSWORD": "pw-dagster",
            "DROUGHTWATCH_DB_PASSWORD": "pw-droughtwatch",
            "MLFLOW_DB_PASSWORD": "pw-mlflow",
        }
        for attempt in (1, 2):  # idempotent: a second run updates, creates nothing twice
            proc = subprocess.run(
                [str(REPO / ".venv/bin/python"), "-c", textwrap.dedent(script.group(1))],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, f"run {attempt}: {proc.stderr}"
        with psycopg2.connect(host=sock, user="postgres", dbname="postgres") as conn:
            cur = conn.cursor()
            cur.execute(
                "SELECT d.datname, r.rolname FROM pg_database d"
                " JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = r.rolname"
            )
            owned = dict(cur.fetchall())
        assert {k: owned.get(k) for k in ("dagster", "droughtwatch", "mlflow")} == {
            "dagster": "dagster",
            "droughtwatch": "droughtwatch",
            "mlflow": "mlflow",
        }
    finally:
        server.cleanup()
