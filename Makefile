# One entry point for people and CI. Every target creates or reuses .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup vision run test test-fast bench lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# A second environment for torchvision models (tests/test_architectures.py runs its detection model
# there): torchvision cannot be installed into .venv (PyPI's build breaks pytorch_lightning beside
# .venv's CPU torch), so .venv-vision has a matching torch/torchvision pair (constraints-vision.txt).
VISION       := .venv-vision
VISION_STAMP := $(VISION)/.installed

$(VISION_STAMP): pyproject.toml constraints-vision.txt
	test -x $(VISION)/bin/python || $(PYTHON) -m venv $(VISION)
	$(VISION)/bin/python -m pip install --quiet --upgrade pip
	$(VISION)/bin/python -m pip install --quiet -c constraints-vision.txt -e . torchvision
	touch $(VISION_STAMP)

vision: $(VISION_STAMP)

# The reference pipeline (prepare -> train -> export -> evaluate) on scikit-learn's digits.
run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pipelines.summary

# Both cores: one test module per worker (loadscope keeps a module's ordered DVC tests together).
PYTEST_WORKERS ?= -n 2 --dist loadscope

test: setup vision
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_WORKERS)

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_WORKERS) -m "not slow"

# BENCH=large adds the 2.3 GB MLP (minutes, ~8 GB of memory); BENCH=all runs every model; BENCH=arch
# only the real architectures (issue 14; SSDlite runs in .venv-vision, so bench needs it too).
BENCH ?= default
bench: setup vision
	PATH="$(abspath $(BIN)):$$PATH" BENCH=$(BENCH) $(BIN)/python -m benchmarks.run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VISION) .pytest_cache .ruff_cache build dist src/*.egg-info
