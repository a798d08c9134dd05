"""The files of a deployed artifact folder (docs/crossbar-format.md, docs/quantizer.md)."""
MODEL_NAME = "model.onnx"        # the QDQ model
REPORT_NAME = "report.json"      # the quantizer's per-layer report
JSON_NAME = "crossbars.json"     # the conductance map: description
NPZ_NAME = "crossbars.npz"       # the conductance map: cell levels and scales
FILES = (MODEL_NAME, JSON_NAME, NPZ_NAME, REPORT_NAME)
