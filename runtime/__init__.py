"""The deployment runtime: artifacts, crossbar mapping, fault injection and validation (README.md).

Only names that callers need without loading onnxruntime live here."""

# The precisions a deployed model executes at (Engine, `rram validate --precision`): fp32 runs the
# folded float weights, int8 quantises activations as a DAC/ADC would. Here, not in engine.py, so the
# CLI and the pipeline schema can list them without importing onnxruntime.
PRECISIONS = ("fp32", "int8")

# What per-chip calibration brings each layer back to (`--calibration-targets`, runtime/calibration/
# targets.py): "auto" the BN targets fold-bn recorded where the model has them, else targets
# measured on the fault-free deployed model; "bn" recorded ones only; "measured" always measured.
CALIBRATION_TARGETS = ("auto", "bn", "measured")
