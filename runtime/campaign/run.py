"""Monte-Carlo validation campaigns: for each fault rate, ``runs`` simulated chips, the same images
on each. The plan (``plan.CampaignConfig``: checks, identity, jobs), the chips (``chips.RandomChips``),
an executor (``executors``: this process, or Ray workers, both running ``chip.measure_chip``) and
the results writer (``writer.ResultsWriter``: lock, resume, journal, throttled rewrites) meet here.
Run r at rates (p1, p0) always uses the chip drawn from ``faults.run_seed(seed, p1, p0, r)``, so the
numbers do not depend on how the work is split, nor on who runs it."""
from __future__ import annotations

import os
from contextlib import ExitStack

import numpy as np

from ..artifact import Artifact
from ..chips import PlacedChips, RandomChips, protected_layers
from ..executors import executor
from ..progress import Progress
from ..provenance import of_artifact
from ..results import FORMAT, VERSION, precise_enough
from .chip import Costs, clean_accuracy, measure_chip, subset_size
from .plan import CampaignConfig
from .writer import ResultsWriter


def validate(artifact: Artifact | str | os.PathLike, images: np.ndarray, labels: np.ndarray,
             config: CampaignConfig | None = None, *, out: str | os.PathLike | None = None, resume: bool = False,
             progress: bool = True, engine_kw: dict | None = None, info: dict | None = None,
             calibration: np.ndarray | None = None, calibrate: np.ndarray | None = None, **settings) -> dict:
    """Sweep the rates; return (and, with ``out``, keep writing) the results document.
    ``config``, or its fields as keywords (``sa1=[0.1], runs=20, ...``: ``plan.CampaignConfig``).
    ``calibration``: training images for int8 activation ranges; ``calibrate``: training images on
    which each chip's periphery is calibrated before it is evaluated (then ``clean`` is the
    calibrated fault-free accuracy too; with DAC/ADC resolution each chip is calibrated and
    evaluated behind the converters, ranges measured once on ``calibration``)."""
    config = config if config is not None else CampaignConfig(**settings)
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    identity = config.identity(artifact, images, labels, calibration=calibration, calibrate=calibrate)
    selected = [artifact.select(p + config.sa0, config.stats_rate) for p in config.sa1]
    cmap = artifact.first.cmap
    faulty = protected_layers(cmap, config.protect)
    sources = [RandomChips.of(cmap, p, config.sa0, config.seed, faulty, config.nonideal) for p in config.sa1]
    if config.place:
        sources = [PlacedChips(cmap, base, faulty) for base in sources]

    def fresh() -> dict:
        return {"format": FORMAT, "version": VERSION, "config": identity,
                "shard": None if config.shard == (1, 1) else list(config.shard), "clean": {},
                "rates": [{"sa1": p, "sa0": config.sa0, "model": m, "runs": {}} for p, m in zip(config.sa1, selected)],
                "timing": {}, "complete": False,
                "info": {"artifact": str(artifact.path), **(info or {}), "provenance": of_artifact(artifact)}}

    engine_kw = {**(engine_kw or {}), "precision": config.precision, "calibration": calibration,
                 "calibrate": calibrate, "calibration_targets": config.calibration_targets}
    if config.nonideal is not None and config.nonideal.converters:  # the same graph for every chip
        engine_kw["converters"] = config.nonideal
    with ExitStack() as stack:
        writer = ResultsWriter.open(stack, out, identity, config.shard, resume, fresh)
        doc = writer.doc
        chips = stack.enter_context(executor(config.ray, artifact, images, labels, engine_kw))
        for name in sorted(set(selected)):
            if name not in doc["clean"]:
                doc["clean"][name] = chips.call(clean_accuracy, name)
        writer.snapshot()
        _run_chips(config, identity, writer, chips, sources, len(labels), progress)
    return doc


def _run_chips(config: CampaignConfig, identity: dict, writer: ResultsWriter, chips, sources, images: int,
               progress: bool) -> None:
    doc, runs, ci = writer.doc, config.runs, config.ci

    def precise(i: int) -> bool:
        return precise_enough(writer.stats[i].summary(), identity)

    def order():
        """Jobs in order; with --ci each rate is left as soon as it reaches its target."""
        if ci is None:
            yield from config.jobs()
            return
        for i in range(len(config.sa1)):
            for r in range(runs):
                if precise(i):
                    break
                yield i * runs + r

    costs = Costs()  # --images auto: what this process measured per chip and per image

    def tasks():
        """The chips still to run, generated lazily (--runs 1000000000; --ci's stop)."""
        for j in order():
            i, r = divmod(j, runs)
            entry = doc["rates"][i]
            if str(r) in entry["runs"]:  # resumed
                continue
            size = None
            if config.images_auto:
                size, record = subset_size(entry, r, identity, costs)
                if record is not None:
                    writer.note_auto(i, record)
            yield (i, r), i, measure_chip, (sources[i], r, entry["model"], doc["clean"][entry["model"]], size, images)

    already = sum(1 for i, e in enumerate(doc["rates"]) for key in e["runs"] if config.in_shard(i, int(key)))
    bar = Progress(len(config.jobs()) - already, progress)

    def finished(key, result):
        (i, r), (record, ran) = key, result
        chip_costs = record.pop("_costs", None)
        if chip_costs is not None:
            costs.add(*chip_costs)
        writer.add(i, r, record, ran)
        bar.update(f"sa1={config.sa1[i]:g} mean={100 * writer.stats[i].mean:.2f}%", timed=bool(ran))

    try:
        # With --ci a rate's chips count in run order only (the stop depends on every earlier one):
        # a parallel executor delivers each rate's results in order and drops those past the stop.
        chips.run(tasks(), finished, in_order=ci is not None, dropped=lambda key: ci is not None and precise(key[0]))
    finally:
        bar.close()
