"""Arguments that several subcommands share, and their conversion to toolchain objects."""
from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path

from ..data import Normalization
from ..errors import UserError
from ..model_names import MODEL_NAMES


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _int_at_least(text: str, low: int, wanted: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "at least 1")


def parse_stats_rate(text: str | float) -> str | float:
    """--stats-rate: 'auto' or a rate in [0, 1] (the multi-rate artifact's own check, in the flag's words)."""
    from runtime.artifact import check_stats_rate
    from runtime.errors import RuntimeInputError

    try:
        return check_stats_rate(text)
    except RuntimeInputError as e:
        raise UserError(f"--{e}") from None


def parse_shard(text: str | None) -> tuple[int, int]:
    """--shard k/n: the k-th of n deterministic parts of a campaign."""
    if text is None:
        return (1, 1)
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard must look like k/n (e.g. 2/4), got {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"--shard k/n needs 1 <= k <= n, got {text}")
    return (k, n)


SEED_LIMIT = 2**32  # seeds are 0 <= seed < 2**32: every consumer takes these (torch's manual_seed
#                    overflows at 2**64, `rram export` seeds with seed + 1; legacy numpy stops at 2**32)


def seed(text: str) -> int:
    """A seed in [0, 2**32) (numpy's SeedSequence takes no negative entropy; 2**70 overflowed torch)."""
    v = _int_at_least(text, 0, "a non-negative integer")
    if v >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be below 2**32 = {SEED_LIMIT}, got {text}")
    return v


def rate(text: str) -> float:
    """A fault or drop rate as a float, -0 read as 0 (so "-0" is not recorded as -0.0); the range
    check is the caller's."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return v + 0.0  # -0.0 + 0.0 == +0.0


def split_list(text: str, flag: str) -> list[str]:
    """``"a, b"`` -> ["a", "b"]; an empty entry ("a,,b", a trailing comma) is refused: it usually
    means a value was left out."""
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise UserError(f"{flag} needs at least one value")
    if not all(items):
        raise UserError(f"{flag} has an empty entry in {text!r}")
    return items


def float_list(text: str, flag: str) -> list[float]:
    """``"0,0.1,0.2"`` -> [0.0, 0.1, 0.2]; the range check is the caller's (it differs by use)."""
    try:
        return [float(x) + 0.0 for x in split_list(text, flag)]  # + 0.0: "-0" is 0, not -0.0
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def hidden_alias(p: argparse.ArgumentParser, old: str, dest: str, **kw) -> None:
    """An old spelling kept for one release: parsed into ``dest``, never shown in --help
    (one name per concept across subcommands; tests/test_cli_vocabulary.py)."""
    p.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


def add_bn_rate_arg(p: argparse.ArgumentParser, *, default="auto", old: str | None = None) -> None:
    """--bn-rate: which per-rate BN statistics to use ('auto': the ones recalibrated for the
    rate nearest to the chip's)."""
    p.add_argument("--bn-rate", default=default,
                   help="BN statistics of this fault rate ('auto': those recalibrated for the rate nearest to "
                        "each chip's)")
    if old:
        hidden_alias(p, old, "bn_rate")


def calibration_pool(total: int, n: int, seed: int):
    """The indices into a training split of ``total`` images of the ``--calibrate n`` images chosen
    by ``seed``: drawn from the training split less its validation images (docs/RESULTS.md), so that
    nothing a choice is measured on (``--split val``) calibrated a chip."""
    from runtime.calibration import calibration_indices
    from runtime.errors import RuntimeInputError

    from ..data import training_indices

    pool = training_indices(total)
    if not 1 <= int(n) <= len(pool):
        raise RuntimeInputError(f"--calibrate {n}: choose between 1 and the {len(pool)} images of the training "
                                f"split outside its validation images")
    return pool[calibration_indices(len(pool), n, seed)]


def calibration_images(args):
    """The ``--calibrate N`` training images (uint8 NHWC) every chip is calibrated on, chosen by
    ``--seed`` alone (the same for eval, validate, sensitivity and calibrate) from the training
    split less its validation images, or None."""
    if getattr(args, "calibrate", None) is None:
        return None
    from ..data import load_split

    train = load_split(args.data, "train", cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       download=getattr(args, "download", False))
    return train.images[calibration_pool(len(train), args.calibrate, args.seed)]


INT8_CALIBRATION_DEFAULT = 500  # --range-images when not given (the whole split when smaller)


def add_range_images_arg(p: argparse.ArgumentParser) -> None:
    """--range-images N: the training images that set value ranges of the deployed model: the int8
    activation ranges (validate, calibrate) and the DAC/ADC ranges (validate --dac-bits/--adc-bits).
    Not --calibration-images (its old, hidden spelling) nor --int8-images (hidden too, before the
    converters used them): --calibrate N is per-chip calibration, a different set of images."""
    p.add_argument("--range-images", dest="calibration_images", type=positive_int, default=None, metavar="N",
                   help=f"N training images that set the int8 activation ranges (--precision int8) and the "
                        f"DAC/ADC ranges (--dac-bits/--adc-bits) (default: {INT8_CALIBRATION_DEFAULT}, or the "
                        f"whole split when it is smaller)")
    hidden_alias(p, "--calibration-images", "calibration_images", type=positive_int)
    hidden_alias(p, "--int8-images", "calibration_images", type=positive_int)


def add_out_arg(p: argparse.ArgumentParser, help: str, *, metavar: str | None = None,
                positional: str | None = None) -> None:
    """--out: every command names its output so. ``positional``: the old form ``rram CMD IN OUT``
    (passes, quantize), still parsed so that existing scripts keep working, never shown in --help."""
    p.add_argument("--out", default=None, metavar=metavar, help=help)
    if positional:
        p.add_argument(positional, nargs="?", default=None, help=argparse.SUPPRESS)


def output_of(args, positional: str, command: str) -> str:
    """The output ``--out`` (or the old positional form) names; a one-line error without one."""
    old = getattr(args, positional, None)
    if old is not None and args.out is not None and old != args.out:
        raise UserError(f"two outputs given ({old} and --out {args.out}): give --out only "
                        f"(see `rram {command} --help`)")
    out = args.out if args.out is not None else old
    if out is None:
        raise UserError(f"give the output with --out (see `rram {command} --help`)")
    return out


def int8_calibration_indices(total: int, n: int | None):
    """``--range-images N`` (int8 activation ranges): N images spread over the training
    split's ``total``; more than the split holds is a one-line error, not silently all of them
    (``--calibration-images 1000000000000``, its old spelling, ran on the whole split for minutes). None (not given):
    INT8_CALIBRATION_DEFAULT, or the whole split when it is smaller."""
    from ..data import subset_indices

    if n is None:
        return subset_indices(total, min(INT8_CALIBRATION_DEFAULT, total))
    if n > total:
        raise UserError(f"--range-images {n}: the training split has {total} images; choose at most that")
    return subset_indices(total, n)


def add_ray_arg(p: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS]: the chips on Ray workers instead of this process (docs/scaling.md)."""
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run the chips on Ray workers, one per CPU, with the same results (default: off; needs "
                        "pip install 'rram-toolchain[ray]'; docs/scaling.md). Alone it connects as ray.init() does "
                        "($RAY_ADDRESS, else the cluster `ray start` began on this machine, else a new local "
                        "instance); ADDRESS: 'auto', 'local', HOST:PORT or ray://HOST:PORT. Give it after the "
                        "artifact, or as --ray=ADDRESS")


def check_ray(args) -> None:
    """With --ray: Ray importable (a one-line error naming the extra), before any work."""
    if getattr(args, "ray", None):
        from runtime.ray_executor import import_ray

        import_ray()


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="CIFAR-10 root (ImageFolder train/test or "
                   "cifar-10-batches-py); default: $RRAM_DATA")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default: $RRAM_CACHE or "
                   "~/.cache/rram-toolchain)")
    p.add_argument("--no-cache", action="store_true", help="decode images without the cache")
    p.add_argument("--download", action="store_true",
                   help="allow downloads (torchvision CIFAR-10, named checkpoints); needs internet")


MODEL_HELP = (f"architecture: {', '.join(MODEL_NAMES)}, or package.module:factory (any importable "
              f"callable returning a torch.nn.Module)")


def add_model_args(p: argparse.ArgumentParser, *, checkpoint_required: bool = True) -> None:
    p.add_argument("--model", choices=None, default=None, metavar="NAME",
                   help=MODEL_HELP + " (read from our own checkpoints)")
    p.add_argument("--width", type=positive_float, default=None, help="width multiplier (built-in models)")
    p.add_argument("--shortcut", choices=["A", "B"], default=None, help="resnet20 shortcut option")
    # SUPPRESS: an absent positional must not overwrite the hidden alias's value (read it with
    # getattr(args, "checkpoint", None); set_defaults would undo the SUPPRESS)
    p.add_argument("checkpoint", nargs="?", default=argparse.SUPPRESS, metavar="CKPT",
                   help="checkpoint path or a known name (e.g. resnet20-akamaster)")
    hidden_alias(p, "--checkpoint", "checkpoint")
    add_normalization_args(p)


def add_normalization_args(p: argparse.ArgumentParser, *, what: str = "foreign checkpoints") -> None:
    p.add_argument("--mean", default=None, help=f"input mean r,g,b of images in [0, 1] ({what})")
    p.add_argument("--std", default=None, help=f"input std r,g,b of images in [0, 1] ({what})")


ONNX_NORMALIZATION = "ONNX models that record none, e.g. not exported by rram export"


def add_artifact_normalization_args(p: argparse.ArgumentParser) -> None:
    """--mean/--std for an artifact whose model records no input normalisation (an ONNX model from
    elsewhere): used for every image it is given, and recorded in the results."""
    add_normalization_args(p, what=ONNX_NORMALIZATION)


def artifact_with_normalization(artifact, args):
    """``artifact`` given --mean/--std (``Artifact.with_normalization``: refused where the model
    records another or embeds its own), a one-line error otherwise."""
    from runtime.errors import RuntimeInputError

    norm = normalization_from_args(args)
    try:
        return artifact.with_normalization(norm)
    except RuntimeInputError as e:
        raise UserError(str(e)) from None


def add_calibration_targets_arg(p: argparse.ArgumentParser) -> None:
    """--calibration-targets: what per-chip calibration brings each layer back to."""
    from runtime import CALIBRATION_TARGETS

    p.add_argument("--calibration-targets", choices=CALIBRATION_TARGETS, default="auto",
                   help="with --calibrate: bn = the BN statistics fold-bn recorded (layers followed by BN); "
                        "measured = every mapped layer's per-channel statistics on the fault-free model, measured "
                        "on the same calibration images (models whose exporter folded BN, or without BN); auto "
                        "(default): bn where the model records them, else measured (docs/runtime.md)")


def check_calibration_targets(args) -> None:
    """--calibration-targets only with --calibrate (an option that does not apply is refused)."""
    if getattr(args, "calibration_targets", "auto") != "auto" and getattr(args, "calibrate", None) is None:
        raise UserError(f"--calibration-targets {args.calibration_targets} chooses the targets of --calibrate N: "
                        f"give --calibrate too")


def normalization_from_args(args) -> Normalization | None:
    if args.mean is None and args.std is None:
        return None
    if args.mean is None or args.std is None:
        raise UserError("--mean and --std must be given together")
    try:
        return Normalization(tuple(float_list(args.mean, "--mean")), tuple(float_list(args.std, "--std")))
    except ValueError:
        raise UserError("--mean/--std must be three comma-separated finite numbers each, std positive") from None


def emit(result: dict, as_json: bool, text: str) -> None:
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(text)


@contextmanager
def no_new_folders_on_failure(folder: str | Path):
    """On failure (a full disk, an interrupt), remove the folders of ``folder``'s path that did
    not exist before and are still empty: a failed run leaves nothing behind, while a folder that
    holds earlier outputs (a resumable training) is kept."""
    folder = Path(folder)
    new = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for p in new:
            try:
                p.rmdir()  # only an empty folder goes
            except OSError:
                break
        raise


def new_output_file(path: str | Path) -> Path:
    """An output file that must not exist yet (a report is never overwritten): checked to be a
    writable file path (``runtime.fileio.check_output_path``), and refused in one line when it
    exists. Early, for a fast answer; a writer that holds a lock checks again under it."""
    from runtime.fileio import check_output_path

    path = Path(path)
    check_output_path(path)
    if path.exists():
        raise UserError(f"{path} exists; choose another --out")
    return path
