# Thin entry points; .ci/run calls the same targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install test test-fast test-all lint format demo clean results model reliability compose-smoke image-lock

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

# The inner loop (under 2 minutes on 2 cores): no training, export, demo or big simulations.
test-fast: install
	$(BIN)/pytest -q -m 'not slow and not gpu and not heavy and not compose'

# Everything but the compose smoke test (it needs root and dockerd: make compose-smoke).
test-all: install
	$(BIN)/pytest -q -m 'not compose'

# The compose stack built without a registry (Debian packages + PyPI) and run with dockerd:
# build, up, /readyz, detections, Prometheus scrapes, down (docs/deploy.md, "Air-gapped build").
compose-smoke: install
	$(BIN)/pytest -q -m compose --durations=0 tests/deploy/test_compose_smoke.py

# The image's pinned Python dependencies (deploy/requirements-serve.txt, which the Dockerfile
# installs with --require-hashes): rerun after changing the serve extra; existing pins are
# kept, LOCK_FLAGS=--upgrade takes the newest releases. Python 3.11, every platform.
UV_VERSION ?= 0.13.9
LOCK_FLAGS ?=
image-lock: install
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml deploy/requirements-serve.in --extra serve \
		--universal --python-version 3.11 --generate-hashes \
		--custom-compile-command 'make image-lock' $(LOCK_FLAGS) -o deploy/requirements-serve.txt

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

# docs/reliability.md: every fault and bad input the tests inflict, with this run's outcome.
# The fault tests only (heavy and slow ones included; not the compose smoke test, not GPU).
# `--reliability-report=PATH`, with `=`: pytest takes a bare existing PATH for a test path and
# then loads tests/conftest.py (which registers the option) too late.
reliability: install
	$(BIN)/pytest -q -m 'fault and not compose and not gpu' --reliability-report=docs/reliability.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache

# Reproduce docs/results.md: data, the default run, the ablation runs, the evaluation.
ABLATIONS := separate_codebooks no_mm_ema cmg_alignment no_club no_cpc single_code

data/train/dataset.json: | install
	$(BIN)/furnace simulate --out data/train --furnaces 40 --minutes 30 --seed 0 --event-free-fraction 0.2

# The shipped bundle's training data since 2026-12-05 (fifth session): 120 furnaces, the first 40
# of them data/train's; more camera appearances keep the camera head from reading a clear view as
# a hot spot (docs/results.md, "Hot-spot statistics and 120 training furnaces").
data/train120/dataset.json: | install
	$(BIN)/furnace simulate --out data/train120 --furnaces 120 --minutes 30 --seed 0 --event-free-fraction 0.2

data/test/dataset.json: | install
	$(BIN)/furnace simulate --out data/test --furnaces 12 --minutes 30 --seed 1 --event-free-fraction 0.2

# Extra furnaces (12 h + 24 h, never trained on) that the shipped bundle's alert policy is
# calibrated on, with the 4 h of validation furnaces: 40 furnace-hours (docs/export.md).
data/cal/dataset.json: | install
	$(BIN)/furnace simulate --out data/cal --furnaces 24 --minutes 30 --seed 21

data/cal2/dataset.json: | install
	$(BIN)/furnace simulate --out data/cal2 --furnaces 48 --minutes 30 --seed 22

# 48 fresh furnaces (24 h, seed 23) the 40-hour calibration was measured on (docs/results.md,
# "Calibrating on 40 furnace-hours"): an evaluation set, never calibrated or trained on.
data/cal3/dataset.json: | install
	$(BIN)/furnace simulate --out data/cal3 --furnaces 48 --minutes 30 --seed 23

# The held-out scorecard set (docs/results.md headline); used for nothing else.
data/score12/dataset.json: | install
	$(BIN)/furnace simulate --out data/score12 --furnaces 12 --minutes 30 --seed 7

runs/default/checkpoint.pt: data/train120/dataset.json
	$(BIN)/furnace train --data data/train120 --out runs/default --config configs/default.yaml

# Ablations train on data/train (40 furnaces), as the figures in docs/results.md were measured.
runs/ablation_%/checkpoint.pt: data/train/dataset.json
	$(BIN)/furnace train --data data/train --out runs/ablation_$* --config configs/experiments/ablation_$*.yaml

results: runs/default/checkpoint.pt $(foreach a,$(ABLATIONS),runs/ablation_$(a)/checkpoint.pt) data/test/dataset.json
	$(BIN)/furnace evaluate --run runs/default --data data/test --out out/eval \
		$(foreach a,$(ABLATIONS),--ablation $(a)=runs/ablation_$(a))

# Regenerate the shipped bundle models/default (docs/model-card.md): export, calibrate the alert
# policy on the validation furnaces plus data/cal and data/cal2, then the held-out scorecard.
# Signed with the repository's DEVELOPMENT key (keys/, docs/export.md "Signing"); Ed25519 is
# deterministic, so the signature is reproduced too. Production: SIGNING_KEY=your.key.
SIGNING_KEY ?= keys/dev-bundle.key
model: runs/default/checkpoint.pt data/test/dataset.json data/cal/dataset.json data/cal2/dataset.json data/score12/dataset.json
	$(BIN)/furnace evaluate --run runs/default --data data/test --out out/eval --no-baselines
	$(BIN)/furnace export --run runs/default --out models/default --data data/train120 \
		--metrics out/eval/metrics.json --no-alert-calibration --signing-key $(SIGNING_KEY)
	$(BIN)/furnace calibrate-alerts --bundle models/default --data data/train120 --furnaces val \
		--data data/cal --furnaces all --data data/cal2 --furnaces all --signing-key $(SIGNING_KEY)
	$(BIN)/furnace memory --bundle models/default --data data/train120 --role name \
		--signing-key $(SIGNING_KEY)
	$(BIN)/furnace scorecard --bundle models/default --data data/score12 --out out/scorecard
