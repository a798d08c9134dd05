"""ONNX export with per-rate BN statistics (the convention agreed with ``passes/``).

- BatchNormalization nodes stay in the graph (``do_constant_folding=False``; folding is a pass).
  Each BN node's mean/var inputs are initializers named after the PyTorch buffers
  (``layer1.0.bn1.running_mean``) holding the statistics of the default rate.
- ``metadata_props``: ``rram.bn_stats_rates`` (JSON list of rate strings, e.g. ["0.0","0.1"]),
  ``rram.bn_rate_default`` and ``rram.bn_rate`` (the rate baked into the BN nodes),
  ``rram.model`` (JSON ModelSpec), ``rram.normalization`` (JSON mean/std), ``rram.drop_rate``
  (training drop-connect rate), ``rram.input_layout`` ("NCHW float32, normalised"),
  ``rram.source`` and ``rram.checkpoint_sha256`` (the checkpoint's file name and sha256).
- For every rate r in ``rram.bn_stats_rates`` and every BN node with mean/var initializers M, V:
  extra graph initializers ``M@rate=r`` and ``V@rate=r`` (consumed by no node).

Input ``input`` (N, 3, H, W) float32, normalised, H x W the checkpoint's ``ModelSpec.image_size``
(its training data's; 32x32 for CIFAR-10); output ``logits`` (N, classes); batch dynamic.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from runtime import metadata as md
from runtime.fileio import atomic_write_bytes, file_sha256
from runtime.session import make_session

from .checkpoints import Checkpoint
from .dropconnect import rate_key
from .errors import UserError
from .recalibrate import apply_bn_stats, bn_stats_of

OPSET = 17
INPUT, OUTPUT = "input", "logits"
TOLERANCE = 1e-4


def available_stats(ckpt: Checkpoint) -> dict[str, dict]:
    """rate string -> BN statistics. A checkpoint without recalibrated statistics offers its own
    (training) statistics under its training drop rate (0.0 for a plain model)."""
    if ckpt.bn_stats:
        return dict(ckpt.bn_stats)
    return {rate_key(float(ckpt.meta.get("drop_rate", 0.0))): None}


def _undo_initializer_dedup(model: onnx.ModelProto) -> None:
    """The TorchScript exporter merges equal initializers and feeds copies through Identity
    nodes; give every such consumer its own named initializer again (BN stats must be per node)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            g.initializer.append(copy)
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)


def bn_stat_inputs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(mean initializer name, var initializer name) of every BatchNormalization node."""
    return [(n.input[3], n.input[4]) for n in model.graph.node if n.op_type == "BatchNormalization"]


def export_onnx(ckpt: Checkpoint, out: str | os.PathLike, *, rate: str | None = None,
                all_rates: bool = False, seed: int = 0, check_batch: int = 4) -> dict:
    """Export ``ckpt`` with BN statistics of ``rate`` (a rate string); write ``out`` atomically.
    Returns a summary dict (rates, default rate, max abs difference against PyTorch)."""
    stats = available_stats(ckpt)
    rates = sorted(stats, key=float)
    if rate is None:
        if len(rates) == 1 or all_rates:
            rate = rates[0]
        else:
            raise UserError(f"checkpoint holds BN statistics for rates {', '.join(rates)}: choose one "
                            f"with --rate (or --all-rates)")
    if rate not in stats:
        raise UserError(f"checkpoint has no BN statistics for rate {rate} (it has: {', '.join(rates)}); "
                        f"run rram recalibrate first")
    model = ckpt.build()
    if stats[rate] is not None:
        apply_bn_stats(model, stats[rate])
    model.eval()
    # full per-rate tables by buffer name (the checkpoint's own stats where no rate was stored)
    tables = {r: (stats[r] if stats[r] is not None else bn_stats_of(model)) for r in
              (rates if all_rates else [rate])}

    size = ckpt.spec.image_size  # the data's (H, W) the model was trained on; 32x32 by default
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript path is deprecated in favour of dynamo, which folds BN into Conv
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=OPSET,
                          do_constant_folding=False, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    onx = onnx.load_from_string(buf.getvalue())
    _undo_initializer_dedup(onx)
    inits = {i.name for i in onx.graph.initializer}
    pairs = bn_stat_inputs(onx)
    for m, v in pairs:
        for name in (m, v):
            if name not in inits:
                raise RuntimeError(f"BatchNormalization input {name} is not an initializer")
            if name not in tables[rate]:
                raise RuntimeError(f"BatchNormalization input {name} is not a BN buffer of the model")
    for r, table in tables.items():
        for m, v in pairs:
            for name in (m, v):
                t = numpy_helper.from_array(table[name].numpy().astype(np.float32), md.rate_initializer_name(name, r))
                onx.graph.initializer.append(t)

    spec = ckpt.spec
    meta = {
        md.MODEL_KEY: json.dumps(spec.to_dict()),
        md.NORMALIZATION_KEY: ckpt.normalization.to_metadata(),
        md.DROP_RATE_KEY: repr(float(ckpt.meta.get("drop_rate", 0.0))),
        md.BN_RATE_KEY: rate,
        md.BN_RATE_DEFAULT_KEY: rate,
        md.BN_STATS_RATES_KEY: json.dumps(sorted(tables, key=float)),
        md.INPUT_LAYOUT_KEY: f"NCHW float32, normalised with {md.NORMALIZATION_KEY}",
        # the checkpoint's file name only: the model's bytes (and so its sha256, the identity a
        # campaign, a merge and a chip-calibration file check) must not depend on the folder it
        # was exported from; the full path is in the command's output ("source")
        md.SOURCE_KEY: Path(ckpt.source).name if ckpt.source else "",
        # the checkpoint file's bytes, carried by the passes and the quantizer into the artifact
        # and recorded in every results file's info.provenance (issue 36)
        md.CHECKPOINT_SHA256_KEY: file_sha256(Path(ckpt.source)) if ckpt.source and Path(ckpt.source).is_file()
        else "",
    }
    for k, val in meta.items():
        entry = onx.metadata_props.add()
        entry.key, entry.value = k, val
    onx.producer_name = "rram-toolchain"
    onnx.checker.check_model(onx, full_check=True)

    diff = compare_with_torch(onx, model, seed=seed, batch=check_batch, image_size=size)
    if not diff <= TOLERANCE:
        raise RuntimeError(f"exported model differs from PyTorch: max abs difference {diff:.3g}")
    atomic_write_bytes(Path(out), onx.SerializeToString())
    return {"out": str(out), "bn_rate": rate, "bn_stats_rates": sorted(tables, key=float),
            "max_abs_diff": diff, "opset": OPSET, "bn_nodes": len(pairs),
            "source": str(Path(ckpt.source).resolve()) if ckpt.source else ""}


def compare_with_torch(onx: onnx.ModelProto, model: torch.nn.Module, *, seed: int = 0,
                       batch: int = 4, image_size: tuple[int, int] = (32, 32)) -> float:
    x = torch.randn(batch, 3, *image_size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        ref = model(x).numpy()
    sess = make_session(onx.SerializeToString())  # warnings off: the per-rate initializers are unused by design
    got = sess.run([OUTPUT], {INPUT: x.numpy()})[0]
    return float(np.abs(got - ref).max())


