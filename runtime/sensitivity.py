"""Per-layer sensitivity: which mapped layer hurts most when its crossbars have stuck cells.

For each mapped layer, ``runs`` chips whose faults lie in that layer alone (the other layers
fault-free) are evaluated; the report gives, per layer in network order, the mean accuracy drop
from the fault-free model with its 95% CI, and the layer's share of the model's cells. Run r of
every layer uses the same underlying chip (``faults.run_seed(seed, p, sa0, r)``) restricted to
that layer, so layers are compared on the same stuck cells (common random numbers), and the
numbers do not depend on anything but (seed, rates, run), nor on who runs the chips (this process
or Ray workers). The document is rewritten after each layer (write-then-rename).

With ``nonideal`` (programming variation, read noise: ``variation.Nonideal``), every chip has
them on all its layers, drawn from run r's own streams, so every layer's run r is the same
varied chip with stuck cells in that layer alone; a layer's ``drop`` is from the ideal
fault-free model, and each rate's ``nonideal_alone`` gives the same chips without a stuck cell
(the non-idealities' share of every drop)."""
from __future__ import annotations

import os
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .artifact import Artifact, check_stats_rate
from .campaign.chip import clean_accuracy
from .campaign.plan import (
    SENSITIVITY_RUNS,
    calibrate_config,
    check_runs,
    check_sa1_rates,
    check_seed,
    normalization_config,
)
from .chips import PlacedChips, RandomChips
from .errors import RuntimeInputError
from .executors import executor
from .faults import layer_names
from .fileio import atomic_write_json, output_lock
from .placement import placement_config
from .progress import Progress
from .provenance import of_artifact
from .results import SENSITIVITY_FORMAT, VERSION, images_digest, summarize


def sensitivity(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray, *,
                sa1: list[float], sa0: float = 0.0, runs: int = SENSITIVITY_RUNS, seed: int = 0,
                stats_rate: str | float = "auto", out: str | os.PathLike | None = None, progress: bool = True,
                engine_kw: dict | None = None, calibrate: np.ndarray | None = None, info: dict | None = None,
                ray: bool | str | None = None, place: bool = False, calibration_targets: str = "auto",
                nonideal=None) -> dict:
    """Per SA1 rate (the model with the BN statistics ``stats_rate`` selects for it), per mapped
    layer: the accuracy drop with faults in that layer alone. ``ray``: run the chips on Ray
    workers (``executors.executor``); the report is the same. ``place``: each chip placed with
    its own faults first (fault-aware placement; then a layer's drop is what remains after
    placement); ``calibration_targets``: as ``Engine``'s; ``nonideal``: programming variation
    and read noise on every chip (module docstring; DAC/ADC resolution is not built here).
    ``out`` is written by this process alone (the lock ``rram validate`` takes) and must not
    exist: a report is never overwritten."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    sa1 = list(check_sa1_rates(sa1, sa0))
    runs, seed, stats_rate = check_runs(runs), check_seed(seed), check_stats_rate(stats_rate)
    cmap = artifact.first.cmap
    if not cmap.layers:
        raise RuntimeInputError(f"{artifact.path}: the model has no mapped layer, so there is no sensitivity "
                                f"to measure")
    if nonideal is not None:
        nonideal.check_applies((engine_kw or {}).get("precision", "fp32"))
        if nonideal.converters:
            raise RuntimeInputError("DAC/ADC resolution (--dac-bits, --adc-bits) in rram sensitivity is not built "
                                    "yet: use rram validate --protect to compare layers behind converters")
        nonideal = None if nonideal.ideal else nonideal  # none: today's report, its config unchanged
    total = cmap.cell_count()
    doc = {"format": SENSITIVITY_FORMAT, "version": VERSION,
           "config": {"models": {n: m.sha256 for n, m in artifact.models.items()}, "device": cmap.device.to_dict(),
                      "sa1": sa1, "sa0": float(sa0), "runs": runs, "seed": int(seed),
                      "images": int(len(labels)), "images_sha256": images_digest(images, labels),
                      **calibrate_config(calibrate, artifact, calibration_targets), **normalization_config(artifact),
                      **({"place": placement_config()} if place else {}),
                      **({} if nonideal is None else {"nonideal": nonideal.to_dict()})},
           "rates": [], "info": {**(info or {}), "provenance": of_artifact(artifact)}}
    names = layer_names(cmap)
    models = [artifact.select(p + sa0, stats_rate) for p in sa1]
    with ExitStack() as stack:
        if out is not None:  # checked under the lock: two runs on one --out once both exited 0
            stack.enter_context(output_lock(out, "rram sensitivity"))
            if Path(out).exists():
                raise RuntimeInputError(f"{out} exists; choose another --out")
        ex = stack.enter_context(executor(ray, artifact, images, labels, {**(engine_kw or {}), "calibrate": calibrate,
                                                                          "calibration_targets": calibration_targets}))
        cleans = {name: ex.call(clean_accuracy, name) for name in dict.fromkeys(models)}
        alone = {}  # rate index -> the same chips without a stuck cell (their non-idealities alone)
        if nonideal is not None:
            for k, (p, name) in enumerate(zip(sa1, models)):
                chips = RandomChips.of(cmap, p, sa0, seed, [], nonideal)
                alone[k] = [ex.call(layer_chip_accuracy, chips, r, name, cleans[name]) for r in range(runs)]
        bar = Progress(len(sa1) * len(names), progress, desc="sensitivity", unit="layer")
        stack.callback(bar.close)
        t0 = time.perf_counter()
        accs: dict = defaultdict(dict)  # (rate index, layer index) -> {run: accuracy}
        written = [0]  # layers written, in (rate, layer) order

        def tasks():
            for k, (p, name) in enumerate(zip(sa1, models)):
                for i in range(len(names)):
                    chips = RandomChips.of(cmap, p, sa0, seed, [i], nonideal)  # run r's chip, faults in layer i alone
                    if place:
                        chips = PlacedChips(cmap, chips, [i])
                    for r in range(runs):
                        yield (k, i, r), (k, i), layer_chip_accuracy, (chips, r, name, cleans[name])

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
                                         **({} if k not in alone else {"nonideal_alone": {
                                             "accuracies": alone[k], "mean": summarize(alone[k])["mean"]}}),
                                         "layers": []})
                entry = doc["rates"][k]
                by_run = accs.pop((k, i))
                layer_accs = [by_run[r] for r in range(runs)]
                s = summarize(layer_accs)
                entry["layers"].append({
                    "name": names[i], "op_type": cmap.layers[i].op_type, "cells": int(cmap.layers[i].levels.size),
                    "cell_share": cmap.layers[i].levels.size / total, "accuracies": layer_accs,
                    "drop": entry["clean"] - s["mean"], "drop_std": s["std"],
                    # one chip: no interval (not available), as in a results file's summary
                    "drop_ci95": None if s["ci95"] is None else [entry["clean"] - s["ci95"][1],
                                                                 entry["clean"] - s["ci95"][0]]})
                doc["seconds"] = round(time.perf_counter() - t0, 3)
                if out is not None:
                    atomic_write_json(out, doc)
                written[0] += 1
                bar.update()

        ex.run(tasks(), finished)
    return doc


def layer_chip_accuracy(engine, cmap, chips: RandomChips | PlacedChips, r: int, model: str, clean: float) -> float:
    """Run r's chip of ``chips`` (faults in one mapped layer alone): the one per-chip function of
    every executor (this process, or Ray workers); a chip with variation or read noise runs even
    without a stuck cell."""
    own = chips.sample(r)
    return clean if not (own.codes.any() or own.noisy) else engine(model).chip_accuracy(own)
