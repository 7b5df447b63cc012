"""infra/kubernetes/: Helm values, Secrets template and MLflow manifest, checked without a cluster.

No helm and no cluster here: the values are validated against the Dagster chart's own JSON schema
(vendored in infra/kubernetes/schema/), compared with the repository's dagster.yaml and code, and
the GPU request of training runs is followed through dagster-k8s's own job construction.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from unittest import mock

import jsonschema
import pytest
import yaml
from dagster import DagsterRun
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    USER_DEFINED_K8S_CONFIG_KEY,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)
from dagster_k8s.launcher import K8sRunLauncher
from mlflow.server.security_utils import is_allowed_host_header

from droughtwatch_assets.defs.run_tags import RUN_KIND, run_tags

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "kubernetes"
VALUES = K8S / "values.yaml"
SCHEMA = K8S / "schema" / "values.schema.json"
SECRETS = K8S / "secrets.example.yaml"
MLFLOW = K8S / "mlflow.yaml"
README = K8S / "README.md"

GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def server_instance() -> dict:
    return yaml.safe_load((ROOT / "infra" / "server" / "dagster.yaml").read_text())


@pytest.fixture(scope="module")
def secrets() -> dict[str, dict[str, str]]:
    """Secret name -> its stringData, from the documented template."""
    docs = [d for d in yaml.safe_load_all(SECRETS.read_text()) if d]
    assert all(d["kind"] == "Secret" for d in docs), "secrets.example.yaml holds only Secrets"
    return {d["metadata"]["name"]: d["stringData"] for d in docs}


@pytest.fixture(scope="module")
def code_location(values) -> dict:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1, "one code location, droughtwatch"
    return deployments[0]


@pytest.fixture(scope="module")
def k8s_run_launcher(values) -> dict:
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    return values["runLauncher"]["config"]["k8sRunLauncher"]


# -- the chart's schema ----------------------------------------------------------------------


def _override_schema(schema: dict) -> tuple[dict, set[str]]:
    """The chart's schema as it applies to an override file, offline.

    Drops `$ref`s to the Kubernetes schema on the web (no network; the JSON type next to each
    stays) and the `required` lists that the chart's own values.yaml satisfies after Helm's
    merge. Keeps the `required` inside `if`/`then` conditions. Returns the dropped refs.
    """
    dropped: set[str] = set()

    def walk(node, in_then: bool):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and not value.startswith("#/"):
                    dropped.add(value)
                    continue
                if key == "required" and not in_then and isinstance(value, list):
                    continue
                out[key] = walk(value, in_then or key == "then")
            return out
        if isinstance(node, list):
            return [walk(item, in_then) for item in node]
        return node

    return walk(copy.deepcopy(schema), False), dropped


@pytest.fixture(scope="module")
def override_validator() -> jsonschema.Draft202012Validator:
    schema, dropped = _override_schema(json.loads(SCHEMA.read_text()))
    outside = {
        ref
        for ref in dropped
        if not ref.startswith("https://raw.githubusercontent.com/yannh/kubernetes-json-schema/")
    }
    assert not outside, f"only Kubernetes definitions may be dropped, not {outside}"
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_vendored_schema_is_the_recorded_file():
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", (K8S / "schema" / "README.md").read_text())
    assert recorded, "schema/README.md records the vendored file's sha256"
    actual = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert actual == recorded.group(1), "values.schema.json differs from the recorded upstream copy"
    assert json.loads(SCHEMA.read_text())["title"] == "DagsterHelmValues"


def test_values_validate_against_the_chart_schema(values, override_validator):
    errors = sorted(override_validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("dagsterDaemon", "runRetry"), {"enabled": True}),  # misspelt key
        (("concurrency", "runs", "maxConcurrentRuns"), "eight"),  # wrong type
        (("runLauncher", "type"), "KubernetesRunLauncher"),  # not an enum member
        (("runLauncher", "config"), {}),  # K8sRunLauncher without config.k8sRunLauncher
    ],
)
def test_schema_check_rejects_broken_values(values, override_validator, path, value):
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(override_validator.iter_errors(broken)), f"{'.'.join(path)}={value!r} accepted"


# -- the same limits as dagster.yaml ----------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _snake_keys(node):
    if isinstance(node, dict):
        return {_snake(k): _snake_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_snake_keys(v) for v in node]
    return node


def test_concurrency_equals_server_dagster_yaml(values, server_instance):
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True, "without it the chart writes no concurrency section"
    assert (
        _snake_keys({k: v for k, v in concurrency.items() if k != "enabled"})
        == (server_instance["concurrency"])
    )
    queued = values["dagsterDaemon"]["runCoordinator"]
    assert queued["type"] == "QueuedRunCoordinator"
    assert server_instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    own = queued["config"]["queuedRunCoordinator"]
    assert own.get("maxConcurrentRuns") is None and not own.get("tagConcurrencyLimits"), (
        "limits live in concurrency.runs only; the run coordinator's own would conflict"
    )


def test_run_retries_and_monitoring_equal_server_dagster_yaml(values, server_instance):
    daemon = values["dagsterDaemon"]
    assert _snake_keys(daemon["runRetries"]) == server_instance["run_retries"]
    assert _snake_keys(daemon["runMonitoring"]) == server_instance["run_monitoring"]
    assert values["telemetry"] == server_instance["telemetry"] == {"enabled": False}


# -- the code location ------------------------------------------------------------------------


def test_code_location_follows_workspace_conventions(code_location):
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert code_location["name"] == entry["grpc_server"]["location_name"], (
        "the chart names the location after the deployment"
    )
    assert code_location["port"] == 4000
    args = code_location["codeServerArgs"]
    assert args[:1] == ["-m"] and len(args) == 2, f"one module: {args}"
    assert args[1] == "droughtwatch_assets.definitions"
    assert importlib.util.find_spec(args[1]) is not None, f"{args[1]} is not importable"
    assert code_location["includeConfigInLaunchedRuns"]["enabled"] is True
    assert code_location["podSecurityContext"]["runAsUser"] == 10001, "the image's user"


# Read by the code but deliberately not set on Kubernetes, with the reason.
NOT_FOR_KUBERNETES = {
    "DAGSTER_HOME": "the chart sets it and mounts its own instance ConfigMap",
    "DAGSTER_PG_URL": "only infra/server/dagster.yaml reads it; the chart writes its own storage",
    "DAGSTER_CODE_SERVER_HOST": "workspace.yaml only; the chart writes the workspace",
    "DAGSTER_CODE_SERVER_PORT": "workspace.yaml only; the chart writes the workspace",
    "DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER": "ECS only",
    "DROUGHTWATCH_SHARDS_PER_RUN": "optional; the default (250 shards per run) suits the chart",
    "DAGSTER_EVENT_BATCH_SIZE": "set in-process by the embedded SQLite event log only",
    "MLFLOW_REGISTRY_URI": "defaults to the tracking URI",
}
# Set only where they apply (MinIO, SQS, static keys): documented in the Secrets template.
OPTIONAL = {
    "DROUGHTWATCH_S3_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "DROUGHTWATCH_SQS_QUEUE_URL",
    "DROUGHTWATCH_ALERT_WEBHOOK_URL",
    "DROUGHTWATCH_ALERT_SLACK_WEBHOOK_URL",
    "DROUGHTWATCH_ALERT_EMAIL_TO",
    "DROUGHTWATCH_ALERT_EMAIL_FROM",
    "DROUGHTWATCH_SMTP_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}


def _names_the_code_reads() -> set[str]:
    pattern = re.compile(r"[\"']((?:DROUGHTWATCH|MLFLOW|DAGSTER|AWS)_[A-Z0-9_]+)[\"']")
    names: set[str] = set()
    for path in (ROOT / "droughtwatch_assets").rglob("*.py"):
        names.update(pattern.findall(path.read_text()))
    # `env: NAME` sources
    for path in (ROOT / "infra" / "server" / "dagster.yaml", ROOT / "workspace.yaml"):
        names.update(re.findall(r"\benv:\s*([A-Z][A-Z0-9_]+)", path.read_text()))
    return names


def test_code_location_and_run_pods_get_every_setting_the_code_reads(
    code_location, k8s_run_launcher, secrets
):
    read = _names_the_code_reads()
    assert {"DROUGHTWATCH_LAKE", "MLFLOW_TRACKING_URI", "DROUGHTWATCH_METRICS_DB_URL"} <= read
    env_secret_names = [s["name"] for s in code_location["envSecrets"]]
    assert [s["name"] for s in k8s_run_launcher["envSecrets"]] == env_secret_names
    provided = set(code_location["env"])
    for name in env_secret_names:
        assert name in secrets, f"envSecrets names {name}, not in secrets.example.yaml"
        provided |= set(secrets[name])
    template = SECRETS.read_text()
    missing = {
        n
        for n in read - provided - set(NOT_FOR_KUBERNETES)
        if not (n in OPTIONAL and re.search(rf"^\s*#\s*{n}:", template, re.MULTILINE))
    }
    assert not missing, f"read by droughtwatch_assets, given to no pod: {sorted(missing)}"
    unknown = set(NOT_FOR_KUBERNETES) | OPTIONAL | set(code_location["env"])
    unread = unknown - read - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    assert not unread, f"set for Kubernetes but read nowhere in the code: {sorted(unread)}"
    assert code_location["env"]["DROUGHTWATCH_TRAINING_GPUS"] == "1"


def test_every_secret_reference_is_in_the_template(values, secrets):
    postgres_secret = values["global"]["postgresqlSecretName"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["enabled"] is False, "external PostgreSQL"
    assert "postgresql-password" in secrets[postgres_secret], (
        f"the chart reads key postgresql-password from {postgres_secret}"
    )
    referenced = {
        ("envSecrets", s["name"])
        for part in (
            values["dagster-user-deployments"]["deployments"][0],
            values["runLauncher"]["config"]["k8sRunLauncher"],
            values["dagsterWebserver"],
        )
        for s in part.get("envSecrets", [])
    }
    for _, name in referenced:
        assert name in secrets, f"envSecrets {name} is not in secrets.example.yaml"
    for doc in yaml.safe_load_all(MLFLOW.read_text()):
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], {}), (
                        f"mlflow.yaml reads {ref['name']}/{ref['key']}, not in the template"
                    )


# -- GPU for training runs, through dagster-k8s ------------------------------------------------


def _run_launcher_no_cluster(k8s_run_launcher: dict, tmp_path: Path) -> K8sRunLauncher:
    """The K8sRunLauncher the chart configures from values.yaml (its configmap-instance template
    maps runK8sConfig's keys to snake case). No cluster here: an empty kubeconfig, and the
    Kubernetes API clients are mocks that are never called."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    run_k8s_config = {_snake(k): v for k, v in k8s_run_launcher["runK8sConfig"].items()}
    return K8sRunLauncher(
        service_account_name="droughtwatch-dagster",
        instance_config_map="droughtwatch-dagster-instance",
        dagster_home="/opt/dagster/dagster_home",
        load_incluster_config=False,
        kubeconfig_file=str(kubeconfig),
        job_namespace="droughtwatch",
        env_secrets=[s["name"] for s in k8s_run_launcher["envSecrets"]],
        env_vars=k8s_run_launcher["envVars"],
        run_k8s_config=run_k8s_config,
        k8s_client_batch_api=mock.MagicMock(),
        k8s_client_core_api=mock.MagicMock(),
    )


def _run_job(launcher: K8sRunLauncher, tags: dict[str, str]):
    run = DagsterRun(job_name="training_job", run_id="0123abcd-run", tags=tags)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    return construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(
            job_image="registry.example/droughtwatch:test", run_launcher=launcher
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123abcd",
        pod_name="dagster-run-0123abcd",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )


def test_training_tag_parses_with_dagster_k8s():
    tags = run_tags("training", gpus=1)
    assert tags[RUN_KIND] == "training"
    config = get_user_defined_k8s_config(tags)
    assert isinstance(config, UserDefinedDagsterK8sConfig)
    assert config.container_config["resources"]["limits"][GPU] == "1"
    assert USER_DEFINED_K8S_CONFIG_KEY not in run_tags("inference", gpus=0)


def test_training_run_job_requests_a_gpu_no_cluster(code_location, k8s_run_launcher, tmp_path):
    launcher = _run_launcher_no_cluster(k8s_run_launcher, tmp_path)
    # training_job's tags, as the code server computes them from its environment (jobs.py)
    gpus = int(code_location["env"]["DROUGHTWATCH_TRAINING_GPUS"])
    job = _run_job(launcher, run_tags("training", gpus=gpus))
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.resources.limits.get(GPU) == "1", container.resources
    defaults = k8s_run_launcher["runK8sConfig"]["containerConfig"]["resources"]
    assert container.resources.requests == defaults["requests"], "the defaults still apply"
    assert any(
        t.key == GPU and t.effect == "NoSchedule" and t.operator == "Exists"
        for t in pod.tolerations or []
    ), pod.tolerations
    assert [e.secret_ref.name for e in container.env_from if e.secret_ref] == ["droughtwatch-env"]
    assert pod.security_context.run_as_user == 10001
    assert job.spec.backoff_limit == 0


def test_other_runs_get_the_default_resources_and_no_gpu(k8s_run_launcher, tmp_path):
    launcher = _run_launcher_no_cluster(k8s_run_launcher, tmp_path)
    for kind in ("ingest", "inference"):  # as their jobs tag them (defs/*/jobs.py, assets.py)
        job = _run_job(launcher, run_tags(kind))
        pod = job.spec.template.spec
        (container,) = pod.containers
        defaults = k8s_run_launcher["runK8sConfig"]["containerConfig"]["resources"]
        assert container.resources.requests == defaults["requests"]
        assert container.resources.limits == defaults["limits"], f"{kind}: {container.resources}"
        assert not any(t.key == GPU for t in pod.tolerations or []), f"{kind} on a GPU node"


def test_worker_image_routes_ingest_and_inference_pods_not_training(k8s_run_launcher, tmp_path):
    """With DROUGHTWATCH_WORKER_IMAGE (an image built with TF=none), ingest and inference run
    pods start in it; training pods keep the code location's image, with their GPU."""
    launcher = _run_launcher_no_cluster(k8s_run_launcher, tmp_path)
    worker = "registry.example/droughtwatch:worker"
    for kind in ("ingest", "inference"):
        (container,) = _run_job(
            launcher, run_tags(kind, image=worker)
        ).spec.template.spec.containers
        assert container.image == worker, kind
        assert container.resources.requests == {"cpu": "1", "memory": "4Gi"}, "defaults apply"
    job = _run_job(launcher, run_tags("training", gpus=1))
    (container,) = job.spec.template.spec.containers
    assert container.image == "registry.example/droughtwatch:test"
    assert container.resources.limits.get(GPU) == "1"
    (container,) = _run_job(launcher, run_tags("inference")).spec.template.spec.containers
    assert container.image == "registry.example/droughtwatch:test", (
        "no worker image: the location's"
    )


# -- MLflow and the README --------------------------------------------------------------------


def test_mlflow_server_accepts_in_cluster_and_port_forward_hosts(values, code_location):
    docs = {d["kind"]: d for d in yaml.safe_load_all(MLFLOW.read_text())}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    tracking = code_location["env"]["MLFLOW_TRACKING_URI"]
    host = tracking.removeprefix("http://").rstrip("/")
    assert is_allowed_host_header(allowed, host), f"{tracking} would be refused (Host {host})"
    assert is_allowed_host_header(allowed, "localhost:5000"), "kubectl port-forward"
    assert not is_allowed_host_header(allowed, "evil.example:5000")
    service = docs["Service"]
    assert host == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert "--port=5000" in container["args"]


def test_readme_commands_match_the_files(values, secrets):
    readme = README.read_text()
    assert "--version 1.13.27" in readme and "-f infra/kubernetes/values.yaml" in readme
    for name, data in secrets.items():
        assert name in readme, f"README does not say how to create Secret {name}"
        for key in data:
            assert key in readme, f"README's secret command lacks {name}/{key}"
    assert "What was checked here and what was not" in readme
