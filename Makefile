# Two commands open the README: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
export RRAM_DATA ?= $(SHARED)/data/cifar10-jpeg
export RRAM_WEIGHTS ?= $(SHARED)/models

.PHONY: install lint test test-fast demo artifacts bench clean

# The stamp re-runs pip only when pyproject.toml changes.
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,compilers]'
	@touch $@

# Lint first, so CI (.ci/run -> make test) fails on a lint finding; rules in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# ---------------------------------------------------------------------------------------------
# The main job, end to end, as file-dependency rules: only what changed is rebuilt.
#   pretrained ResNet20 -> drop-connect fine-tune -> per-rate BN re-alignment -> ONNX (all rates)
#   -> passes (fold BN at each rate) -> crossbar artifact per rate -> fault campaign -> figure
# Sized for a few minutes on 2 CPU cores; raise DEMO_EPOCHS/DEMO_IMAGES/DEMO_RUNS for real figures.
RRAM        := $(VENV)/bin/rram
DEMO        ?= out/demo
DEMO_INIT   ?= resnet20-akamaster
DEMO_P      ?= 0.1
DEMO_RATES  ?= 0.0 0.1
DEMO_SA1    ?= 0,0.05,0.1
DEMO_EPOCHS ?= 1
DEMO_TRAIN_IMAGES ?= 10000
DEMO_IMAGES ?= 2000
DEMO_RUNS   ?= 5
PRESET      ?= paper
.PRECIOUS: $(DEMO)/model.r%.onnx
comma := ,
empty :=
space := $(empty) $(empty)

demo: install $(DEMO)/accuracy.png
	@echo "demo: results in $(DEMO)/results.json, figure $(DEMO)/accuracy.png"

artifacts: install $(foreach r,$(DEMO_RATES),$(DEMO)/art/rate-$(r)/report.json)

# Parameter stamps: an output depends on the make variables that shape it, not only on files.
# Each stamp is (re)written while the Makefile is read, and only when its values change, so
# `make demo DEMO_RUNS=20` re-runs just the campaign and the figure, a new DEMO_RATES re-runs
# recalibration onwards, and `make -n demo` still shows exactly what would run.
write_stamp = $(shell mkdir -p $(dir $(1)) && f='$(1)' && c='$(2)' && \
	{ [ "$$(cat "$$f" 2>/dev/null)" = "$$c" ] || printf '%s\n' "$$c" > "$$f"; })
ifneq ($(filter demo artifacts $(DEMO)/%,$(MAKECMDGOALS)),)
$(call write_stamp,$(DEMO)/.init.params,$(DEMO_INIT))
$(call write_stamp,$(DEMO)/.train.params,$(DEMO_INIT) $(DEMO_P) $(DEMO_EPOCHS) $(DEMO_TRAIN_IMAGES))
$(call write_stamp,$(DEMO)/.rates.params,$(DEMO_RATES))
$(call write_stamp,$(DEMO)/.preset.params,$(PRESET))
$(call write_stamp,$(DEMO)/.validate.params,$(DEMO_SA1) $(DEMO_RUNS) $(DEMO_IMAGES))
$(call write_stamp,$(DEMO)/.plot.params,$(DEMO_P))
endif
# A failed or killed step leaves no target that looks finished.
.DELETE_ON_ERROR:

$(DEMO)/baseline.json: $(DEMO)/.init.params
	@mkdir -p $(DEMO)
	$(RRAM) eval --checkpoint $(DEMO_INIT) --data $(RRAM_DATA) --json > $@.tmp && mv $@.tmp $@

# `complete` is touched only after `rram train` returns, so a training killed in any way (its
# model.pt is rewritten every epoch) is picked up again; --auto-resume continues a run of the same
# settings and replaces one of other settings.
$(DEMO)/train/complete: $(DEMO)/.train.params | $(DEMO)/baseline.json
	$(RRAM) train --model resnet20 --init $(DEMO_INIT) --drop-rate $(DEMO_P) --epochs $(DEMO_EPOCHS) \
	    --images $(DEMO_TRAIN_IMAGES) --lr 0.01 --data $(RRAM_DATA) --out $(@D) --auto-resume
	@touch $@

$(DEMO)/recalibrated.pt: $(DEMO)/train/complete $(DEMO)/.rates.params
	$(RRAM) recalibrate $(DEMO)/train/model.pt --rates $(subst $(space),$(comma),$(DEMO_RATES)) --batches 20 \
	    --data $(RRAM_DATA) --out $@

$(DEMO)/model.onnx: $(DEMO)/recalibrated.pt
	$(RRAM) export $< --all-rates --out $@

$(DEMO)/model.r%.onnx: $(DEMO)/model.onnx
	$(RRAM) passes $< $@ --passes standard --bn-rate $*

$(DEMO)/art/rate-%/report.json: $(DEMO)/model.r%.onnx $(DEMO)/.preset.params
	$(RRAM) quantize $< $(@D) --preset $(PRESET) --force

# validate reads every rate-* folder under art/: drop those of rates no longer in DEMO_RATES
$(DEMO)/results.json: $(foreach r,$(DEMO_RATES),$(DEMO)/art/rate-$(r)/report.json) $(DEMO)/.validate.params
	@for d in $(DEMO)/art/rate-*; do case " $(DEMO_RATES) " in *" $${d##*/rate-} "*) ;; \
	    *) echo "removing $$d (rate not in DEMO_RATES)"; rm -rf "$$d";; esac; done
	rm -f $@
	$(RRAM) validate $(DEMO)/art --stats-rate auto --data $(RRAM_DATA) --sa1 $(DEMO_SA1) \
	    --runs $(DEMO_RUNS) --images $(DEMO_IMAGES) --seed 0 --out $@

$(DEMO)/accuracy.png: $(DEMO)/results.json $(DEMO)/.plot.params
	$(RRAM) plot $< --labels "ResNet20 drop-connect p=$(DEMO_P)" --out $@

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache out
