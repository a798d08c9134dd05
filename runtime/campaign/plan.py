"""A campaign's plan: its settings (``CampaignConfig``, defaults declared once and used by the CLI,
the Python API and the pipeline), their checks, the results identity (``identity``: the config a
results file records, which resume and merge compare) and the jobs (``jobs``)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import CALIBRATION_TARGETS, PRECISIONS
from ..errors import RuntimeInputError
from ..results import images_digest
from ..subsets import MIN_IMAGES, PILOT_IMAGES

if TYPE_CHECKING:
    from ..artifact import Artifact

# This module stays light (numpy only at import): the CLI reads its defaults to build its parsers.

RUNS = 100           # chips per rate: the paper's protocol
SENSITIVITY_RUNS = 10  # chips per layer and rate in `rram sensitivity`
MIN_RUNS = 10        # with --ci: chips before a rate may stop
SEED_LIMIT = 2 ** 32  # numpy's SeedSequence takes [0, 2**32) per word; the CLI's --seed says the same


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < SEED_LIMIT:
        raise RuntimeInputError(f"seed must be a non-negative integer below 2**32, got {seed!r}")
    return int(seed)


def check_runs(runs, what: str = "runs") -> int:
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise RuntimeInputError(f"{what} must be at least 1, got {runs!r}")
    return int(runs)


def check_sa1_rates(sa1, sa0: float) -> tuple[float, ...]:
    from ..faults import check_rates

    rates = (sa1,) if isinstance(sa1, (int, float)) else tuple(sa1)
    if not rates:
        raise RuntimeInputError("no fault rates given")
    for p in rates:
        check_rates(p, sa0)
    if len(set(rates)) != len(rates):
        raise RuntimeInputError(f"repeated SA1 rate in {list(rates)}")
    return tuple(float(p) for p in rates)


def models_identity(artifact: Artifact) -> dict:
    """``config.models`` of a results file: per model of the artifact, its model.onnx sha256 and BN rate."""
    return {n: {"sha256": m.sha256, "bn_rate": m.bn_rate} for n, m in artifact.models.items()}


@dataclass(frozen=True)
class CampaignConfig:
    """What a user chooses for a campaign of simulated chips (``rram validate``). ``ci``: a
    precision target in percentage points (each rate stops adding chips, in run order, once at
    least ``min_runs`` give a 95% CI half-width of at most ``ci``; ``runs`` is the maximum);
    ``images_auto`` (with ``ci``): each chip on its own random image subset (``subsets``);
    ``protect``: mapped layers kept fault-free; ``shard`` (k, n): every n-th job from the k-th;
    ``ray``: run on Ray workers (True, or the cluster's address)."""
    sa1: tuple[float, ...]
    sa0: float = 0.0
    runs: int = RUNS
    seed: int = 0
    stats_rate: str | float = "auto"
    precision: str = "fp32"
    ci: float | None = None
    min_runs: int | None = None  # None: MIN_RUNS (given without ci, it is refused: it would do nothing)
    images_auto: bool = False
    pilot_images: int = PILOT_IMAGES
    min_images: int = MIN_IMAGES
    protect: tuple[str, ...] | None = None
    shard: tuple[int, int] = (1, 1)
    ray: bool | str | None = None
    place: bool = False  # each chip placed with its own faults first (runtime/placement.py)
    calibration_targets: str = "auto"  # with calibration images: "bn", "measured" or "auto" (calibration.targets)
    nonideal: object | None = None  # variation.Nonideal beside the stuck cells (None or ideal: none)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "sa1", check_sa1_rates(self.sa1, self.sa0))
        set_(self, "sa0", float(self.sa0))
        set_(self, "runs", check_runs(self.runs))
        set_(self, "seed", check_seed(self.seed))
        from ..artifact import check_stats_rate

        set_(self, "stats_rate", check_stats_rate(self.stats_rate))
        if self.calibration_targets not in CALIBRATION_TARGETS:
            raise RuntimeInputError(f"calibration targets must be one of {', '.join(CALIBRATION_TARGETS)}, "
                                    f"got {self.calibration_targets!r}")
        if self.precision not in PRECISIONS:
            raise RuntimeInputError(f"unknown precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        k, n = self.shard
        if not (1 <= k <= n):
            raise RuntimeInputError(f"shard must be k/n with 1 <= k <= n, got {k}/{n}")
        if self.ray and self.shard != (1, 1):
            raise RuntimeInputError("--ray replaces --shard: run the whole campaign on the Ray cluster (it resumes "
                                    "after a kill), or shard without --ray")
        if self.ci is None:
            if self.min_runs is not None:
                raise RuntimeInputError("--min-runs applies to a precision target only: give --ci POINTS too")
        else:
            if isinstance(self.ci, bool) or not isinstance(self.ci, (int, float)) or not (
                    math.isfinite(self.ci) and self.ci > 0):
                raise RuntimeInputError(f"ci must be a positive number of percentage points, got {self.ci}")
            min_runs = MIN_RUNS if self.min_runs is None else self.min_runs
            if isinstance(min_runs, bool) or not isinstance(min_runs, (int, np.integer)) or min_runs < 2:
                raise RuntimeInputError(f"min runs must be at least 2, got {min_runs}")
            set_(self, "min_runs", int(min_runs))
            if self.shard != (1, 1):
                raise RuntimeInputError("--ci stops each rate on all its earlier chips, so it cannot be sharded: "
                                        "run it whole (it resumes after a kill)")
        if self.images_auto:
            if self.ci is None:
                raise RuntimeInputError("--images auto sizes each chip's random image subset for a precision "
                                        "target: give --ci POINTS too (or --images N)")
            if self.ray:
                raise RuntimeInputError("--images auto sizes the subsets from chips timed one after another in "
                                        "this process: run it without --ray (or give --images N)")
            for what, v in (("pilot images", self.pilot_images), ("min images", self.min_images)):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
                    raise RuntimeInputError(f"--images auto: {what} must be an integer of at least 2, got {v}")
        if self.nonideal is not None:
            self.nonideal.check_applies(self.precision)
            if self.nonideal.ideal:  # no non-ideality: today's campaign, its identity unchanged
                set_(self, "nonideal", None)
        if self.protect is not None:
            names = tuple(self.protect)
            if not names or any(not isinstance(n, str) or not n.strip() for n in names):
                raise RuntimeInputError(f"--protect needs layer names, got {','.join(names)!r}")
            set_(self, "protect", names)

    # ---------------------------------------------------------------- jobs

    def jobs(self) -> range:
        """This shard's jobs j (rate i, run r = divmod(j, runs)), in campaign order: every n-th of
        the rates x runs, from the k-th. A range, not a list: --runs 1000000000 must not build the
        job list (it ended in MemoryError before the first chip)."""
        k, n = self.shard
        return range(k - 1, len(self.sa1) * self.runs, n)

    def in_shard(self, i: int, r: int) -> bool:
        k, n = self.shard
        return (i * self.runs + r) % n == k - 1

    # ---------------------------------------------------------------- the results identity

    def identity(self, artifact: Artifact, images: np.ndarray, labels: np.ndarray, *,
                 calibration: np.ndarray | None = None, calibrate: np.ndarray | None = None) -> dict:
        """The results file's ``config``: content hashes, not paths (docs/results-format.md). A
        resumed or merged file must hold exactly this."""
        cmap = artifact.first.cmap
        config = {
            "models": models_identity(artifact),
            "device": cmap.device.to_dict(), "cells": cmap.cell_count(),
            "sa1": list(self.sa1), "sa0": self.sa0, "runs": self.runs, "seed": self.seed,
            "images": int(len(labels)), "images_sha256": images_digest(images, labels),
            "stats_rate": self.stats_rate, "precision": self.precision,
        }
        if self.precision == "int8" or (self.nonideal is not None and self.nonideal.converters):
            if calibration is None:
                raise RuntimeInputError(f"{'--precision int8' if self.precision == 'int8' else 'DAC/ADC resolution'} "
                                        f"needs calibration images")
            config["calibration_sha256"] = images_digest(calibration, np.zeros(0, np.int64))
        # part of every run: it belongs to the identity
        selected = {artifact.select(p + self.sa0, self.stats_rate) for p in self.sa1}  # the models chips run
        config.update(calibrate_config(calibrate, artifact, self.calibration_targets, selected))
        if self.ci is not None:
            config["ci"], config["min_runs"] = float(self.ci), int(self.min_runs)
        if self.images_auto:
            for name, m in artifact.models.items():
                if m.fixed_batch(images.shape) is not None:
                    raise RuntimeInputError(f"--images auto evaluates each chip on a different number of images, "
                                            f"and the model {name} fixes its batch size: give --images N instead")
            total = len(images)
            config["images_auto"] = {"pilot": int(min(self.pilot_images, total)),
                                     "min": int(min(self.min_images, total))}
        config.update(normalization_config(artifact))
        if self.place:  # what placement does is part of every number: the identity
            from ..placement import placement_config

            config["place"] = placement_config()
        if self.nonideal is not None:  # recorded only when there is one: older files keep their identity
            config["nonideal"] = self.nonideal.to_dict()
        if self.protect:
            from ..faults import layer_indices

            protected = layer_indices(cmap, list(self.protect))
            config["protect"] = [cmap.layers[i].node for i in protected]
            config["protected_cells"] = sum(cmap.layers[i].levels.size for i in protected) / max(1, cmap.cell_count())
        return json.loads(json.dumps(config))  # as a file holds it (tuples -> lists)


def calibrate_config(calibrate: np.ndarray | None, artifact: Artifact | None = None,
                     targets: str = "auto", models=None) -> dict:
    """How chips were calibrated, for a results file's config (nothing when they were not):
    the images, and ``calibration_targets: "measured"`` where the targets were measured on the
    fault-free model (a model without recorded BN targets, or --calibration-targets measured;
    absent: the recorded BN targets, as in every file written before measured targets)."""
    if calibrate is None:
        return {}
    out = {"calibrate": int(len(calibrate)), "calibrate_sha256": images_digest(calibrate, np.zeros(0, np.int64))}
    if artifact is not None:
        from ..calibration.targets import target_kind

        kinds = {target_kind(m.metadata, targets, m.folder) for n, m in artifact.models.items()
                 if models is None or n in models}  # models: the names a campaign selects (None: all)
        if "measured" in kinds:
            out["calibration_targets"] = "measured"
    return out


def normalization_config(artifact: Artifact) -> dict:
    """The input normalisation given with --mean/--std (``Artifact.with_normalization``), for a
    results file's config: nothing when the model recorded its own (its sha256 says it)."""
    norm = getattr(artifact, "normalization_given", None)
    return {} if norm is None else {"normalization": norm.to_dict()}


def check_same(doc: dict, config: dict, shard, path) -> None:
    """A results file being resumed holds this configuration and shard."""
    if doc.get("config") != config:
        diff = sorted(k for k in set(config) | set(doc.get("config", {}))
                      if doc.get("config", {}).get(k) != config.get(k))
        raise RuntimeInputError(f"{path} holds results of a different configuration (differs in "
                                f"{', '.join(diff)}); choose another --out")
    if (doc.get("shard") or [1, 1]) != list(shard):
        raise RuntimeInputError(f"{path} holds shard {doc.get('shard')}, not {list(shard)}")
