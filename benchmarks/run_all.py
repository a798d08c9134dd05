"""`make bench`: run every benchmarks/bench_*.py in turn (each prints its own table)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
status = 0
for script in sorted(here.glob("bench_*.py")):
    print(f"== {script.name}", flush=True)
    status |= subprocess.call([sys.executable, str(script)], cwd=here.parent)
sys.exit(status)
