"""Validation campaigns (runtime/README.md): ``plan`` (settings, checks, identity, jobs), ``chip``
(the per-chip function every executor runs), ``writer`` (the results file), ``run`` (``validate``:
a campaign of simulated chips), ``measured`` (one measured chip).

The names below are imported when first used: ``plan`` alone (numpy only) is what the CLI reads
to build its parsers, and must not load onnxruntime."""
import importlib

_HOME = {"validate": "run", "measure_chip": "chip", "clean_accuracy": "chip", "validate_fault_map": "measured",
         "calibrate_fault_map": "measured", "CampaignConfig": "plan", "calibrate_config": "plan", "RUNS": "plan",
         "MIN_RUNS": "plan", "SENSITIVITY_RUNS": "plan"}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
