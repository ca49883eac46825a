# Thin entry points; .ci/run calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install test test-all lint format demo simulate clean

install: $(BIN)/furnace

$(BIN)/furnace: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# CPU torch first and explicitly, so no resolver ever pulls a CUDA build.
	$(BIN)/pip install torch==$(TORCH_VERSION)
	$(BIN)/pip install -e '.[train,serve,dev]'
	touch $(BIN)/furnace

test: install
	$(BIN)/pytest -q

test-all: install
	$(BIN)/pytest -q -m ''

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy simulator service
	$(BIN)/mypy model training furnace

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install
	$(BIN)/furnace demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
