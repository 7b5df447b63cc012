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
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install demo dev test lint bench clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced-$(TF): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON) --extra $(TF) --extra dev --compile-bytecode
	rm -f $(VENV)/.synced-*
	touch $@

install: $(VENV)/.synced-$(TF)  ## create or update the environment from uv.lock

demo: install  ## sample corpus + drops, discover, ingest, summary
	$(BIN)/droughtwatch demo

dev: install  ## Dagster UI on http://127.0.0.1:3000 with the drop sensor running
	$(BIN)/droughtwatch home
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

lint: install
	$(BIN)/ruff check droughtwatch_assets droughtwatch_tests
	@$(BIN)/droughtwatch home > /dev/null
	$(BIN)/dagster definitions validate -m droughtwatch_assets.definitions

test: install lint  ## the whole suite
	$(BIN)/pytest

bench: install  ## ingest benchmark against the earlier approach; writes docs/benchmarks.md
	$(BIN)/python -m droughtwatch_tests.benchmarks.ingest

clean:
	rm -rf $(VENV) .uv .droughtwatch .pytest_cache
