"""Per-layer sensitivity: which mapped layer hurts most when its crossbars have stuck cells.

For each mapped layer, ``runs`` chips whose faults lie in that layer alone (the other layers
fault-free) are evaluated; the report gives, per layer in network order, the mean accuracy drop
from the fault-free model with its 95% CI, and the layer's share of the model's cells. Run r of
every layer uses the same underlying chip (``faults.run_seed(seed, p, sa0, r)``) restricted to
that layer, so layers are compared on the same stuck cells (common random numbers), and the
numbers do not depend on anything but (seed, rates, run). The document is rewritten after each
layer (write-then-rename)."""
from __future__ import annotations

import os
import time

import numpy as np

from .artifact import Artifact
from .campaign import calibrate_config, engine_factory
from .errors import RuntimeInputError
from .faults import check_rates, layer_names, run_seed, sample_chip, with_faults_only_in
from .fileio import atomic_write_json
from .results import SENSITIVITY_FORMAT, VERSION, images_digest, summarize


def sensitivity(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray, *,
                sa1: list[float], sa0: float = 0.0, runs: int = 10, seed: int = 0, stats_rate: str | float = "auto",
                out: str | os.PathLike | None = None, progress: bool = True, engine_kw: dict | None = None,
                calibrate: np.ndarray | None = None, info: dict | None = None) -> dict:
    """Per SA1 rate (the model with the BN statistics ``stats_rate`` selects for it), per mapped
    layer: the accuracy drop with faults in that layer alone."""
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
    engines = engine_factory(artifact, images, labels, {**(engine_kw or {}), "calibrate": calibrate})
    total = cmap.cell_count()
    doc = {"format": SENSITIVITY_FORMAT, "version": VERSION,
           "config": {"models": {n: m.sha256 for n, m in artifact.models.items()}, "device": cmap.device.to_dict(),
                      "sa1": sa1, "sa0": float(sa0), "runs": runs, "seed": int(seed),
                      "images": int(len(labels)), "images_sha256": images_digest(images, labels),
                      **calibrate_config(calibrate)},
           "rates": [], "info": info or {}}
    from tqdm import tqdm

    t0 = time.perf_counter()
    for p in sa1:
        name = artifact.select(p + sa0, stats_rate)
        engine = engines(name)
        entry = {"sa1": p, "model": name, "clean": engine.clean_accuracy(), "layers": []}
        doc["rates"].append(entry)
        chips = [sample_chip(total, p, sa0, run_seed(seed, p, sa0, r)) for r in range(runs)]
        for i, node in enumerate(tqdm(layer_names(cmap), desc=f"sensitivity SA1 {p:g}", unit="layer",
                                      disable=None if progress else True)):
            accs = []
            for chip in chips:
                own = with_faults_only_in(cmap, chip, [i])
                accs.append(entry["clean"] if not own.codes.any() else engine.chip_accuracy(own))
            s = summarize(accs)
            entry["layers"].append({
                "name": node, "op_type": cmap.layers[i].op_type, "cells": int(cmap.layers[i].levels.size),
                "cell_share": cmap.layers[i].levels.size / total, "accuracies": accs,
                "drop": entry["clean"] - s["mean"], "drop_std": s["std"],
                "drop_ci95": [entry["clean"] - s["ci95"][1], entry["clean"] - s["ci95"][0]]})
            doc["seconds"] = round(time.perf_counter() - t0, 3)
            if out is not None:
                atomic_write_json(out, doc)
    return doc
