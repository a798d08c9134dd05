"""A multi-rate artifact: one quantized folder, or a folder of them with one model per BN
statistics rate (``rram.bn_rate``), mapped onto the same crossbars; a campaign picks per chip the
model recalibrated for the nearest rate."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuntimeInputError
from ..metadata import BN_RATE_KEY, NORMALIZATION_EMBEDDED_KEY, NORMALIZATION_KEY, Normalization
from .deployed import DeployedModel
from .layout import MODEL_NAME


@dataclass
class Artifact:
    path: Path
    models: dict[str, DeployedModel]  # name ("." for a plain quantized folder) -> model
    normalization_given: Normalization | None = None  # --mean/--std for models that record none

    @classmethod
    def load(cls, path: str | os.PathLike) -> Artifact:
        path = Path(path)
        if not path.is_dir():
            raise RuntimeInputError(f"artifact folder not found: {path}")
        if (path / MODEL_NAME).is_file():
            return cls(path, {".": DeployedModel.load(path)})
        subs = sorted(p for p in path.iterdir() if p.is_dir() and (p / MODEL_NAME).is_file())
        if not subs:
            raise RuntimeInputError(f"{path} is not a quantized artifact: no {MODEL_NAME} in it or its subfolders")
        models = {p.name: DeployedModel.load(p) for p in subs}
        missing = [n for n, m in models.items() if m.bn_rate is None]
        if missing and len(models) > 1:  # one model in a subfolder (rate-<r>/) needs none
            raise RuntimeInputError(f"{path}: with several models each needs {BN_RATE_KEY} metadata; "
                                    f"{missing[0]} has none")
        rates = [m.bn_rate for m in models.values()]
        if len(set(rates)) < len(rates):
            raise RuntimeInputError(f"{path}: two models are recalibrated for the same BN rate "
                                    f"({sorted(rates)}); keep one per rate")
        devices = {json.dumps(m.cmap.device.to_dict(), sort_keys=True) for m in models.values()}
        cells = {m.cmap.cell_count() for m in models.values()}
        if len(devices) > 1 or len(cells) > 1:
            raise RuntimeInputError(f"{path}: the models are mapped onto different crossbars")
        return cls(path, models)

    def with_normalization(self, norm: Normalization | None) -> Artifact:
        """The artifact with ``norm`` (--mean/--std: per-channel, of images in [0, 1]) as the input
        normalisation of models that record none (an ONNX model exported elsewhere); the same as
        a recorded one changes nothing, another is refused, as is one for a model whose
        normalisation is embedded in its graph. Where it is used, ``normalization_given`` says so
        (results files record it: it changes every number)."""
        if norm is None:
            return self
        for m in self.models.values():
            where = m.folder / MODEL_NAME
            if NORMALIZATION_EMBEDDED_KEY in m.metadata:
                raise RuntimeInputError(f"{where} embeds its input normalisation in the graph (it takes images in "
                                        f"[0, 1]): drop --mean/--std")
            recorded = m.normalization
            if recorded is None:
                m.metadata[NORMALIZATION_KEY] = norm.to_metadata()
                self.normalization_given = norm
            elif not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(recorded.mean + recorded.std,
                                                                           norm.mean + norm.std)):
                raise RuntimeInputError(f"{where} records its own input normalisation {recorded.to_dict()}; "
                                        f"--mean/--std give {norm.to_dict()} (drop them)")
        return self

    @property
    def first(self) -> DeployedModel:
        return next(iter(self.models.values()))

    def select(self, chip_rate: float, stats_rate: str | float) -> str:
        """The model to run on a chip with this total fault rate: the one recalibrated for the
        nearest rate (``auto``; ties go to the lower rate) or for exactly ``stats_rate``."""
        if len(self.models) == 1:
            name, model = self.first_item()
            if stats_rate != "auto" and model.bn_rate is not None \
                    and not math.isclose(model.bn_rate, float(stats_rate)):
                raise RuntimeInputError(f"{self.path} holds statistics for rate {model.bn_rate}, not {stats_rate}")
            return name
        rates = {n: m.bn_rate for n, m in self.models.items()}
        if stats_rate == "auto":
            return min(rates, key=lambda n: (round(abs(rates[n] - chip_rate), 9), rates[n]))
        for n, r in rates.items():
            if math.isclose(r, float(stats_rate), abs_tol=1e-9):
                return n
        raise RuntimeInputError(f"{self.path} has no model for stats rate {stats_rate}; it has "
                                f"{', '.join(str(r) for r in sorted(rates.values()))}")

    def first_item(self):
        return next(iter(self.models.items()))


def check_stats_rate(stats_rate: str | float) -> str | float:
    """``"auto"`` or a rate in [0, 1] (``rram validate --bn-rate`` goes through this too)."""
    if isinstance(stats_rate, str) and stats_rate.strip().lower() == "auto":
        return "auto"
    try:
        v = float(stats_rate)
    except (TypeError, ValueError):
        raise RuntimeInputError(f"bn-rate must be 'auto' or a rate, got {stats_rate!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise RuntimeInputError(f"bn-rate must be 'auto' or a rate in [0, 1], got {stats_rate}")
    return v
