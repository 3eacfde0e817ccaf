# cnnlab -- every target creates the virtual environment on first use.
#   make train                      train the article's CNN (custom layers) on the offline digits set
#   make train ARGS="model=resnet model.impl=builtin trainer.max_epochs=3"
#   make test                       the whole suite, slow CLI/resume/DDP/sweep tests included (what CI runs)
#   make test-fast                  the quick subset for development (-m "not slow")
#   make gpu-check                  on a CUDA machine: gpu tests, GPU benchmarks, the article's
#                                   experiment (5 seeds per impl), figures written into docs/
#   make gpu-check-offline WHEELS=.whl ARGS="--budget 540 --out /tmp/out"
#                                   the same on a GPU machine with torch & co. but no package
#                                   index: no venv, hydra-core/omegaconf/antlr4 from WHEELS
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cnnlab-installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: install train eval bench bench-step gpu-check gpu-check-offline test test-fast test-full lint format clean clean-outputs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,tensorboard,track,export,search,cluster]'
	@touch $(STAMP)

install: $(STAMP)

train: install
	$(BIN)/cnnlab-train $(ARGS)

eval: install
	$(BIN)/cnnlab-eval $(ARGS)

bench: install
	$(BIN)/python -m cnnlab.bench layers $(ARGS)

bench-step: install
	$(BIN)/python -m cnnlab.bench step --mode eager,compile $(ARGS)

gpu-check: install
	$(BIN)/python -m cnnlab.bench.gpu_check $(ARGS)

WHEELS ?= .whl
OFFLINE_SITE := /tmp/cnnlab-offline-site
gpu-check-offline:
	python3 -m pip install -q --no-index --no-deps --no-compile --target $(OFFLINE_SITE) $(WHEELS)/*.whl
	PYTHONPATH=$(CURDIR)/src:$(OFFLINE_SITE) python3 -m cnnlab.bench.gpu_check $(ARGS)

test: install
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-full: test  # the old name of `make test`

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: install
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:  # caches and build files; runs and checkpoints under outputs/ stay
	rm -rf .pytest_cache .ruff_cache .hypothesis build dist src/*.egg-info lightning_logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-outputs:  # every run, sweep and checkpoint under outputs/: asked for by name only
	find outputs -mindepth 1 ! -name .gitkeep -prune -exec rm -rf {} +
