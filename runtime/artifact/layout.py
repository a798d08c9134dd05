"""The files of a deployed artifact folder (docs/crossbar-format.md, docs/quantizer.md), and the
names of the per-BN-rate folders of a multi-rate artifact (multi_rate.py)."""
MODEL_NAME = "model.onnx"        # the QDQ model
REPORT_NAME = "report.json"      # the quantizer's per-layer report
JSON_NAME = "crossbars.json"     # the conductance map: description
NPZ_NAME = "crossbars.npz"       # the conductance map: cell levels and scales
FILES = (MODEL_NAME, JSON_NAME, NPZ_NAME, REPORT_NAME)
RATE_PREFIX = "rate-"            # ART/rate-<rate>/: the artifact whose BN statistics are <rate>'s


def rate_folder(rate: str) -> str:
    """The folder of one BN rate's artifact in a multi-rate artifact: "0.1" -> "rate-0.1"."""
    return f"{RATE_PREFIX}{rate}"
