# rankserve: every target creates or reuses the project's virtual environment and installs
# what it needs, so `make serve` and `make test` work on a fresh machine with no other step.
#
#   make serve            start the gateway on the embedded ONNX Runtime backend
#   make test             lint, type-check and run the whole test suite
#   make train / export   train the default ranker on KuaiRand and export it to ONNX
#   ORT=gpu make serve    use onnxruntime-gpu instead of the CPU build

PYTHON ?= python3
VENV ?= .venv
ORT ?= cpu
BIN := $(VENV)/bin
comma := ,
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_REPOSITORY ?= model_repository
DATA ?= ../shared/data/kuairand

SERVE_ENV := $(VENV)/.installed-$(ORT)
TRAIN_ENV := $(VENV)/.installed-$(ORT)+train
DEV_ENV := $(VENV)/.installed-$(ORT)+train+test+loadtest

.PHONY: serve test lint typecheck train export check-repo clean

# One stamp per set of extras; it is rebuilt when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(subst +,$(comma),$*)]"
	touch $@

serve: $(SERVE_ENV)
	$(BIN)/rankserve serve --host $(HOST) --port $(PORT) --model-repository $(MODEL_REPOSITORY)

lint: $(DEV_ENV)
	$(BIN)/ruff check serving tests loadtests
	$(BIN)/mypy

test: lint $(DEV_ENV)
	$(BIN)/python -m pytest -q

train: $(TRAIN_ENV)
	$(BIN)/rankserve train --data $(DATA)

export: $(TRAIN_ENV)
	$(BIN)/rankserve export --data $(DATA) --model-repository $(MODEL_REPOSITORY)

check-repo: $(SERVE_ENV)
	$(BIN)/rankserve check-repo $(MODEL_REPOSITORY)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
