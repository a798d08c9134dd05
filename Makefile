# Two commands open the README: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
export RRAM_DATA ?= $(SHARED)/data/cifar10-jpeg
export RRAM_WEIGHTS ?= $(SHARED)/models

.PHONY: install lint test test-fast demo demo-plan bench clean

# The stamp re-runs pip only when pyproject.toml (or this file) changes. aihwkit-lightning, the
# peer of tests/test_aihwkit_lightning_slow.py (docs/runtime.md), pins torch==2.13.0 but its
# PyTorch path runs on our torch 2.14.1: --no-deps keeps ours (`pip check` would report the pin;
# it is not run here).
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,compilers,ray]'
	$(PY) -m pip install --quiet --no-deps aihwkit-lightning==2.1.0
	@touch $@

# Lint first, so CI (.ci/run -> make test) fails on a lint finding; rules in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .

# --durations: CI's log names the slowest tests (the suite's budget is 15 min on 2 cores; AVX2-only
# cores take about twice as long as AVX-512 ones), so the next trim starts from numbers.
test: install lint
	$(PY) -m pytest -q --durations=25

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# ---------------------------------------------------------------------------------------------
# The main job, end to end: `rram pipeline` runs pretrained ResNet20 -> drop-connect fine-tune ->
# per-rate BN re-alignment -> ONNX (all rates) -> passes -> crossbar artifact per rate -> fault
# campaign, for the fault-aware model and the pretrained baseline, and writes out/demo/report.md.
# Every step is skipped when its inputs and settings are unchanged (docs/pipeline.md), so a
# second `make demo` does nothing; edit configs/demo.toml to change the run, and
# `make demo-plan` (rram pipeline --dry-run) says what a change would re-run, changing no file.
RRAM := $(VENV)/bin/rram
DEMO_CONFIG ?= configs/demo.toml

demo: install
	$(RRAM) pipeline $(DEMO_CONFIG)

demo-plan: install
	$(RRAM) pipeline $(DEMO_CONFIG) --dry-run

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache out
