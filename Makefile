# One virtualenv per checkout, made and filled from pyproject.toml on first use.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all canaries lint clean bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,tpu]"
	touch $@

## main job: (1) convert the seed models from randomly initialised timm/HF weights and print the parity table,
## (2) take a relpos ViT from timm, train it on digits over all local devices, export it back to timm (same
## predictions) and print its test accuracy
demo: $(VENV)/.installed
	$(PY) -m converters demo
	$(PY) -m train.demo

## lint, then the default test suite (large models are marked slow and left to test-all)
test: $(VENV)/.installed lint
	$(PY) -m pytest -q

## every test, the slow ones (large/huge/384 px) included
test-all: $(VENV)/.installed lint
	$(PY) -m pytest -q -m ""

## the XLA:CPU pathologies our CPU kernels work around, still there? (deselected by default: after a jax upgrade a
## failure here says a kernel may be unnecessary, not that vitjax is broken)
canaries: $(VENV)/.installed
	$(PY) -m pytest -q -m canary

## vitjax against timm / transformers on this machine: speed, compile time, memory, conversion (benchmarks/)
bench: $(VENV)/.installed
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV)
