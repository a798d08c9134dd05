"""Per-layer sensitivity: which mapped layer hurts most when its crossbars have stuck cells.

For each mapped layer, ``runs`` chips whose faults lie in that layer alone (the other layers
fault-free) are evaluated; the report gives, per layer in network order, the mean accuracy drop
from the fault-free model with its 95% CI, and the layer's share of the model's cells. Run r of
every layer uses the same underlying chip (``faults.run_seed(seed, p, sa0, r)``) restricted to
that layer, so layers are compared on the same stuck cells (common random numbers), and the
numbers do not depend on anything but (seed, rates, run), nor on who runs the chips (this process
or Ray workers). The document is rewritten after each layer (write-then-rename)."""
from __future__ import annotations

import os
import time
from collections import defaultdict

import numpy as np

from .artifact import Artifact
from .campaign import calibrate_config, clean_accuracy, executor
from .errors import RuntimeInputError
from .faults import check_rates, layer_names, run_seed, sample_chip, with_faults_only_in
from .fileio import atomic_write_json
from .results import SENSITIVITY_FORMAT, VERSION, images_digest, summarize


def sensitivity(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray, *,
                sa1: list[float], sa0: float = 0.0, runs: int = 10, seed: int = 0, stats_rate: str | float = "auto",
                out: str | os.PathLike | None = None, progress: bool = True, engine_kw: dict | None = None,
                calibrate: np.ndarray | None = None, info: dict | None = None, ray: bool | str | None = None) -> dict:
    """Per SA1 rate (the model with the BN statistics ``stats_rate`` selects for it), per mapped
    layer: the accuracy drop with faults in that layer alone. ``ray``: run the chips on Ray
    workers (``campaign.executor``); the report is the same."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    sa1 = [float(p) for p in ([sa1] if isinstance(sa1, (int, float)) else sa1)]
    if not sa1:
        raise RuntimeInputError("no fault rates given")
    for p in sa1:
        check_rates(p, sa0)
    if not isinstance(runs, int) or runs < 1:
        raise RuntimeInputError(f"runs must be at least 1, got {runs}")
    cmap = artifact.first.cmap
    if not cmap.layers:
        raise RuntimeInputError(f"{artifact.path}: the model has no mapped layer, so there is no sensitivity "
                                f"to measure")
    total = cmap.cell_count()
    doc = {"format": SENSITIVITY_FORMAT, "version": VERSION,
           "config": {"models": {n: m.sha256 for n, m in artifact.models.items()}, "device": cmap.device.to_dict(),
                      "sa1": sa1, "sa0": float(sa0), "runs": runs, "seed": int(seed),
                      "images": int(len(labels)), "images_sha256": images_digest(images, labels),
                      **calibrate_config(calibrate)},
           "rates": [], "info": info or {}}
    from tqdm import tqdm

    names = layer_names(cmap)
    models = [artifact.select(p + sa0, stats_rate) for p in sa1]
    with executor(ray, artifact, images, labels, {**(engine_kw or {}), "calibrate": calibrate}) as ex:
        cleans = {name: ex.call(clean_accuracy, name) for name in dict.fromkeys(models)}
        bar = tqdm(total=len(sa1) * len(names), desc="sensitivity", unit="layer", disable=None if progress else True)
        t0 = time.perf_counter()
        accs: dict = defaultdict(dict)  # (rate index, layer index) -> {run: accuracy}
        written = [0]  # layers written, in (rate, layer) order

        def tasks():
            for k, (p, name) in enumerate(zip(sa1, models)):
                for i in range(len(names)):
                    for r in range(runs):
                        yield (k, i, r), (k, i), layer_chip_accuracy, (total, p, sa0, seed, r, i, name, cleans[name])

        def finished(key, acc):
            k, i, r = key
            accs[k, i][r] = acc
            # the report grows layer by layer in network order, whatever order the chips finish in
            while written[0] < len(sa1) * len(names):
                k, i = divmod(written[0], len(names))
                if len(accs[k, i]) < runs:
                    break
                if i == 0:
                    doc["rates"].append({"sa1": sa1[k], "model": models[k], "clean": cleans[models[k]],
                                         "layers": []})
                entry = doc["rates"][k]
                by_run = accs.pop((k, i))
                layer_accs = [by_run[r] for r in range(runs)]
                s = summarize(layer_accs)
                entry["layers"].append({
                    "name": names[i], "op_type": cmap.layers[i].op_type, "cells": int(cmap.layers[i].levels.size),
                    "cell_share": cmap.layers[i].levels.size / total, "accuracies": layer_accs,
                    "drop": entry["clean"] - s["mean"], "drop_std": s["std"],
                    "drop_ci95": [entry["clean"] - s["ci95"][1], entry["clean"] - s["ci95"][0]]})
                doc["seconds"] = round(time.perf_counter() - t0, 3)
                if out is not None:
                    atomic_write_json(out, doc)
                written[0] += 1
                bar.update(1)

        ex.run(tasks(), finished)
        bar.close()
    return doc


def layer_chip_accuracy(engine, cmap, cells: int, p: float, sa0: float, seed: int, r: int, layer: int,
                        model: str, clean: float) -> float:
    """Run r's chip (``faults.run_seed(seed, p, sa0, r)``) with its faults in one mapped layer alone:
    the one per-chip function of every executor (this process, or Ray workers)."""
    own = with_faults_only_in(cmap, sample_chip(cells, p, sa0, run_seed(seed, p, sa0, r)), [layer])
    return clean if not own.codes.any() else engine(model).chip_accuracy(own)
