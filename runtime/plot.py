"""Accuracy vs fault rate, the paper's figure style: one box per rate per model (runs' spread),
the fault-free accuracy as a dashed reference line per model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import RuntimeInputError
from .fileio import atomic_path
from .results import read_results, read_sensitivity


def nonideal_label(n: dict) -> str:
    """A results file's ``config.nonideal`` in a few words, e.g. "variation 5% additive, read noise 1%"."""
    parts = []
    if n.get("programming_sigma"):
        sigma = n["programming_sigma"]
        parts.append(f"variation x{sigma:g} wan2022" if n.get("programming_model") == "wan2022"
                     else f"variation {100 * sigma:g}% {n.get('programming_model', 'additive')}")
    if n.get("read_sigma"):
        parts.append(f"read noise {100 * n['read_sigma']:g}%")
    for key, what in (("dac_bits", "DAC"), ("adc_bits", "ADC")):
        if n.get(key) is not None:
            parts.append(f"{what} {n[key]} bits")
    if n.get("adc_bits") is not None and n.get("adc_range") == "full-scale":
        parts[-1] += " full-scale"
    name = n.get("name")
    return (f"{name}: " if name and name != "custom" else "") + ", ".join(parts or ["ideal"])


def series_names(docs: list[dict], paths, labels: list[str] | None = None, *, mixed: bool = False) -> list[str]:
    """Legend names: the labels (or file stems), with each file's SA0 rate when they differ and
    the calibration when chips were calibrated per chip, and --images auto (both change what the
    boxes mean).
    Campaigns on different image counts or devices are not comparable box for box: refused
    unless ``mixed``, and then each name says its images and device."""
    names = labels or [Path(p).stem for p in paths]
    images = {d["config"].get("images") for d in docs}
    devices = {json.dumps(d["config"].get("device"), sort_keys=True) for d in docs}
    if len(images) > 1 or len(devices) > 1:
        what = "image counts" if len(images) > 1 else "devices"
        if not mixed:
            raise RuntimeInputError(f"the results files are campaigns on different {what}: their boxes are not "
                                    f"comparable; give --mixed to overlay them anyway (each is labelled)")
        names = [f"{n}, {d['config'].get('images')} images, {d['config'].get('device', {}).get('name')}"
                 for n, d in zip(names, docs)]
    if len({d["config"].get("sa0", 0.0) for d in docs}) > 1:
        names = [f"{n}, SA0 {100 * d['config'].get('sa0', 0.0):g}%" for n, d in zip(names, docs)]
    # fault-aware placement changes every faulty chip's numbers: say so, whatever the label
    names = [f"{n}, placed" if d["config"].get("place") and "placed" not in n else n for n, d in zip(names, docs)]
    names = [f"{n} (per-chip calibration, {d['config']['calibrate']} images)" if d["config"].get("calibrate")
             else n for n, d in zip(names, docs)]
    # device non-idealities beside the stuck cells (runtime/variation.py): every chip's numbers
    names = [f"{n}, {nonideal_label(d['config']['nonideal'])}" if d["config"].get("nonideal") else n
             for n, d in zip(names, docs)]
    # --images auto: each chip's accuracy is on its own random image subset, so its box is wider
    # than the chips' spread by the image-sampling noise (the summary's sd_between removes it)
    return [f"{n} (random image subset per chip)" if "images_auto" in d["config"] else n
            for n, d in zip(names, docs)]


def check_title(title: str | None) -> None:
    """A ``--title`` with ``$...$`` is matplotlib mathtext: one that does not parse (``a $\\frac{ $``)
    is a one-line error before any figure is drawn, not a traceback from savefig."""
    if not title or "$" not in title:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    try:
        fig.canvas.draw()
    except (ValueError, RuntimeError) as e:
        why = next((line.strip() for line in reversed(str(e).splitlines()) if line.strip()), type(e).__name__)
        raise RuntimeInputError(f"--title {title!r} is not valid matplotlib mathtext ({why[:150]}); write a "
                                f"literal dollar sign as \\$") from None


def _flat_boxes(ax, data: list[list[float]], pos: list[float], width: float, color) -> None:
    """A box whose chips all have one accuracy (every fault-free chip; a single chip) has no
    height and vanished under the dashed fault-free line: draw it as a thick bar with a marker
    (``gid="flat-box"``, which an SVG keeps as the element's id)."""
    for accs, x in zip(data, pos):
        if max(accs) - min(accs) < 1e-9:
            ax.hlines(accs[0], x - width / 2, x + width / 2, colors=color, linewidth=3, zorder=4, gid="flat-box")
            ax.plot([x], [accs[0]], marker="D", markersize=4, color=color, markeredgecolor="black",
                    markeredgewidth=0.5, zorder=5, gid="flat-box")


def plot_results(paths: list[str | os.PathLike], out: str | os.PathLike, *, labels: list[str] | None = None,
                 title: str | None = None, mixed: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not paths:
        raise RuntimeInputError("no results files to plot")
    check_title(title)
    fmt = Path(out).suffix.lstrip(".").lower()
    supported = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if fmt not in supported:
        raise RuntimeInputError(f"cannot write a figure as {Path(out).name!r}: use one of "
                                f"{', '.join('.' + k for k in sorted(supported))}")
    docs = [read_results(p) for p in paths]
    if labels is not None and len(labels) != len(docs):
        raise RuntimeInputError(f"{len(labels)} labels for {len(docs)} results files")
    names = series_names(docs, paths, labels, mixed=mixed)
    sa0 = {d["config"].get("sa0", 0.0) for d in docs}
    rates = sorted({e["sa1"] for d in docs for e in d["rates"]})
    if not rates:
        raise RuntimeInputError("the results files hold no rates")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rates) * max(1, len(docs)) ** 0.5 + 2), 4))
    width = 0.8 / len(docs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, (doc, name) in enumerate(zip(docs, names)):
        color = colors[m % len(colors)]
        data, pos = [], []
        for e in doc["rates"]:
            accs = [100 * v["accuracy"] for v in e["runs"].values()]
            if accs:
                data.append(accs)
                pos.append(rates.index(e["sa1"]) + (m - (len(docs) - 1) / 2) * width)
        if data:
            ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, manage_ticks=False,
                       boxprops={"facecolor": color, "alpha": 0.45, "edgecolor": color},
                       medianprops={"color": color}, whiskerprops={"color": color},
                       capprops={"color": color}, flierprops={"markeredgecolor": color, "markersize": 3})
            _flat_boxes(ax, data, pos, width * 0.85, color)
        clean = doc.get("clean") or {}
        if clean:
            ax.axhline(100 * max(clean.values()), color=color, linestyle="--", linewidth=1,
                       label=f"{name} (fault-free {100 * max(clean.values()):.2f}%)")
        else:
            ax.plot([], [], color=color, label=name)
    ax.set_xticks(range(len(rates)))
    ax.set_xticklabels([f"{100 * r:g}%" for r in rates])
    ax.set_xlim(-0.6, len(rates) - 0.4)
    ax.set_xlabel("SA1 cell rate" + (f" (SA0 {100 * sa0.pop():g}%)" if len(sa0) == 1 and 0 not in sa0 else ""))
    ax.set_ylabel("top-1 accuracy (%)")
    runs = {d["config"]["runs"] for d in docs}
    ax.set_title(title or f"accuracy under stuck-at faults ({'/'.join(map(str, sorted(runs)))} chips per rate)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def plot_sensitivity(path: str | os.PathLike, out: str | os.PathLike, *, title: str | None = None) -> Path:
    """One bar per mapped layer in network order (one colour per SA1 rate): the mean accuracy drop
    when only that layer has stuck cells (95% CI as error bars), and the layer's share of the
    model's cells (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_title(title)

    doc = read_sensitivity(path)
    rates = doc["rates"]
    layers = rates[0]["layers"]
    if not layers:
        raise RuntimeInputError(f"{path} holds no layers")
    x = np.arange(len(layers))
    width = 0.8 / len(rates)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) + 2), 4.5))
    for k, entry in enumerate(rates):
        e = entry["layers"]
        drops = np.array([100 * v["drop"] for v in e])
        # one chip per layer: no interval (drop_ci95 None), no error bar
        ci = [v["drop_ci95"] or [v["drop"], v["drop"]] for v in e]
        err = [drops - [100 * lo for lo, _ in ci], [100 * hi for _, hi in ci] - drops]
        ax.bar(x + (k - (len(rates) - 1) / 2) * width, drops, width * 0.9, yerr=err, capsize=2, alpha=0.75,
               label=f"SA1 {100 * entry['sa1']:g}% (fault-free {100 * entry['clean']:.2f}%)")
    ax.set_ylabel("accuracy drop (points, 95% CI)")
    ax.set_xticks(x)
    ax.set_xticklabels([v["name"] for v in layers], rotation=75, ha="right", fontsize=7)
    share = ax.twinx()
    share.plot(x, [100 * v["cell_share"] for v in layers], "k.--", markersize=4, linewidth=0.8,
               label="share of cells (%)")
    share.set_ylabel("share of the model's cells (%)")
    c = doc["config"]
    ax.set_title(title or f"per-layer sensitivity: faults in one layer at a time, {c['runs']} chips per layer",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".").lower() or "png", dpi=150)
    plt.close(fig)
    return out
