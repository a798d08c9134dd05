"""The deployed artifact folder, defined here once (docs/architecture.md):

- ``layout``: the file names (``model.onnx``, ``crossbars.json``/``.npz``, ``report.json``) and
  the ``rate-<rate>`` folders of a multi-rate artifact;
- ``crossbar_map``: the conductance map (``CrossbarMap``, ``save_map``, ``load_map``);
- ``folder``: writing the whole folder atomically (``write_artifact``);
- ``deployed``: loading one folder, checked and weight-folded for the engine (``DeployedModel``);
- ``multi_rate``: a folder of folders, one model per BN rate (``Artifact``).
"""
from .crossbar_map import FORMAT, VERSION, CrossbarMap, MappedLayer, load_map, save_map
from .deployed import DeployedModel, append_initializers
from .folder import check_output_folder, json_safe, write_artifact
from .layout import FILES, JSON_NAME, MODEL_NAME, NPZ_NAME, RATE_PREFIX, REPORT_NAME, rate_folder
from .multi_rate import Artifact, check_stats_rate

__all__ = [
    "FILES", "FORMAT", "JSON_NAME", "MODEL_NAME", "NPZ_NAME", "RATE_PREFIX", "REPORT_NAME", "VERSION",
    "Artifact", "CrossbarMap", "DeployedModel", "MappedLayer", "append_initializers", "check_output_folder",
    "check_stats_rate", "json_safe", "load_map", "rate_folder", "save_map", "write_artifact",
]
