# Two commands open the README: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
export RRAM_DATA ?= $(SHARED)/data/cifar10-jpeg
export RRAM_WEIGHTS ?= $(SHARED)/models

.PHONY: install test test-fast demo bench clean

# The stamp re-runs pip only when pyproject.toml changes.
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/rram eval --model resnet20 --checkpoint resnet20-akamaster --data $(RRAM_DATA)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
