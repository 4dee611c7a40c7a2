# `make demo` and `make test` each set up .venv on a fresh clone, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= artifacts/demo

.PHONY: setup demo test lint format clean trt-typecheck

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,triton]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/resnext-deploy pipeline --dir $(DEMO_DIR)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

# mypy on the TensorRT backend against NVIDIA's real bindings of TensorRT 10.x and 11.x (needs PyPI and cc).
trt-typecheck: setup
	$(BIN)/python scripts/trt_typecheck.py

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache
