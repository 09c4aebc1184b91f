# gpuplace — the two commands a user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv protos check-protos lint test demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Regenerate the checked-in gRPC code from protos/*.proto.
protos: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
	  --mypy_out=. --mypy_grpc_out=. protos/*.proto

# CI: regeneration must not change anything that is checked in.
check-protos: protos
	git diff --exit-code -- protos/ || (echo "protos/: generated code is stale, run 'make protos' and commit" >&2; exit 1)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
