# Two commands open the README: `make install`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
export RRAM_DATA ?= $(SHARED)/data/cifar10-jpeg
export RRAM_WEIGHTS ?= $(SHARED)/models

.PHONY: install test test-fast demo artifacts bench clean

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
# A stamp is rewritten only when those values change, so `make demo DEMO_RUNS=20` re-runs just the
# campaign and the figure, and a new DEMO_RATES re-runs recalibration onwards.
.PHONY: FORCE
define stamp
	@mkdir -p $(@D); printf '%s\n' '$(1)' > $@.tmp; if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
endef
$(DEMO)/.init.params: FORCE ; $(call stamp,$(DEMO_INIT))
$(DEMO)/.train.params: FORCE ; $(call stamp,$(DEMO_INIT) $(DEMO_P) $(DEMO_EPOCHS) $(DEMO_TRAIN_IMAGES))
$(DEMO)/.rates.params: FORCE ; $(call stamp,$(DEMO_RATES))
$(DEMO)/.preset.params: FORCE ; $(call stamp,$(PRESET))
$(DEMO)/.validate.params: FORCE ; $(call stamp,$(DEMO_SA1) $(DEMO_RUNS) $(DEMO_IMAGES))
$(DEMO)/.plot.params: FORCE ; $(call stamp,$(DEMO_P))

$(DEMO)/baseline.json: $(DEMO)/.init.params
	@mkdir -p $(DEMO)
	$(RRAM) eval --checkpoint $(DEMO_INIT) --data $(RRAM_DATA) --json > $@.tmp && mv $@.tmp $@

# Resume a killed run of the same configuration; otherwise (new parameters) start afresh.
TRAIN_ARGS = --model resnet20 --init $(DEMO_INIT) --drop-rate $(DEMO_P) --epochs $(DEMO_EPOCHS) \
	--images $(DEMO_TRAIN_IMAGES) --lr 0.01 --data $(RRAM_DATA) --out $(@D)
$(DEMO)/train/model.pt: $(DEMO)/.train.params | $(DEMO)/baseline.json
	$(RRAM) train $(TRAIN_ARGS) --resume 2>/dev/null || { rm -rf $(@D) && $(RRAM) train $(TRAIN_ARGS); }
	@touch $@  # a resumed run that had finished rewrites nothing: mark it current

$(DEMO)/recalibrated.pt: $(DEMO)/train/model.pt $(DEMO)/.rates.params
	$(RRAM) recalibrate $< --rates $(subst $(space),$(comma),$(DEMO_RATES)) --batches 20 \
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
