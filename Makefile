# droughtwatch: `make demo` runs the pipeline on embedded defaults; `make test` passes the suite.
PYTHON ?= python3
UV_VERSION := 0.13.8
# cpu (default) or gpu: which TensorFlow build the environment gets.
TF ?= cpu
VENV := .venv
UV := .uv/bin/uv
BIN := $(VENV)/bin

export DROUGHTWATCH_HOME ?= $(CURDIR)/.droughtwatch
export DAGSTER_HOME ?= $(DROUGHTWATCH_HOME)/dagster
export UV_PYTHON_DOWNLOADS := never
# MLflow 3 sends usage telemetry from a background thread unless told not to.
export MLFLOW_DISABLE_TELEMETRY ?= true
# ... and draws a download bar for every model a run loads.
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
export TF_CPP_MIN_LOG_LEVEL ?= 2
export UV_PROJECT_ENVIRONMENT := $(VENV)

CHECKOV := .tools/checkov/bin/checkov
COMPOSE := docker compose -f docker/docker-compose.yml --env-file docker/.env

.PHONY: install tools browser nannyml-reference demo dev mlflow-ui test lint mutation mutation-slow bench bench-training bench-inference bench-e2e bench-monitoring \
	stack-up stack-down clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced-$(TF): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON) --extra $(TF) --extra deploy --extra dev --compile-bytecode
	rm -f $(VENV)/.synced-*
	touch $@

install: $(VENV)/.synced-$(TF)  ## create or update the environment from uv.lock

# checkov scans infra/ in the test suite. Installed into the project's environment, its own pins
# would downgrade the project's boto3, so it gets an environment of its own, from pinned
# requirements.
$(CHECKOV): infra/requirements-checkov.txt
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet --disable-pip-version-check -r $<
	touch $@

# Debian's Chromium renders the Dagster UI in droughtwatch_tests/test_ui_pages.py (skipped without
# it). Installed where it is missing and apt-get can (as root); anywhere else, a note.
browser:
	@command -v chromium > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	      > /dev/null 2>&1 || { apt-get update -qq > /dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	      > /dev/null 2>&1; } || echo "note: chromium could not be installed; the UI test will skip"; \
	  else echo "note: no chromium (apt-get install chromium); the UI test will skip"; fi; }

# NannyML's CBPE on fixed probabilities, recorded for droughtwatch_tests/core/test_calibration.py
# (committed; rerun after changing the cases). Its own environment: 1.8 GB of dependencies.
nannyml-reference:
	$(PYTHON) -m venv .tools/nannyml
	.tools/nannyml/bin/pip install --quiet --disable-pip-version-check \
	  -r droughtwatch_tests/tools/requirements-nannyml.txt
	.tools/nannyml/bin/python droughtwatch_tests/tools/nannyml_reference.py

tools: $(CHECKOV) browser  ## checkov (the Terraform scan) and Chromium (the UI test), outside the environment

demo: install  ## sample corpus + drops, discover, ingest, summary
	$(BIN)/droughtwatch demo

# dg dev runs in DAGSTER_HOME, on the workspace.yaml `droughtwatch home` writes there: Dagster
# then reads that folder's dagster.yaml (in the repository root it would warn that ./dagster.yaml,
# the same instance for commands run without DAGSTER_HOME, is not used).
dev: install  ## Dagster UI on :3000 (sensors, schedule, automation running) and MLflow UI on :5000
	$(BIN)/droughtwatch home
	$(BIN)/droughtwatch mlflow-ui > $(DROUGHTWATCH_HOME)/mlflow-ui.log 2>&1 & \
	  trap 'kill $$! 2> /dev/null' EXIT INT TERM; \
	  cd "$(DAGSTER_HOME)" && $(CURDIR)/$(BIN)/dg dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install  ## MLflow UI alone on http://127.0.0.1:5000
	$(BIN)/droughtwatch mlflow-ui

lint: install
	$(BIN)/ruff check droughtwatch_assets droughtwatch_tests
	@$(BIN)/droughtwatch home > /dev/null
	$(BIN)/dg check defs

test: install tools lint  ## the whole suite
	$(BIN)/pytest

# Mutation testing (docs/testing.md): mutmut mutates the modules that carry the documented rules
# ([tool.mutmut] in pyproject.toml) and runs the tests that cover each mutated function, for at
# most MUTATION_BUDGET seconds. Results accumulate in mutants/: the next run carries on where
# the budget ran out (a change to the tests makes mutmut forget its results: docs/testing.md).
# The report lists the survivors.
# The tests run from a copy in mutants/, so they are told where the sample shard is.
MUTATION_BUDGET ?= 3600
# mutmut within the budget, in the current directory; running out of budget is not a failure.
MUTMUT_RUN = { timeout --signal=INT --kill-after=60 $(MUTATION_BUDGET) \
	  $(abspath $(BIN))/mutmut run --max-children $$(nproc) || { rc=$$?; [ $$rc = 124 ] || [ $$rc = 130 ]; }; }
mutation mutation-slow: export DROUGHTWATCH_SAMPLE_SHARD ?= $(abspath $(CURDIR)/../shared/data/droughtwatch-sample/part-r-00012)
mutation: install  ## mutation testing of the rule modules within MUTATION_BUDGET s; docs/testing.md
	$(MUTMUT_RUN)
	$(BIN)/python -m droughtwatch_tests.tools.mutation_report

# The registry assets, which only the training tests reach (about 90 s a mutant): mutmut in a
# copy of the working tree under build/mutation-slow/ ([tool.droughtwatch.mutation-slow]).
mutation-slow: install  ## mutation testing of the registry against the training tests; docs/testing.md
	cd "$$($(BIN)/python -m droughtwatch_tests.tools.mutation_slow)" && $(MUTMUT_RUN) && \
	  $(abspath $(BIN))/python -m droughtwatch_tests.tools.mutation_report

bench: install  ## ingest benchmark against the earlier approach; writes docs/benchmarks.md
	$(BIN)/python -m droughtwatch_tests.benchmarks.ingest

bench-training: install  ## input pipeline, earlier approach, memory; docs/benchmarks-training.md
	$(BIN)/python -m droughtwatch_tests.benchmarks.training

bench-inference: install  ## ONNX vs Keras scoring, cold start, drop-to-metrics latency; docs/benchmarks-inference.md
	$(BIN)/python -m droughtwatch_tests.benchmarks.inference

bench-monitoring: install  ## estimated vs true accuracy on shifted drops; docs/benchmarks-monitoring.md
	$(BIN)/python -m droughtwatch_tests.benchmarks.monitoring $(ARGS)

# ARGS passes options through, e.g. ARGS='--shards 100 --memory-shards 0 --repeats 1'.
bench-e2e: install  ## every user path on real-shaped shards vs the earlier approach; docs/benchmarks-e2e.md
	$(BIN)/python -m droughtwatch_tests.benchmarks.e2e $(ARGS)

docker/.env:
	@echo "docker/.env is missing: cp docker/.env.example docker/.env and set its passwords" >&2
	@exit 1

stack-up: docker/.env  ## the whole stack on this machine with Docker Compose (docker/README.md)
	$(COMPOSE) up -d --build --wait

stack-down:  ## stop the stack; its named volumes (data) are kept
	$(COMPOSE) down

clean:
	rm -rf $(VENV) .uv .tools .droughtwatch .pytest_cache
