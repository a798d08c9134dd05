"""``rram pipeline``: one reproducible build from a trained model to validated artifacts and a
report (issue #13). ``config`` reads the TOML file; ``plan`` lays out the steps, what each reads
and writes; ``actions`` runs a step through the ``rram`` command line (``api.argv``); ``state``
fingerprints and records steps and ``decide`` says which to re-run; ``execute`` runs them in
order; ``report`` writes report.md."""
from .config import SCHEMA, load_config
from .execute import execute
from .plan import STAGES, Pipeline

__all__ = ["SCHEMA", "STAGES", "Pipeline", "execute", "load_config"]
