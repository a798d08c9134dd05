"""Crossbar quantizer: the converter from a float ONNX model to the crossbar device of
``runtime.crossbar`` (it lives beside the device model it targets, as aihwkit keeps its converter
beside its device models; see runtime/README.md and docs/architecture.md).

- ``layers``: which layers are mapped (``LayerSelection``, ``find_layers``, ``load_model``);
- ``convert``: quantisation and the QDQ graph rewrite (``quantize_model``, ``quantize_to_folder``);
- ``report``: SQNR and the per-layer table (``format_report``).

The artifact folder it produces is written by ``runtime.artifact`` (``write_artifact``).
"""
from ..artifact import json_safe, write_artifact
from ..errors import QuantizeError
from .convert import quantize_model, quantize_to_folder
from .layers import MAPPABLE_OPS, LayerSelection, find_layers, load_model
from .report import format_report, sqnr_db

__all__ = [
    "MAPPABLE_OPS", "LayerSelection", "QuantizeError", "find_layers", "format_report", "json_safe",
    "load_model", "quantize_model", "quantize_to_folder", "sqnr_db", "write_artifact",
]
