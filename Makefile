# `make demo` and `make test` each set up their environments on a fresh clone, then run.
# .venv is the core tool (numpy 2); .venv-triton holds PyTriton and tritonclient, which need numpy < 2.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp
CORE_EXTRAS := dev,openvino
TRITON_EXTRAS := dev,triton,openvino
DEMO_DIR ?= artifacts/demo

.PHONY: setup setup-triton demo test test-fast test-core test-triton lint format clean trt-typecheck

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(CORE_EXTRAS)]'
	@# A torchvision built for another torch (an earlier setup put PyPI's CUDA build beside the CPU torch) cannot be
	@# imported; none is better: the preprocessing test reads torchvision's transforms from its wheel instead.
	$(BIN)/python -m resnext_deploy.environment || $(BIN)/python -m pip uninstall -q -y torchvision
	touch $(STAMP)

$(TRITON_STAMP): pyproject.toml constraints-triton.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q -c constraints-triton.txt -e '.[$(TRITON_EXTRAS)]'
	$(TRITON_VENV)/bin/python -m resnext_deploy.environment || $(TRITON_VENV)/bin/python -m pip uninstall -q -y torchvision
	touch $(TRITON_STAMP)

setup: $(STAMP)

setup-triton: $(TRITON_STAMP)

demo: setup
	$(BIN)/resnext-deploy pipeline --dir $(DEMO_DIR)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite in .venv (tests that need tritonclient or PyTriton skip there), then those tests in .venv-triton.
test-core: setup
	$(BIN)/python -m pytest -q

test-triton: setup-triton
	$(TRITON_VENV)/bin/python -m pytest -q tests/serving tests/faults/test_serving_and_caches.py tests/faults/test_hostile_inputs.py -k "serving or triton_repo or serve"

test: lint test-core test-triton

# While editing: lint, then the suite in .venv without the tests marked slow (the demo pipeline, mypy, large exports,
# bench runs, child processes; about 2.3 min of CPU). No .venv-triton: its tests are the slow PyTriton ones.
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# mypy on the whole package, the TensorRT backend against NVIDIA's real bindings of TensorRT 10.x and 11.x (needs
# PyPI and cc).
trt-typecheck: setup
	$(BIN)/python scripts/trt_typecheck.py

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(TRITON_VENV) artifacts .pytest_cache .ruff_cache
