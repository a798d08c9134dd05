"""docs/RESULTS.md's tables, made from the committed campaign files under docs/results/ (issue 16).

    PYTHONPATH=. python benchmarks/study_tables.py collect   # copy finished study campaigns
    PYTHONPATH=. python benchmarks/study_tables.py tables    # print the tables from docs/results/
    PYTHONPATH=. python benchmarks/study_tables.py write     # put them into the documents
    PYTHONPATH=. python benchmarks/study_tables.py check     # the documents' tables == the files'

`collect` takes each `rram pipeline configs/study/<scale>/<model>-<variant>.toml` run folder under
out/study/ whose campaign is complete and copies its `rram validate` results files to
docs/results/<model>/<variant>.json (the paper's per-rate BN re-alignment) and
<variant>.calibrated.json (per-chip calibration); a `full`-scale config's variant is prefixed
`full-`. `tables` prints, per model, one row per (variant, method): the mean accuracy with the
between-chip sample sd and the worst chip at each SA1 rate, and the loss against the same file's
fault-free (SA1 0) chips. Every figure is `rates[i].summary` of the file, as `rram validate
--json` and `rram plot` report it. It also makes docs/runtime.md's table of per-chip
calibration (issue 12: per-rate BN against calibration on N = 64 / 256 / 1024 images and with the
most sensitive layer protected; files under docs/results/calibration/). `check` (run by
tests/test_results_doc.py) fails when a document's generated block differs from what the files
give.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.fileio import atomic_write_bytes  # noqa: E402  (the checkout's runtime/)

RESULTS = ROOT / "docs" / "results"
DOC = ROOT / "docs" / "RESULTS.md"
BEGIN, END = "<!-- study-tables:begin (benchmarks/study_tables.py) -->", "<!-- study-tables:end -->"

MODELS = {  # folder -> heading, in the document's order
    "resnet20a": "ResNet20, option A (parameter-free shortcuts; the shared pretrained model)",
    "resnet20b": "ResNet20, option B (1x1 shortcuts padded to 3x3)",
    "mobilenetv2": "MobileNetV2 (CIFAR variant, every 1x1 padded to 3x3)",
    "vgg13": "VGG13-BN",
}
VARIANTS = {  # variant -> what it is, in row order
    "plain": "plain training",
    "dc10": "drop-connect p=0.1",
    "dc20": "drop-connect p=0.2",
    "dc30": "drop-connect p=0.3",
    "dc20-wide": "drop-connect p=0.2, widened 2x",
    "dc30-wide": "drop-connect p=0.3, widened 2x",
    "wide-dc20": "widened 2x, drop-connect p=0.2",
    "wide-dc30-4ep": "widened 2x, drop-connect p=0.3, 4 epochs",
    "wide-dc30": "widened 2x, drop-connect p=0.3",
    "wide-dc30-scratch": "widened 2x, drop-connect p=0.3, from scratch",
}
LABELS = {  # (model, variant) -> what the row is, where the generic variant name says too little
    ("resnet20a", "plain"): "the shared pretrained model (no drop-connect)",
    ("resnet20a", "dc10"): "drop-connect p=0.1, 15-epoch fine-tune",
    ("resnet20a", "dc20"): "drop-connect p=0.2, 15-epoch fine-tune",
    ("resnet20a", "dc30"): "drop-connect p=0.3, 15-epoch fine-tune",
    ("resnet20a", "wide-dc30-4ep"): "shared model widened 2x, drop-connect p=0.3, 4-epoch fine-tune",
    ("resnet20a", "wide-dc30"): "shared model widened 2x, drop-connect p=0.3, 15-epoch fine-tune",
    ("resnet20a", "wide-dc30-scratch"): "widened 2x, drop-connect p=0.3, 40 epochs from scratch, bf16 training",
    ("mobilenetv2", "plain"): "plain training, width 0.35, 30 epochs, bf16 training",
    ("mobilenetv2", "dc20"): "drop-connect p=0.2, width 0.35, 30 epochs, bf16 training",
    ("mobilenetv2", "dc20-wide"): "drop-connect p=0.2, width 0.5, 20 epochs, bf16 training",
    ("mobilenetv2", "dc30-wide"): "drop-connect p=0.3, width 0.5, 20 epochs, bf16 training",
    ("resnet20b", "plain"): "plain training, 30 epochs from scratch, bf16 training",
    ("resnet20b", "dc20"): "drop-connect p=0.2, 30 epochs from scratch, bf16 training",
    ("resnet20b", "wide-dc30"): "widened 2x, drop-connect p=0.3, 30 epochs from scratch, bf16 training",
    ("vgg13", "plain"): "plain training, width 0.25, 40 epochs",
    ("vgg13", "dc20"): "drop-connect p=0.2, width 0.25, 40 epochs",
    ("vgg13", "dc20-wide"): "drop-connect p=0.2, width 0.5 (2x), 30 epochs, bf16 training",
    ("vgg13", "dc30-wide"): "drop-connect p=0.3, width 0.5 (2x), 30 epochs, bf16 training",
}
SUFFIXES = {"": "per-rate BN", ".calibrated": "per-chip calibration"}


def split_config_name(name: str) -> tuple[str, str]:
    """'resnet20a-wide-dc30' -> ('resnet20a', 'wide-dc30')."""
    model, _, variant = name.partition("-")
    return model, variant


def collect(out_root: Path) -> list[Path]:
    """Copy every complete study campaign under OUT_ROOT/<scale>/<config>/<stage>/ into docs/results/."""
    written = []
    for scale_dir in sorted(p for p in out_root.iterdir() if p.is_dir()):
        for run in sorted(p for p in scale_dir.iterdir() if p.is_dir()):
            model, variant = split_config_name(run.name)
            if model not in MODELS:
                continue
            if scale_dir.name != "cpu":
                variant = f"{scale_dir.name}-{variant}"
            for src in sorted(run.glob("*/results*.json")):
                suffix = src.stem.removeprefix("results").replace("-", ".")  # "", ".calibrated"
                if suffix not in SUFFIXES:
                    continue
                doc = json.loads(src.read_text())
                if not doc.get("complete"):
                    print(f"skipped (campaign not complete): {src}", file=sys.stderr)
                    continue
                dst = RESULTS / model / f"{variant}{suffix}.json"
                dst.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(dst, src.read_bytes())
                written.append(dst)
    return written


def parse_name(path: Path) -> tuple[str, str, bool]:
    """docs/results/<model>/<variant>[.calibrated].json -> (scale, variant without "full-", calibrated)."""
    name = path.name.removesuffix(".json")
    calibrated = name.endswith(".calibrated")
    name = name.removesuffix(".calibrated")
    return ("full" if name.startswith("full-") else "cpu", name.removeprefix("full-"), calibrated)


def _variant_key(path: Path) -> tuple:
    scale, base, calibrated = parse_name(path)
    order = list(VARIANTS).index(base) if base in VARIANTS else len(VARIANTS)
    return (scale == "full", order, base, calibrated)


def describe(path: Path) -> tuple[str, str]:
    """(variant label, method label) of a docs/results file."""
    scale, base, calibrated = parse_name(path)
    label = LABELS.get((path.parent.name, base), VARIANTS.get(base, base))
    return (f"{label} ({scale})", SUFFIXES[".calibrated" if calibrated else ""])


def rows(path: Path) -> dict:
    """What the tables take from one results file: per SA1 rate its summary, and the config."""
    doc = json.loads(path.read_text())
    return {"rates": {round(r["sa1"], 6): r["summary"] for r in doc["rates"] if r.get("sa0", 0) == 0},
            "config": doc["config"]}


def table(model: str) -> list[str]:
    files = sorted((RESULTS / model).glob("*.json"), key=_variant_key)
    rates = sorted({r for f in files for r in rows(f)["rates"]})
    faulty = [r for r in rates if r > 0]
    lines = [f"### {MODELS[model]}", "",
             "| variant | BN statistics | chips x images | " + " | ".join(f"SA1 {100 * r:g}%" for r in rates)
             + " | loss at " + " / ".join(f"{100 * r:g}" for r in faulty) + "% | file |",
             "|---|---|---|" + "---|" * len(rates) + "---|---|"]
    for f in files:
        info = rows(f)
        cfg = info["config"]
        variant, method = describe(f)
        if cfg.get("calibrate"):
            method += f" ({cfg['calibrate']} images)"
        cells = []
        for r in rates:
            s = info["rates"].get(r)
            if s is None:
                cells.append("n/a")
            elif r == 0:
                cells.append(f"{100 * s['mean']:.2f}")
            else:
                cells.append(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (min {100 * s['min']:.1f})")
        clean = info["rates"].get(0.0)
        loss = " / ".join(f"{100 * (clean['mean'] - info['rates'][r]['mean']):.1f}"
                          if clean and r in info["rates"] else "n/a" for r in faulty)
        rel = f"results/{f.relative_to(RESULTS).as_posix()}"
        lines.append(f"| {variant} | {method} | {cfg['runs']} x {cfg['images']:,} | " + " | ".join(cells)
                     + f" | {loss} | [{f.name}]({rel}) |")
    return lines


CAL_DOC = ROOT / "docs" / "runtime.md"
CAL_BEGIN, CAL_END = "<!-- calibration-table:begin (benchmarks/study_tables.py) -->", "<!-- calibration-table:end -->"
CALIBRATION = [  # issue 12's comparison: (model, method, file under docs/results/), in row order
    (model, method, path)
    for model, folder, variant in (("shared pretrained ResNet20", "resnet20a", "plain"),
                                   ("drop-connect p=0.2 fine-tune (15 epochs)", "resnet20a", "dc20"))
    for method, path in (
        ("the paper's per-rate BN", f"{folder}/{variant}.json"),
        ("per-chip calibration, N = 64", f"calibration/{folder}-{variant}.calibrated-64.json"),
        ("per-chip calibration, N = 256", f"{folder}/{variant}.calibrated.json"),
        ("per-chip calibration, N = 1024", f"calibration/{folder}-{variant}.calibrated-1024.json"),
        ("N = 256, most sensitive layer protected", f"calibration/{folder}-{variant}.calibrated-256-protect.json"))
] + [  # the widened model (issue 16): N = 64 / 1024 not run; its first conv protected, not a sensitivity-chosen layer
    ("widened 2x, p=0.3 fine-tune (15 epochs)", method, path) for method, path in (
        ("the paper's per-rate BN", "resnet20a/wide-dc30.json"),
        ("per-chip calibration, N = 256", "resnet20a/wide-dc30.calibrated.json"),
        ("N = 256, first conv protected", "calibration/resnet20a-wide-dc30.calibrated-256-protect.json"))]


def calibration_table() -> str:
    """docs/runtime.md's table (issue 12): the paper's per-rate BN against per-chip calibration."""
    rates = [0.0, 0.1, 0.2, 0.3]
    lines = ["| model | BN statistics | " + " | ".join(f"SA1 {100 * r:g}%" for r in rates) + " | file |",
             "|---|---|" + "---|" * len(rates) + "---|"]
    for model, method, rel in CALIBRATION:
        path = RESULTS / rel
        if not path.is_file():
            lines.append(f"| {model} | {method} | " + " | ".join("not run" for _ in rates) + " | |")
            continue
        info = rows(path)
        cfg = info["config"]
        if cfg.get("protect"):
            method += f" ({', '.join(f'`{n}`' for n in cfg['protect'])}: {100 * cfg['protected_cells']:.1f}% of cells)"
        cells = [f"{100 * info['rates'][r]['mean']:.2f}" + ("" if r == 0 else f" ± {100 * info['rates'][r]['std']:.2f}")
                 if r in info["rates"] else "n/a" for r in rates]
        lines.append(f"| {model} | {method} | " + " | ".join(cells)
                     + f" | [{path.name}](results/{rel}) |")
    return "\n".join(lines)


def tables() -> str:
    parts = []
    for model in MODELS:
        if (RESULTS / model).is_dir() and any((RESULTS / model).glob("*.json")):
            parts.append("\n".join(table(model)))
    return "\n\n".join(parts)


def generated_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"markers {begin!r} ... {end!r} not found")
    return text[text.index(begin) + len(begin):text.index(end)].strip()


def with_block(text: str, content: str, begin: str = BEGIN, end: str = END) -> str:
    """TEXT with the generated block between BEGIN and END replaced by CONTENT."""
    generated_block(text, begin, end)  # the markers are there
    return text[:text.index(begin) + len(begin)] + "\n" + content + "\n" + text[text.index(end):]


# each generated block: (document, begin marker, end marker, what makes it)
BLOCKS = [(DOC, BEGIN, END, tables), (CAL_DOC, CAL_BEGIN, CAL_END, calibration_table)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["collect", "tables", "check", "write"],
                    help="write: replace the generated blocks of docs/RESULTS.md and docs/runtime.md")
    ap.add_argument("--out-root", type=Path, default=ROOT / "out" / "study")
    args = ap.parse_args(argv)
    if args.action == "collect":
        for p in collect(args.out_root):
            print(f"wrote {p.relative_to(ROOT)}")
        return 0
    if args.action == "tables":
        print(tables())
        return 0
    stale = []
    for doc, begin, end, make in BLOCKS:
        text = doc.read_text()
        if args.action == "write":
            atomic_write_bytes(doc, with_block(text, make(), begin, end).encode())
            print(f"wrote {doc.relative_to(ROOT)}")
        elif generated_block(text, begin, end) != make():
            stale.append(doc.relative_to(ROOT).as_posix())
    if stale:
        print(f"{', '.join(stale)}: the tables differ from docs/results/ (rerun "
              f"`python benchmarks/study_tables.py write`)", file=sys.stderr)
        return 1
    if args.action == "check":
        print("the generated tables match docs/results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
