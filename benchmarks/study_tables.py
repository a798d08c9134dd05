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
--json` and `rram plot` report it. After ResNet20 option A's table comes its table with placement
(benchmarks/study_placement.py: docs/results/placement/ read in place; those files count with
option A at width 1 in the status and the targets), and after VGG13-BN's its table with placement
(the zoo's `vgg13-dc30`, width 1). It also makes docs/runtime.md's table of per-chip
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

import study_losses as losses  # noqa: E402  (benchmarks/study_losses.py)
import study_placement as placement  # noqa: E402  (benchmarks/study_placement.py)

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
SUFFIXES = {"": "per-rate BN", ".calibrated": "per-chip calibration", ".placed": "placement",
            ".placed.calibrated": "placement + per-chip calibration"}  # file name -> method (the
#             table reads the method from each file's config; tests check that the names agree)


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


def parse_name(path: Path) -> tuple[str, str, str]:
    """docs/results/<model>/<variant>[.placed][.calibrated].json -> (scale, variant without "full-",
    suffix as in SUFFIXES)."""
    base, _, suffix = path.name.removesuffix(".json").partition(".")
    return ("full" if base.startswith("full-") else "cpu", base.removeprefix("full-"), f".{suffix}" if suffix else "")


def _variant_key(path: Path) -> tuple:
    scale, base, suffix = parse_name(path)
    order = list(VARIANTS).index(base) if base in VARIANTS else len(VARIANTS)
    return (scale == "full", order, base, list(SUFFIXES).index(suffix) if suffix in SUFFIXES else len(SUFFIXES))


def describe(path: Path) -> tuple[str, str]:
    """(variant label, method label) of a docs/results file; the method as its config says."""
    scale, base, _ = parse_name(path)
    label = LABELS.get((path.parent.name, base), VARIANTS.get(base, base))
    return (f"{label} ({scale})", losses.method(path))


def rows(path: Path) -> dict:
    """What the tables take from one results file: per SA1 rate its summary, and the config."""
    doc = json.loads(path.read_text())
    return {"rates": {round(r["sa1"], 6): r["summary"] for r in doc["rates"] if r.get("sa0", 0) == 0},
            "config": doc["config"]}


def table(model: str, files: list[Path] | None = None, heading: str | None = None) -> list[str]:
    """One model's table: per (variant, method) row the mean (± between-chip sd, worst chip) at each
    rate, the loss against the model's plain fault-free accuracy (the main figure) and against the
    campaign's own fault-free chips."""
    files = files if files is not None else sorted((RESULTS / model).glob("*.json"), key=_variant_key)
    rates = sorted({r for f in files for r in rows(f)["rates"]})
    faulty = [r for r in rates if r > 0]
    at = " / ".join(f"{100 * r:g}" for r in faulty) + "%"
    lines = [f"### {heading or MODELS[model]}", "",
             "| variant | method | chips x images | " + " | ".join(f"SA1 {100 * r:g}%" for r in rates)
             + f" | loss vs plain fault-free, {at} | vs own fault-free chips | file |",
             "|---|---|---|" + "---|" * len(rates) + "---|---|---|"]
    for f in files:
        info = rows(f)
        cfg = info["config"]
        variant, method = describe(f) if heading is None else (QUICK.get(losses.stem(f), losses.stem(f)),
                                                               losses.method(f))
        cells = []
        for r in rates:
            s = info["rates"].get(r)
            if s is None:
                cells.append("n/a")
            elif r == 0:
                cells.append(f"{100 * s['mean']:.2f}")
            else:
                cells.append(f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (min {100 * s['min']:.1f})")
        plain, own = losses.losses(f)
        rel = f"results/{f.relative_to(RESULTS).as_posix()}"
        lines.append(f"| {variant} | {method} | {cfg['runs']} x {cfg['images']:,} | " + " | ".join(cells)
                     + f" | **{losses.fmt_losses(plain, faulty)}** | {losses.fmt_losses(own, faulty)} "
                       f"| [{f.name}]({rel}) |")
    return lines


QUICK = {  # docs/results/quick/<stem>.*-2000.json: what the model is (issue 36's placement check)
    "resnet20-pretrained": "the shared pretrained ResNet20 (no drop-connect)",
    "resnet20-dc30-ft3": "zoo `resnet20-dc30-ft3`: drop-connect p=0.3, 3-epoch fine-tune of the shared model (*)",
    "resnet20a-full-wide-dc30": "widened 2x, drop-connect p=0.3, 40 epochs from scratch (`full` config, GPU)",
}


def quick_files() -> list[Path]:
    files = [p for p in (RESULTS / "quick").glob("*-2000.json") if losses.stem(p) in QUICK]
    order = ["BN", "per-rate", "per-chip", "placement", "placement +"]
    return sorted(files, key=lambda p: (list(QUICK).index(losses.stem(p)),
                                        max(i for i, w in enumerate(order) if losses.method(p).startswith(w))))


def quick_table() -> str:
    return "\n".join(table("quick", quick_files(), "Quick campaigns with placement (not the study protocol)"))


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
        if model in placement.HEADINGS and (RESULTS / placement.FOLDER).is_dir():
            parts.append(placement.table(RESULTS, model))
    if quick_files():
        parts.append(quick_table())
    return "\n\n".join(parts)


WIDTHS = {  # (folder, variant) -> width multiplier of the model (1 = the paper's architecture)
    **{("resnet20a", v): 1 for v in ("plain", "dc10", "dc20", "dc30")},
    **{("resnet20a", v): 2 for v in ("wide-dc30-4ep", "wide-dc30", "wide-dc30-scratch")},
    ("resnet20b", "plain"): 1, ("resnet20b", "dc20"): 1, ("resnet20b", "wide-dc30"): 2,
    ("mobilenetv2", "plain"): 0.35, ("mobilenetv2", "dc20"): 0.35,
    ("mobilenetv2", "dc20-wide"): 0.5, ("mobilenetv2", "dc30-wide"): 0.5,
    ("vgg13", "plain"): 0.25, ("vgg13", "dc20"): 0.25, ("vgg13", "dc20-wide"): 0.5, ("vgg13", "dc30-wide"): 0.5,
    ("quick", "resnet20-pretrained"): 1, ("quick", "resnet20-dc30-ft3"): 1, ("quick", "resnet20a-full-wide-dc30"): 2,
    **{(placement.FOLDER, m): 1 for m in placement.MODELS},
}
TARGET_BEGIN, TARGET_END = "<!-- study-targets:begin (benchmarks/study_tables.py) -->", "<!-- study-targets:end -->"


def _width(path: Path) -> float | None:
    by_stem = path.parent.name in ("quick", placement.FOLDER)
    key = (path.parent.name, losses.stem(path) if by_stem else parse_name(path)[1])
    return WIDTHS.get(key)


def targets_table() -> str:
    """Per model and method, the row closest to the target (the smallest largest loss against the
    plain fault-free accuracy at 10 / 20 / 30% SA1), at the narrowest width measured and widened."""
    rates = " / ".join(f"{100 * r:g}" for r in losses.RATES)
    lines = [f"| model | width | method | best row | chips x images | loss vs plain fault-free, {rates}% "
             f"| vs own fault-free chips | at most {losses.TARGET:g} point at each rate? | file |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, files in _groups():
        for width in sorted({_width(f) for f in files if _width(f) is not None}):
            chosen = [f for f in files if _width(f) == width]
            for method, best in losses.best_per_method(chosen).items():
                f, cfg = best.path, rows(best.path)["config"]
                row = row_label(f)
                lines.append(f"| {name} | {width:g} | {method} | {row} | {cfg['runs']} x {cfg['images']:,} | "
                             f"{losses.fmt_losses(best.plain, losses.RATES)} | "
                             f"{losses.fmt_losses(best.own, losses.RATES)} | {best.met} | "
                             f"[{f.name}](results/{f.relative_to(RESULTS).as_posix()}) |")
    return "\n".join(lines)


STATUS_BEGIN, STATUS_END = "<!-- study-status:begin (benchmarks/study_tables.py) -->", "<!-- study-status:end -->"


def _groups() -> list[tuple[str, list[Path]]]:
    """(model, its files) per model: the placement campaigns with their architecture's (ResNet20 option A's
    with resnet20a's, VGG13-BN's with vgg13's)."""
    return [(MODELS[m].split(" (")[0], sorted((RESULTS / m).glob("*.json"), key=_variant_key)
             + (placement.files(RESULTS, m) if m in placement.HEADINGS else [])) for m in MODELS
            if (RESULTS / m).is_dir()] + [("ResNet20 (quick)", quick_files())]


def row_label(f: Path) -> str:
    """What a row's model is, as its table says."""
    if f.parent.name == "quick":
        return QUICK[losses.stem(f)]
    return placement.label(f) if f.parent.name == placement.FOLDER else describe(f)[0]


def status() -> str:
    """Per model and width, the row chosen on the validation split where one is (its 100-chip campaign
    when run: study_placement.chosen), else the committed row closest to the target; its losses
    against plain and its gap."""
    lines = []
    picked = {placement.chosen_file(RESULTS, arch) for arch in placement.HEADINGS} - {None}
    for name, files in _groups():
        for width in sorted({_width(f) for f in files if _width(f) is not None}):
            chosen = [f for f in files if _width(f) == width]
            chosen = [f for f in chosen if f in picked] or chosen
            best = min((losses.Best(f, *losses.losses(f)) for f in chosen), key=lambda b: b.rank)
            lines.append(_status_line(name, width, best))
    return "\n".join(lines)


def _status_line(name: str, width: float, best) -> str:
    f, cfg = best.path, rows(best.path)["config"]
    plain = losses.plain_accuracy(f)
    return (f"- **{name}**, width {width:g}: {row_label(f)}, {losses.method(f)}, {cfg['runs']} chips x "
            f"{cfg['images']:,} images: loses **{losses.fmt_losses(best.plain, losses.RATES)}** points at "
            f"10 / 20 / 30% SA1 against its plain fault-free accuracy"
            + ("" if plain is None else f" ({100 * plain:.2f}%)") + f", {losses.gap(best)}"
            + placement.caveat(f)
            + f" ([{f.name}](results/{f.relative_to(RESULTS).as_posix()})).")


SWEEP_BEGIN, SWEEP_END = "<!-- study-sweep:begin (benchmarks/study_tables.py) -->", "<!-- study-sweep:end -->"
SWEEP = {  # docs/results/sweep/<file> -> row label, in row order
    "resnet20a-dc10.json": "p = 0.1", "resnet20a-dc20.json": "p = 0.2", "resnet20a-dc30.json": "p = 0.3",
    "resnet20a-full-wide-dc20.json": "widened 2x, p = 0.2, 40 epochs from scratch (`full/resnet20a-wide-dc20`)",
    "resnet20a-full-wide-dc30.json": "widened 2x, p = 0.3, 40 epochs from scratch (`full/resnet20a-wide-dc30`)",
}


def sweep_table() -> str:
    """The p sweep (rram eval --json files): mean top-1 % per SA1 rate, and the split it was on."""
    lines = ["| fine-tune | split | SA1 0 | 10% | 20% | 30% | file |", "|---|---|---|---|---|---|---|"]
    for name, label in SWEEP.items():
        doc = json.loads((RESULTS / "sweep" / name).read_text())
        cells = " | ".join(f"{100 * r['mean']:.2f}" for r in doc["rates"])
        lines.append(f"| {label} | {doc['split']} | {cells} | [{name}](results/sweep/{name}) |")
    return "\n".join(lines)


def generated_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"markers {begin!r} ... {end!r} not found")
    return text[text.index(begin) + len(begin):text.index(end)].strip()


def with_block(text: str, content: str, begin: str = BEGIN, end: str = END) -> str:
    """TEXT with the generated block between BEGIN and END replaced by CONTENT."""
    generated_block(text, begin, end)  # the markers are there
    return text[:text.index(begin) + len(begin)] + "\n" + content + "\n" + text[text.index(end):]


# each generated block: (document, begin marker, end marker, what makes it)
BLOCKS = [(DOC, STATUS_BEGIN, STATUS_END, status), (DOC, BEGIN, END, tables),
          (DOC, TARGET_BEGIN, TARGET_END, targets_table),
          (DOC, SWEEP_BEGIN, SWEEP_END, sweep_table), (CAL_DOC, CAL_BEGIN, CAL_END, calibration_table)]


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
