"""The ``rram`` flow as Python functions, for build pipelines: ``from toolchain import api``.

A thin layer over the command line: each function turns its keyword arguments into the same
``rram`` argument list (``snake_case`` keyword -> ``--snake-case`` option) and runs it in this
process through :func:`toolchain.cli.run`, the code ``rram`` itself runs. So every check, default
and output is the CLI's, and docs/training.md, docs/runtime.md, ... describe both.

- A keyword left at ``None`` is not passed: the command's own default applies. ``True`` passes a
  flag (``all_rates=True`` -> ``--all-rates``), ``False`` leaves it out. A list or tuple is joined
  with commas (``sa1=[0, 0.1]`` -> ``--sa1 0,0.1``), except for the repeatable options
  (``include``, ``exclude``, ``input_shape``), which are repeated.
- Any other option of the command can be given as a keyword too (``lr=0.01``, ``eval_images=64``,
  ``precision="int8"``); a misspelt one is refused like a misspelt option.
- Bad input raises what the CLI would print as one line: a :class:`runtime.errors.RramError`
  (``toolchain.errors.UserError`` for a bad argument); a failed read or write raises ``OSError``.
- The commands still print their progress and summary lines (stdout, stderr) as ``rram`` does.

The table of functions, what each does and returns: docs/api.md.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .cli import run

REPEATED = {"include", "exclude", "input_shape"}  # options given once per value (action="append")
CHIP_CALIBRATION = "chip-calibration.json"  # `rram calibrate --out DIR` writes DIR/chip-calibration.json

PathLike = str | os.PathLike


def _value(v: Any) -> str:
    return str(v)


def argv(command: str, *positionals: PathLike | None, **options: Any) -> list[str]:
    """The ``rram`` argument list for ``command`` (what each function below runs)."""
    args = [command, *(os.fspath(p) for p in positionals if p is not None)]
    for key, v in options.items():
        if v is None or v is False:
            continue
        flag = "--" + key.replace("_", "-")
        if v is True:
            args.append(flag)
        elif isinstance(v, (list, tuple)):
            if key in REPEATED:
                for item in v:
                    args += [flag, _value(item)]
            else:
                args += [flag, ",".join(_value(x) for x in v)]
        else:
            args += [flag, os.fspath(v) if isinstance(v, os.PathLike) else _value(v)]
    return args


def _run(command: str, *positionals: PathLike | None, **options: Any) -> None:
    from .errors import UserError

    code = run(argv(command, *positionals, **options))
    if code != 0:  # no command returns another status today; never pass one off as success
        raise UserError(f"rram {command} exited with status {code}")


def train(out: PathLike, *, model: str, drop_rate: float, epochs: int, init: PathLike | None = None,
          data: PathLike | None = None, images: int | None = None, batch_size: int | None = None,
          lr: float | None = None, seed: int | None = None, width: float | None = None,
          shortcut: str | None = None, pad_1x1: bool = False, device: str | None = None,
          resume: bool = False, auto_resume: bool = False, **options: Any) -> Path:
    """Fault-aware training with drop-connect (``rram train``); returns ``out/model.pt``.

    Args:
        out: output folder (``last.pt``, ``model.pt``, ``log.json``).
        model: a built-in architecture (``resnet20``, ``mobilenetv2``, ``vgg13``) or
            ``package.module:factory`` (any importable callable returning a ``torch.nn.Module``).
        drop_rate: drop-connect probability in [0, 1); 0 is plain training.
        epochs: epochs to train (cosine schedule over them).
        init: fine-tune this checkpoint (a path or a known name such as ``resnet20-akamaster``);
            None trains from scratch.
        data: the ImageFolder (``train/``, ``test/``) or CIFAR-10 root; None: ``$RRAM_DATA``. The
            model's input size is the size of its images.
        images: train on a random subset of this many images.
        batch_size, lr, seed, device: as ``--batch-size``, ``--lr``, ``--seed``, ``--device``.
        width, shortcut: built-in models only (refused for a factory model). A ``width`` that is a
            whole multiple of ``init``'s widens it first, function-preserving (docs/training.md).
        pad_1x1: pad 1x1 convolutions to 3x3.
        resume, auto_resume: continue the run in ``out`` (``--resume``, ``--auto-resume``).
        **options: any other ``rram train`` option (``eval_images``, ``momentum``, ``train_precision="bf16"``,
            ``no_cache``, ...).
    """
    _run("train", init, out=out, model=model, drop_rate=drop_rate, epochs=epochs, data=data, train_images=images,
         batch_size=batch_size, lr=lr, seed=seed, width=width, shortcut=shortcut, pad_1x1=pad_1x1,
         device=device, resume=resume, auto_resume=auto_resume, **options)
    return Path(out) / "model.pt"


def recalibrate(checkpoint: PathLike, out: PathLike, *, bn_rate: float | list[float],
                data: PathLike | None = None, images: int | None = None, batches: int | None = None,
                batch_size: int | None = None, seed: int | None = None, model: str | None = None,
                **options: Any) -> Path:
    """BN re-alignment per expected chip fault rate (``rram recalibrate``); returns the written
    checkpoint (``out`` itself when it ends in ``.pt``, else ``out/recalibrated.pt``).

    Args:
        checkpoint: the checkpoint to re-align (a path or a known name).
        out: output folder, or a ``.pt`` file path.
        bn_rate: the fault rate(s) to re-estimate BN statistics for, e.g. ``[0, 0.1, 0.2, 0.3]``.
        data: as in :func:`train`.
        images: a random subset of this many training images.
        batches, batch_size, seed: as ``--batches``, ``--batch-size``, ``--seed``.
        model: architecture of a foreign checkpoint (ours record it); a factory model's
            ``package.module:factory`` always (a checkpoint records it for checking only).
        **options: any other ``rram recalibrate`` option (``device``, ``mean``, ``std``, ...).
    """
    from .commands.recalibrate import output_file  # loaded by the run above (torch): not at import

    _run("recalibrate", checkpoint, out=out, bn_rate=bn_rate, data=data, train_images=images, batches=batches,
         batch_size=batch_size, seed=seed, model=model, **options)
    return output_file(out)


def export(checkpoint: PathLike, out: PathLike, *, bn_rate: float | None = None, all_rates: bool = False,
           seed: int | None = None, model: str | None = None, **options: Any) -> Path:
    """ONNX export with BN nodes kept and per-rate BN statistics (``rram export``); returns ``out``.

    Args:
        checkpoint: a path or a known name.
        out: the ``.onnx`` file to write.
        bn_rate: the rate whose BN statistics go into the BN nodes (None: the checkpoint's own,
            or with ``all_rates`` its lowest).
        all_rates: also embed every stored rate's statistics (``NAME@rate=r`` initializers).
        seed: seed of the random check input.
        model: architecture of a foreign checkpoint; a factory model's ``package.module:factory``
            always (a checkpoint records it for checking only).
        **options: any other ``rram export`` option (``mean``, ``std``, ``download``).
    """
    _run("export", checkpoint, out=out, bn_rate=bn_rate, all_rates=all_rates, seed=seed, model=model,
         **options)
    return Path(out)


def run_passes(model: PathLike, out: PathLike, *, passes: str | list[str] | None = None,
               bn_rate: float | str | None = None, verify: str | None = None, seed: int | None = None,
               **options: Any) -> Path:
    """The ONNX graph passes, each verified numerically (``rram passes IN --out OUT``); returns ``out``.

    Args:
        model: the ONNX model to rewrite (never modified).
        out: the rewritten model.
        passes: a pipeline name (``standard``) or pass names (None: ``standard``).
        bn_rate: fold the BN statistics of this rate (a multi-rate export).
        verify: ``each``, ``end`` (the default) or ``off``.
        seed: seed of the random verification inputs.
        **options: any other ``rram passes`` option (``tolerance``, ``data``, ``real_images``, ...).
    """
    _run("passes", model, out=out, passes=passes, bn_rate=bn_rate, verify=verify, seed=seed, **options)
    return Path(out)


def quantize(model: PathLike, out: PathLike, *, preset: str | None = None, force: bool = False,
             **options: Any) -> Path:
    """Map a float ONNX model onto crossbars (``rram quantize IN --out OUTDIR``); returns the artifact
    folder ``out``.

    Args:
        model: the ONNX model (after the passes).
        out: the artifact folder (must not exist unless ``force``).
        preset: a device preset (None: ``paper``).
        force: replace a previous artifact in ``out``.
        **options: any other ``rram quantize`` option (``bits_per_cell``, ``tile``, ``include``,
            ``exclude``, ...).
    """
    _run("quantize", model, out=out, preset=preset, force=force, **options)
    return Path(out)


def validate(artifact: PathLike, out: PathLike, *, sa1: float | list[float] | None = None,
             runs: int | None = None, seed: int | None = None, images: int | None = None,
             bn_rate: float | str | None = None, calibrate: int | None = None, data: PathLike | None = None,
             resume: bool = False, **options: Any) -> dict:
    """Accuracy of an artifact on simulated faulty chips (``rram validate``); returns the results
    document written to ``out``, read back with :func:`runtime.results.read_results`
    (``doc["clean"]``: fault-free accuracy per model; ``doc["rates"]``: per rate its runs and
    ``summary`` with mean, std, min, max, ci95); with ``fault_map=``, the one measured chip's
    document (``doc["chip"]["accuracy"]``, docs/results-format.md).

    Args:
        artifact: the folder ``quantize`` wrote (or one subfolder per BN rate).
        out: the results JSON.
        sa1: SA1 cell rate(s) (None: ``0,0.1,0.2,0.3``).
        runs: simulated chips per rate (None: ``runtime.campaign.plan.RUNS``, 100).
        seed: seed of the simulated chips.
        images: use this many test images spread evenly over the split.
        bn_rate: BN statistics to use (``auto``: those recalibrated for the nearest rate).
        calibrate: per-chip calibration: re-estimate every calibrated layer's statistics on each
            chip from this many training images (``--calibrate N``), to its BN target or, for a
            model without BN targets, to a target measured on the fault-free model
            (``calibration_targets="auto"|"bn"|"measured"`` among the options).
        data: as in :func:`train`.
        resume: continue the campaign in ``out``.
        **options: any other ``rram validate`` option (``sa0``, ``protect``, ``shard``, ``precision``,
            ``fault_map``, ``chip_calibration``, ``ray``: True or a cluster address, docs/scaling.md, ...).
    """
    from runtime.fileio import read_json_document
    from runtime.results import FORMAT, read_results

    _run("validate", artifact, out=out, sa1=sa1, runs=runs, seed=seed, images=images, bn_rate=bn_rate,
         calibrate=calibrate, data=data, resume=resume, **options)
    if options.get("fault_map") is not None:  # one measured chip: its own document (``doc["chip"]``)
        return read_json_document(out, FORMAT + "-chip", "validate chip results file")
    return read_results(out)


def calibrate(artifact: PathLike, out: PathLike, *, fault_map: PathLike, images: int | None = None,
              seed: int | None = None, bn_rate: float | str | None = None, data: PathLike | None = None,
              **options: Any) -> Path:
    """Per-chip calibration of one measured chip (``rram calibrate``): the digital scale/offset
    per channel its periphery programs; returns ``out/chip-calibration.json`` (validate the chip
    with it: ``validate(..., fault_map=..., chip_calibration=path)``). For simulated chips, per-chip
    calibration is ``validate(..., calibrate=N)``.

    Args:
        artifact: the folder ``quantize`` wrote.
        out: output folder.
        fault_map: the chip's measured fault map (``.npz``).
        images: calibration images drawn from the training split less its validation images
            (``--calibrate N``; None: 256).
        seed: seed of the calibration images.
        bn_rate: BN statistics of this rate (``auto``: those of the rate nearest to the chip's).
        data: as in :func:`train`.
        **options: any other ``rram calibrate`` option.
    """
    _run("calibrate", artifact, out=out, fault_map=fault_map, calibrate=images, seed=seed, bn_rate=bn_rate,
         data=data, **options)
    return Path(out) / CHIP_CALIBRATION


def sensitivity(artifact: PathLike, out: PathLike, *, sa1: float | list[float], runs: int | None = None,
                seed: int | None = None, images: int | None = None, calibrate: int | None = None,
                data: PathLike | None = None, **options: Any) -> dict:
    """Per-layer fault sensitivity (``rram sensitivity``): faults in one mapped layer at a time;
    returns the report written to ``out``, read back with :func:`runtime.results.read_sensitivity`.

    Args:
        artifact: the folder ``quantize`` wrote.
        out: the report JSON.
        sa1: SA1 cell rate(s) for the faulty layer.
        runs: simulated chips per layer (None: ``runtime.campaign.plan.SENSITIVITY_RUNS``, 10).
        seed, images, calibrate, data: as in :func:`validate`.
        **options: any other ``rram sensitivity`` option (``sa0``, ``bn_rate``, ``ray``, ...).
    """
    from runtime.results import read_sensitivity

    _run("sensitivity", artifact, out=out, sa1=sa1, runs=runs, seed=seed, images=images, calibrate=calibrate,
         data=data, **options)
    return read_sensitivity(out)


__all__ = ["argv", "calibrate", "export", "quantize", "recalibrate", "run_passes", "sensitivity", "train",
           "validate"]
