"""``rram pipeline``: one reproducible build from a trained model to validated artifacts and a
report (issue #13). ``config`` reads the TOML file, ``state`` fingerprints and records steps,
``build`` plans and runs them through the ``rram`` command line, ``report`` writes report.md."""
from .build import STAGES, Pipeline, execute
from .config import SCHEMA, load_config

__all__ = ["SCHEMA", "STAGES", "Pipeline", "execute", "load_config"]
