"""The pipeline's report: ``report.md`` with ``accuracy.png`` (``rram plot``, baseline and
fault-aware side by side) and ``crossbar-usage.png``, written for a reader who never ran the tool."""
from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.artifact import layout
from runtime.fileio import atomic_path, atomic_write_bytes

from ..api import argv
from . import conclusions as C
from .actions import cli
from .plan import ACCURACY_PNG, ART_DIR, CALIBRATED, REPORT, RESULTS, STAGES, USAGE_PNG, Pipeline, Step
from .state import State


def read_results(path: str | os.PathLike) -> dict:
    """The one place the pipeline reads a validate results file."""
    from runtime.results import read_results as _read

    return _read(path)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
           ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _usage_figure(report: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    names = [r["layer"].removesuffix("_quantized").removesuffix(".weight") for r in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4))
    ax.bar(range(len(layers)), [100 * r["utilisation"] for r in layers], color="tab:blue", alpha=0.7)
    for i, r in enumerate(layers):
        ax.text(i, 100 * r["utilisation"] + 1, str(r["tiles"]), ha="center", fontsize=6)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylim(0, 110)
    ax.set_ylabel("cells used / cells in its tiles (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def _conclusions(pipe: Pipeline, concluded: list, n_images: int, calibrate: int | None) -> list[str]:
    """The report's first section: per model and method what the numbers say, which artifact to
    deploy, what to run next (computed in conclusions.py)."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "deploying.md"
    link = os.path.relpath(docs, pipe.run.resolve()) if docs.is_file() else "docs/deploying.md"
    plain = {s.variant: s for s in concluded if not s.calibrated}
    L = ["## Conclusions", ""]
    L += ["- " + C.sentence(s, n_images, calibrate, plain.get(s.variant) if s.calibrated else None)
          for s in concluded]
    L += ["- " + C.deploy_sentence(concluded, pipe.rates, calibrate, link),
          "- " + C.next_sentence(concluded, n_images, pipe.cfg.path.name), ""]
    return L


def write_report(pipe: Pipeline, step: Step) -> int:
    cfg, v, run = pipe.cfg, pipe.v, pipe.run
    variants, rates = pipe.variants, pipe.rates
    docs = {var.name: read_results(pipe.folder(var.name) / RESULTS) for var in variants}
    # the paper-style figure: baseline left of the fault-aware model at each SA1 rate; with
    # validate.calibrate, each model's per-chip calibrated campaign beside it
    order = sorted(variants, key=lambda x: x.name != "baseline")
    calibrate = v["validate"]["calibrate"]
    series = []  # (label, results path, document)
    concluded = []  # the same, per model and method, for the conclusions
    for x in order:
        series.append((x.label, pipe.folder(x.name) / RESULTS, docs[x.name]))
        concluded.append(C.Series(x.label, x.name, False, docs[x.name]))
        if calibrate:
            path = pipe.folder(x.name) / CALIBRATED
            series.append((f"{x.label} + per-chip calibration", path, read_results(path)))
            concluded.append(C.Series(series[-1][0], x.name, True, series[-1][2]))
    # rram plot itself says "(per-chip calibration, N images)" of a calibrated campaign
    code = cli(argv("plot", *[path for _, path, _ in series],
                    labels=",".join(label.removesuffix(" + per-chip calibration") for label, _, _ in series),
                    out=run / ACCURACY_PNG, title=v["report"]["title"]))
    if code:
        return code
    first = variants[0]
    usage_file = pipe.rate_folder(first.name, rates[0] if rates else None) / layout.REPORT_NAME
    usage = json.loads(usage_file.read_text())
    _usage_figure(usage, run / USAGE_PNG,
                  f"crossbar utilisation per layer ({usage['device']['name']} preset; number = tiles)")

    val = v["validate"]
    any_doc = next(iter(docs.values()))
    n_images = any_doc["config"]["images"]
    title = v["report"]["title"] or f"{v['model']['arch'] or pipe.onnx.name} on RRAM crossbars"
    L = [f"# {title}", "",
         f"Built by `rram pipeline {cfg.path.name}` in `{run}`. Everything below comes from the files of "
         f"that folder; re-running the command re-builds only what its configuration or inputs changed.", ""]
    L += _conclusions(pipe, concluded, n_images, calibrate)
    L += ["## What was built", ""]
    m = v["model"]
    shape = [f"width {m['width']:g}"] if m["width"] is not None else []
    shape += ["1x1 convolutions padded to 3x3"] if m["pad_1x1"] else []
    shape += [f"shortcut option {m['shortcut']}"] if m["shortcut"] is not None else []
    arch = (m["arch"] or "") + (f" ({', '.join(shape)})" if shape else "")
    if pipe.onnx is not None:
        norm = (f"input normalisation mean {m['mean']}, std {m['std']} from the config, recorded by rram passes"
                if m["mean"] is not None else "its own recorded input normalisation")
        L.append(f"- **Initial model**: the ONNX model `{m['onnx']}` (file `{pipe.onnx}`, {norm}), taken "
                 f"through the graph passes, quantization and validation as it is: no training, no BN "
                 f"re-alignment, one deployable artifact in `model/{ART_DIR}/`.")
    elif pipe.init is not None:
        L.append(f"- **Initial model**: `{m['checkpoint']}` ({arch}), file `{pipe.init}`.")
    else:
        L.append(f"- **Initial model**: none: {arch} is trained from scratch.")
    if cfg.has_train:
        t = v["train"]
        how = "fine-tuned" if pipe.init is not None else "trained"
        lr = pipe.train_lr()
        dc = (f"with drop-connect p={t['drop_rate']:g} (each weight dropped with that probability at every "
              f"training step)" if t["drop_rate"] > 0 else "without drop-connect (plain training)")
        L.append(f"- **Trained model**: the model {how} {dc} for {t['epochs']} "
                 f"epoch(s) on {t['images'] or 'all'} training images, learning rate {lr:g}, seed {t['seed']}.")
        if v[""]["baseline"]:
            L.append("- **Baseline**: the initial model without drop-connect training, taken through exactly "
                     "the same steps (BN re-alignment, export, passes, quantization, validation).")
    elif pipe.onnx is None:
        L.append("- No training: the initial model goes through the flow as it is.")
    if rates:
        L.append(f"- **BN re-alignment** for the expected chip fault rates {', '.join(rates)}: one deployable "
             f"artifact per rate, in `<model>/{ART_DIR}/{layout.rate_folder('<rate>')}/` (QDQ ONNX model, "
             f"conductance map, report).")
    L.append(f"- **Crossbars**: the `{v['quantize']['preset']}` device preset "
             f"({usage['device']['tile_rows']}x{usage['device']['tile_cols']} tiles, "
             f"{usage['device']['bits_per_cell']} bits per cell, {usage['device']['encoding']} encoding).")
    L.append(f"- **Validation**: {val['runs']} simulated chips per SA1 (stuck at G_min, the cell reads 0) "
             f"rate{', SA0 rate ' + format(val['sa0'], 'g') if val['sa0'] else ''}, {n_images} test images, "
             f"seed {val['seed']}, {val['precision']} activations"
             + ("; each chip runs the artifact whose BN statistics were re-aligned for the rate nearest its own."
                if rates else "."))
    if calibrate:
        L.append(f"- **Per-chip calibration** (the rows marked so): on each simulated chip, {calibrate} "
                 f"training images are run through the faulty crossbars first and every calibrated layer's "
                 f"digital per-channel scale and offset are re-set from what that chip computes (to the "
                 f"BN statistics fold-bn recorded, or, for a model that records none, to those measured on "
                 f"the fault-free model; no retraining, weights untouched; docs/runtime.md).")
    L += ["", "## Fault-free accuracy", "",
          f"Top-1 accuracy of each deployed (quantized) model on the {n_images} test images with no "
          f"stuck cell.", ""]
    rows = []
    for var in variants:
        clean = docs[var.name]["clean"]
        rows.append([var.label] + [_pct(clean.get(layout.rate_folder(r), clean.get(".") if len(rates) == 1 else None))
                                   for r in rates])
    if not rates:  # one artifact (an ONNX starting point)
        rows = [[var.label, _pct(docs[var.name]["clean"].get("."))] for var in variants]
    L += _table(["model"] + ([f"BN rate {r}" for r in rates] or ["fault-free"]), rows)
    if len(rates) > 1:
        L += ["", f"Each column is the artifact whose BN statistics were re-aligned for chips with that "
              f"fault rate, here run on a perfect chip: the BN rate {rates[0]} column is the fault-free "
              f"accuracy proper; a chip is given the artifact of the rate nearest its own. "
              + C.fault_free_columns(concluded, rates)]
    if any("n/a" in r for r in rows):
        L += ["", "(n/a: no chip of the campaign ran that artifact.)"]
    L += ["", "## Accuracy on faulty chips", "",
          "Per SA1 rate and model: the mean, standard deviation, minimum and maximum top-1 accuracy "
          "over the simulated chips, and the 95% confidence interval of the mean (Student t; n/a for a "
          "single chip).", "",
          f"Columns: **SA1 rate**, the fraction of each simulated chip's cells stuck at G_min; **model**, the "
          f"trained model and whether each chip was calibrated; **BN rate**, the artifact those chips ran (the "
          f"one re-aligned for the rate nearest theirs); **chips**, simulated chips, each with its own random "
          f"stuck cells; **mean**, **sd** (points), **min**, **max**, their top-1 accuracy on the {n_images} "
          f"test images; **95% CI**, where the mean over all such chips lies with 95% confidence, so its "
          f"width says how many more chips a firmer figure needs. At SA1 0% every chip is the same perfect "
          f"chip (sd 0; it runs once).", ""]
    rows = []
    sa1_rates = sorted({e["sa1"] for d in docs.values() for e in d["rates"]})
    for p in sa1_rates:
        for label, _, doc in series:
            e = next((e for e in doc["rates"] if e["sa1"] == p), None)
            if e is None:
                continue
            s = e["summary"]
            n = s.get("n", 0)
            one = n < 2
            rows.append([f"{100 * p:g}%", label, e["model"].removeprefix(layout.RATE_PREFIX), n,
                         _pct(s.get("mean")), "n/a" if one else f"{100 * s['std']:.2f}",
                         _pct(s.get("min")), _pct(s.get("max")),
                         "n/a" if one else f"[{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}]"])
    L += _table(["SA1 rate", "model", "BN rate", "chips", "mean", "sd", "min", "max", "95% CI"], rows)
    L += ["", "![accuracy on faulty chips](accuracy.png)", "",
          "The figure shows one box per model at each SA1 rate, built from the accuracies of the "
          "simulated chips: the box spans the middle half of the chips (25th to 75th percentile), the "
          "line inside it is the median chip, the whiskers reach the lowest and highest chip within 1.5 "
          "box heights of the box, and dots beyond them are single outlying chips. Chips that all score "
          "the same (at 0% every chip is the one perfect chip) make a box of no height, drawn as a thick "
          "bar with a diamond. The dashed lines are each model's fault-free accuracy.", "",
          "## Crossbar usage per layer", "",
          f"From `{usage_file.relative_to(run).as_posix()}` (every rate and model maps the same "
          f"layers onto the same tiles). Columns: **layer** and **op**, the ONNX node on crossbars; "
          f"**matrix**, its weight matrix (rows = inputs per output, columns = outputs); **tiles**, the "
          f"{usage['device']['tile_rows']}x{usage['device']['tile_cols']} tiles it occupies; **cells**, "
          f"cells holding a weight (both cells of a differential pair counted); **allocated**, the cells of "
          f"those tiles; **utilisation** = cells / allocated.", ""]
    start = f"ONNX model `{pipe.onnx}`" if pipe.onnx else f"initial checkpoint `{pipe.init or 'none (from scratch)'}`"
    rows = [[f"`{r['node']}`", r["op_type"], "x".join(map(str, r["matrix_shape"])), r["tiles"], r["cells"],
             r["allocated_cells"], f"{100 * r['utilisation']:.1f}%"] for r in usage["layers"]]
    tot = usage["total"]
    rows.append(["**total**", "", "", tot["tiles"], tot["cells"], tot["allocated_cells"],
                 f"{100 * tot['utilisation']:.1f}%"])
    L += _table(["layer", "op", "matrix", "tiles", "cells", "allocated", "utilisation"], rows)
    L += ["", "![crossbar utilisation per layer](crossbar-usage.png)", "",
          "## Configuration", "", f"`{cfg.path}` (paths relative to its folder), exactly"
          + (", then its base chain (each file's paths relative to its own folder):" if cfg.values[""]["base"]
             else ":"), "",
          "```toml", cfg.text.rstrip("\n"), "```", "",
          f"Resolved: data `{cfg.data}`, {start}, run folder `{run}`.", "",
          "## Software", ""]
    L += _table(["package", "version"], [[k, x] for k, x in step.settings["versions"].items()])
    L += ["", "## Time per step", "",
          "Seconds each step took when it last ran (a skipped step keeps the time of its last run).", ""]
    state = State(run)
    rows = []
    for s in pipe.steps:
        rec = state.record(s.name)
        if s.stage != "report" and rec:
            rows.append([s.name, f"{rec['seconds']:.1f}", rec.get("finished", "")])
    L += _table(["step", "seconds", "finished (UTC)"], rows)
    L += ["", f"Stages: {', '.join(STAGES)}; sensitivity analysis is not part of the pipeline yet."]
    atomic_write_bytes(run / REPORT, ("\n".join(L) + "\n").encode())
    print(f"wrote {run / REPORT}")
    return 0
