"""Print the markdown table of docs/training.md from the JSON files benchmarks/finetune_table.sh wrote."""
import json
import sys
from pathlib import Path

ROWS = [("base-train-stats", "pretrained ResNet20, its own BN statistics"),
        ("base-realigned", "pretrained ResNet20, BN re-aligned at p'=SA1 rate"),
        ("dc0.2-realigned", "drop-connect p=0.2 fine-tuned 3 epochs, BN re-aligned at p'=SA1 rate"),
        ("dc0.2-more-realigned", "... then 3 more epochs (lr 0.005), BN re-aligned at p'=SA1 rate")]
RATES = ["0", "0.1", "0.2", "0.3"]

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "out/finetune/results")
print("| model | " + " | ".join(f"SA1 {r}" for r in RATES) + " |")
print("|---|" + "---|" * len(RATES))
for key, label in ROWS:
    cells = []
    for r in RATES:
        f = folder / f"{key}-sa1-{r}.json"
        if not f.exists() or f.stat().st_size == 0:
            cells.append("n/a")
            continue
        d = json.loads(f.read_text())
        cell = f"{100 * d['mean']:.2f}"
        if d["runs"] > 1:
            cell += f" ± {100 * d['std']:.2f} ({100 * d['min']:.1f}-{100 * d['max']:.1f})"
        cells.append(cell)
    print(f"| {label} | " + " | ".join(cells) + " |")
