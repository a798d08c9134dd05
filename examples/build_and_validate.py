"""The rram flow from Python (``toolchain.api``): fine-tune a model with drop-connect, re-align
its BN statistics per expected chip fault rate, export, run the graph passes and quantize one
artifact per rate, then validate it on simulated faulty chips (with per-chip calibration when
``--calibrate N`` is given). Every step is the ``rram`` command of the same name (docs/api.md).

The shared ResNet20 (a few minutes on 2 cores)::

    export RRAM_DATA=../shared/data/cifar10-jpeg RRAM_WEIGHTS=../shared/models
    PYTHONPATH=. python examples/build_and_validate.py --out out/example

Tiny settings, any data (what tests/test_api.py runs)::

    PYTHONPATH=. python examples/build_and_validate.py --out /tmp/ex --data DATA --init none \\
        --width 0.25 --images 64 --test-images 32 --runs 2 --bn-rates 0,0.1 --sa1 0,0.1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.artifact import rate_folder
from toolchain import api


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder (must not hold an earlier run)")
    p.add_argument("--data", default=None, help="ImageFolder or CIFAR-10 root (default: $RRAM_DATA)")
    p.add_argument("--init", default="resnet20-akamaster",
                   help="checkpoint to fine-tune (a path or known name, found in $RRAM_WEIGHTS); 'none': from scratch")
    p.add_argument("--model", default="resnet20", help="resnet20, mobilenetv2, vgg13 or package.module:factory")
    p.add_argument("--width", type=float, default=None, help="width multiplier (built-in models)")
    p.add_argument("--drop-rate", type=float, default=0.1, help="drop-connect probability while training")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--images", type=int, default=2000, help="training images (a random subset)")
    p.add_argument("--bn-rates", default="0,0.1", help="expected chip fault rates: one artifact each")
    p.add_argument("--sa1", default="0,0.05,0.1", help="SA1 rates of the simulated chips")
    p.add_argument("--runs", type=int, default=5, help="simulated chips per rate")
    p.add_argument("--test-images", type=int, default=1000, help="test images per chip")
    p.add_argument("--calibrate", type=int, default=None, metavar="N",
                   help="also validate with per-chip calibration on N training images")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    out: Path = a.out
    rates = [float(r) for r in a.bn_rates.split(",")]
    init = None if a.init == "none" else a.init

    model = api.train(out / "train", model=a.model, init=init, width=a.width, drop_rate=a.drop_rate,
                      epochs=a.epochs, images=a.images, eval_images=a.test_images, data=a.data, seed=a.seed)
    # model=: a factory model's name comes from here, never from the checkpoint alone
    recalibrated = api.recalibrate(model, out / "train", bn_rate=rates, images=a.images, data=a.data,
                                   seed=a.seed, model=a.model)
    onnx_model = api.export(recalibrated, out / "model.onnx", all_rates=True, seed=a.seed, model=a.model)
    for rate in rates:  # one artifact per expected fault rate, BN folded at that rate
        folded = api.run_passes(onnx_model, out / f"model.r{rate}.onnx", passes="standard", bn_rate=rate)
        api.quantize(folded, out / "art" / rate_folder(str(rate)), preset="paper")  # art/rate-<rate>/

    campaign = {"sa1": a.sa1, "runs": a.runs, "images": a.test_images, "seed": a.seed, "bn_rate": "auto",
                "data": a.data}
    results = {"per-rate BN": api.validate(out / "art", out / "per-rate.json", **campaign)}
    if a.calibrate:
        results["per-chip"] = api.validate(out / "art", out / "per-chip.json", calibrate=a.calibrate, **campaign)

    summary = {}
    for label, doc in results.items():
        summary[label] = {f"{e['sa1']:g}": round(e["summary"]["mean"], 4) for e in doc["rates"]}
        print(f"{label}: " + ", ".join(f"SA1 {e['sa1']:g} (model {e['model']}) mean "
                                       f"{100 * e['summary']['mean']:.2f}%" for e in doc["rates"]))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    from runtime.errors import RramError

    try:
        sys.exit(main())
    except RramError as e:  # bad input: the one line rram would print
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
