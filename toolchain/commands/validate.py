"""``rram validate``: Monte-Carlo accuracy of a deployed artifact on simulated faulty chips
(or on one measured chip with ``--fault-map``). The runtime does the work; this wrapper loads
the images (toolchain.data) and parses arguments."""
from __future__ import annotations

import argparse
import json

from runtime import PRECISIONS
from runtime.campaign.plan import MIN_RUNS, RUNS
from runtime.subsets import PILOT_IMAGES

from ..data import EVAL_SPLITS, check_for_model, load_split
from ..errors import UserError
from .common import (
    add_artifact_normalization_args,
    add_bn_rate_arg,
    add_calibration_targets_arg,
    add_data_args,
    add_range_images_arg,
    add_ray_arg,
    artifact_with_normalization,
    calibration_images,
    check_calibration_targets,
    check_ray,
    float_list,
    int8_calibration_indices,
    parse_shard,
    parse_stats_rate,
    positive_float,
    positive_int,
    rate,
    seed,
    split_list,
)
from .nonideal_args import add_nonideal_args, nonideal_from_args

DEFAULT_SA1 = "0,0.1,0.2,0.3"


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="accuracy of a deployed artifact on simulated faulty chips")
    p.add_argument("artifact", help="folder written by `rram quantize` (or one subfolder per BN rate)")
    add_data_args(p)
    p.add_argument("--split", choices=EVAL_SPLITS, default="test",
                   help="which split's images to evaluate (val: the 1 in 10 training images held out for choices; "
                        "docs/RESULTS.md)")
    p.add_argument("--sa1", default=None, help=f"SA1 (stuck at G_min) cell rates, comma-separated "
                                               f"(default: {DEFAULT_SA1})")
    p.add_argument("--sa0", type=rate, default=0.0, help="SA0 (stuck at G_max) cell rate, for every run")
    p.add_argument("--runs", type=positive_int, default=None, help=f"simulated chips per rate (default: {RUNS})")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the simulated chips, 0 <= seed < 2**32; with --fault-map, of the chip's simulated "
                        "programming variation and read noise (one draw: a chip is programmed once)")
    p.add_argument("--images", type=images_arg, default=None, metavar="N|auto",
                   help="use N images spread evenly over the split (default: all); auto (with --ci): each chip "
                        "on its own random subset of the split, the size chosen from the measured per-chip and "
                        "per-image costs after --min-runs pilot chips and recorded (docs/runtime.md)")
    add_bn_rate_arg(p, old="--stats-rate")
    p.add_argument("--fault-map", default=None,
                   help="a measured fault map (.npz): validate that one chip (its stuck cells from the map; with "
                        "the non-ideality options below, behind the DAC/ADCs and with variation and read noise "
                        "drawn from --seed, as a campaign's chip)")
    p.add_argument("--shard", default=None, help="k/n: run the k-th of n deterministic parts")
    p.add_argument("--resume", action="store_true", help="continue the campaign in --out")
    p.add_argument("--ci", type=positive_float, default=None, metavar="POINTS",
                   help="precision target: add chips at each rate (in run order, --runs at most) until the 95%% CI "
                        "half-width of the mean is at most POINTS percentage points; not with --shard "
                        "(default: off, all --runs)")
    p.add_argument("--min-runs", type=positive_int, default=None,
                   help=f"with --ci: never stop a rate before this many chips (default: {MIN_RUNS}; with --images "
                        f"auto: the pilot chips, on {PILOT_IMAGES} images each)")
    p.add_argument("--protect", default=None, metavar="NAME[,NAME...]",
                   help="keep these mapped layers fault-free (verified crossbars or digital logic); names as "
                        "`rram sensitivity` and the quantize report print them (default: none)")
    p.add_argument("--place", action="store_true",
                   help="fault-aware placement: place each chip with its own faults (the tile rows each weight "
                        "row goes to, spare rows included, and each column's orientation) before evaluating it "
                        "(docs/runtime.md)")
    p.add_argument("--placement", default=None, metavar="FILE",
                   help="with --fault-map: the chip's placement as `rram place` wrote it")
    p.add_argument("--json", action="store_true",
                   help="print the summary as JSON (fault-free accuracy, per-rate statistics, timing) instead of text")
    p.add_argument("--chip-calibration", default=None, metavar="FILE",
                   help="with --fault-map: the chip's periphery parameters written by `rram calibrate` (not with "
                        "the non-ideality options: it was calibrated on the chip as measured)")
    p.add_argument("--calibrate", type=positive_int, default=None, metavar="N",
                   help="per-chip calibration: on each simulated chip re-estimate every BN-folded layer's "
                        "per-channel statistics from N training images chosen by --seed, and set the digital "
                        "scale/offset, before evaluating (default: off; docs/runtime.md)")
    add_calibration_targets_arg(p)
    add_artifact_normalization_args(p)
    p.add_argument("--out", required=True, help="results JSON (written after every run)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="int8: activations quantised as a DAC/ADC would (onnxruntime static "
                        "quantisation calibrated on training images), weights = crossbar integers")
    add_range_images_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per onnxruntime call (128 measured fastest for ResNet20 on 2 cores)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="onnxruntime threads (default: all cores; with --ray 1 per worker)")
    add_nonideal_args(p)
    add_ray_arg(p)
    p.set_defaults(func=run)


def thread_count(text: str) -> int:
    """--threads: checked at parsing (runtime.session.check_threads), before any data is loaded."""
    from runtime.errors import RuntimeInputError
    from runtime.session import check_threads

    n = positive_int(text)
    try:
        check_threads(n)
    except RuntimeInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return n


def images_arg(text: str) -> int | str:
    """--images: a positive count, or ``auto`` (a random subset per chip, sized for --ci)."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive number of images or auto, got {text!r}") from None


# Options of a campaign of simulated chips, refused with --fault-map (one measured chip) rather than
# ignored: the flag as the user wrote it, and whether it was given.
_CAMPAIGN_ONLY = (("--sa1", lambda a: a.sa1 is not None), ("--sa0", lambda a: a.sa0 != 0.0),
                  ("--runs", lambda a: a.runs is not None), ("--shard", lambda a: a.shard is not None),
                  ("--resume", lambda a: a.resume), ("--ci", lambda a: a.ci is not None),
                  ("--min-runs", lambda a: a.min_runs is not None), ("--protect", lambda a: a.protect is not None),
                  ("--images auto", lambda a: a.images == "auto"), ("--ray", lambda a: bool(a.ray)))


def campaign_config(args):
    """The campaign's settings from the command line, checked by the runtime (``CampaignConfig``)
    before anything slow is loaded."""
    from runtime.campaign.plan import CampaignConfig
    from runtime.errors import RuntimeInputError

    try:
        return CampaignConfig(
            sa1=tuple(float_list(args.sa1 or DEFAULT_SA1, "--sa1")), sa0=args.sa0,
            runs=RUNS if args.runs is None else args.runs, seed=args.seed, stats_rate=parse_stats_rate(args.bn_rate),
            precision=args.precision, ci=args.ci, min_runs=args.min_runs, images_auto=args.images == "auto",
            protect=None if args.protect is None else tuple(split_list(args.protect, "--protect")),
            shard=parse_shard(args.shard), ray=args.ray, place=args.place,
            calibration_targets=args.calibration_targets, nonideal=nonideal_from_args(args))
    except RuntimeInputError as e:
        raise UserError(str(e)) from None


def run(args) -> int:
    from runtime.artifact import Artifact
    from runtime.campaign import validate, validate_fault_map
    from runtime.fileio import check_output_path
    from runtime.results import write_results

    from ..data import subset_indices

    config = nonideal = None
    check_calibration_targets(args)
    if args.fault_map:
        from runtime.campaign.measured import measured_nonideal
        from runtime.errors import RuntimeInputError

        given = [flag for flag, given in _CAMPAIGN_ONLY if given(args)]
        if given:
            raise UserError(f"{given[0]} is for campaigns of simulated chips; --fault-map validates one "
                            f"measured chip (drop {given[0]})")
        if args.place and args.placement:
            raise UserError("--place places the chip here; --placement FILE applies a placement made by rram "
                            "place: give one of them")
        try:  # checked before anything slow is loaded (None: no non-ideality, today's chip)
            nonideal = measured_nonideal(nonideal_from_args(args), args.precision, args.chip_calibration)
        except RuntimeInputError as e:
            raise UserError(str(e)) from None
    else:
        for flag, given in (("--chip-calibration", args.chip_calibration), ("--placement", args.placement)):
            if given:
                raise UserError(f"{flag} belongs to one measured chip: give its --fault-map too")
        config = campaign_config(args)
        check_ray(args)
        runs = len(config.sa1) * config.runs
        if config.shard[0] > runs:  # a fixed-size array job over a small campaign: fine
            print(f"note: --shard {args.shard}: the campaign has only {runs} runs, so this shard holds none "
                  f"(its results file still merges)")
    auto = args.images == "auto"
    stats_rate = parse_stats_rate(args.bn_rate)
    check_output_path(args.out)
    artifact = artifact_with_normalization(Artifact.load(args.artifact), args)  # before the images: fail fast
    split = load_split(args.data, args.split, cache_dir=args.cache_dir, use_cache=not args.no_cache)
    classes = _output_classes(artifact)
    if classes is not None:  # (the image size the runtime checks against the model's input)
        check_for_model(split, classes, f"the model in {args.artifact}", image_size=None)
    if not auto and args.images is not None and args.images > len(split):
        print(f"note: --images {args.images}, but the {args.split} split holds {len(split)}: using all of them")
    idx = subset_indices(len(split), None if auto else args.images)  # auto: each chip draws from all
    images, labels = split.images[idx], split.labels[idx]
    engine_kw = {"batch_size": args.batch_size, "threads": args.threads}
    calibration = None
    if config is not None:
        nonideal = config.nonideal
    converters = nonideal is not None and nonideal.converters
    if args.precision == "int8" or converters:  # activation ranges (int8), converter ranges (DAC/ADC)
        train = load_split(args.data, "train", cache_dir=args.cache_dir, use_cache=not args.no_cache)
        calibration = train.images[int8_calibration_indices(len(train), args.calibration_images)]
    calibrate = calibration_images(args)
    info = {"data": str(args.data), "split": args.split}
    if args.fault_map:
        from pathlib import Path

        from runtime.fileio import output_lock

        with output_lock(args.out, "rram validate"):  # checked and written by one process only
            if Path(args.out).exists():
                raise UserError(f"{args.out} exists; choose another --out")
            doc = validate_fault_map(artifact, images, labels, args.fault_map, stats_rate=stats_rate,
                                     engine_kw={**engine_kw, "precision": args.precision,
                                                "calibration": calibration}, info=info, calibrate=calibrate,
                                     chip_calibration=args.chip_calibration, place=args.place,
                                     placement=args.placement, calibration_targets=args.calibration_targets,
                                     nonideal=nonideal, seed=args.seed)
            write_results(doc, args.out)
        if args.json:
            print(json.dumps({k: doc[k] for k in ("config", "clean", "chip")}, indent=1))
            return 0
        with_ = ""
        if nonideal is not None:
            from runtime.plot import nonideal_label

            with_ = f"; {nonideal_label(nonideal.to_dict())}" + (f", seed {args.seed}" if "seed" in doc["config"]
                                                                  else "")
        print(f"chip {args.fault_map}: {100 * doc['chip']['accuracy']:.2f}% "
              f"(fault-free {100 * doc['clean']:.2f}%, {100 * doc['chip']['stuck_fraction']:.3f}% cells stuck{with_})")
        return 0
    doc = validate(artifact, images, labels, config, out=args.out, resume=args.resume, engine_kw=engine_kw,
                   info=info, calibration=calibration, calibrate=calibrate)
    if args.json:
        print(json.dumps(summary_of(doc), indent=1))
    else:
        print_summary(doc)
    return 0


def summary_of(doc: dict) -> dict:
    """What `rram validate --json` prints: the results file less the per-run records (with
    --images auto, each rate's chosen size and what it was chosen from, when chosen)."""
    return {"config": doc["config"], "clean": doc["clean"], "complete": doc["complete"],
            "rates": [{k: e[k] for k in ("sa1", "sa0", "model", "summary", "images_auto") if k in e}
                      for e in doc["rates"]],
            "timing": doc.get("timing", {})}


def print_summary(doc: dict) -> None:
    # "." names the one model of a plain quantized folder (results files key models by name)
    if list(doc["clean"]) == ["."]:
        print(f"fault-free accuracy {100 * doc['clean']['.']:.2f}%")
    else:
        print("fault-free accuracy " + ", ".join(f"{n}: {100 * a:.2f}%" for n, a in doc["clean"].items()))
    for e in doc["rates"]:
        s = e["summary"]
        if s.get("n"):
            which = "" if e["model"] == "." else f", model {e['model']}"
            print(f"SA1 {e['sa1']:g} SA0 {e['sa0']:g} ({s['n']} chips{which}): "
                  f"mean {100 * s['mean']:.2f}% sd {_points(s['std'])} min {100 * s['min']:.2f}% "
                  f"max {100 * s['max']:.2f}% ci95 " + ("n/a (1 chip)" if s["ci95"] is None else
                                                       f"[{100 * s['ci95'][0]:.2f}, {100 * s['ci95'][1]:.2f}]"))
            if s.get("ci_target_met") is False:
                half = "n/a" if s["ci95"] is None else f"{100 * (s['ci95'][1] - s['ci95'][0]) / 2:.2f}"
                print(f"  note: the --ci target of {doc['config']['ci']:g} points was missed: all "
                      f"{doc['config']['runs']} chips give a half-width of {half} points (raise --runs)")
            if "sd_between" in s:  # --images auto
                size = e.get("images_auto", {}).get("size")
                chosen = f", then {size} per chip" if size else ""
                print(f"  images auto: {s['images_evaluated']} images evaluated (pilot "
                      f"{doc['config']['images_auto']['pilot']} per chip{chosen}); between-chip sd "
                      f"{100 * s['sd_between']:.2f} (image-sampling noise removed)")
                if "note" in s:
                    print(f"  note: {s['note']}")
    t = doc.get("timing") or {}
    if t.get("runs") and t.get("seconds"):
        # the speed of the chips that ran: fault-free chips are reused (their accuracy is known)
        ran = t.get("ran", t["runs"])
        reused = f" ({t['runs'] - ran} fault-free, reused without running)" if t["runs"] != ran else ""
        images = t.get("images", ran * doc["config"]["images"])  # --images auto: the subsets' images
        print(f"{ran} chips run in {t['seconds']:.1f} s{reused}: {ran / t['seconds']:.2f} chips/s, "
              f"{images / t['seconds']:.0f} images/s")


def _points(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _output_classes(artifact) -> int | None:
    """The number of outputs (classes) of the artifact's model, when its ONNX output says it."""
    import onnx

    from runtime.artifact import MODEL_NAME

    name = next(iter(artifact.models))
    folder = artifact.path if name == "." else artifact.path / name
    graph = onnx.load(str(folder / MODEL_NAME), load_external_data=False).graph
    dims = graph.output[0].type.tensor_type.shape.dim if graph.output else []
    return dims[-1].dim_value if len(dims) == 2 and dims[-1].dim_value > 0 else None
