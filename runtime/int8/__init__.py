"""int8 execution of a deployed model (``--precision int8``): ``prepare`` (onnxruntime static
quantisation retargeted to the crossbar integers, and the per-build exactness check),
``streamline`` (exact graph rewrites), ``graph`` (the prepared graph and its input quantisation)."""
from .graph import Int8Graph, quantize_input
from .prepare import int8_fits, prepare_int8
from .streamline import streamline_int8

__all__ = [
    "Int8Graph", "int8_fits", "prepare_int8", "quantize_input", "streamline_int8",
]
