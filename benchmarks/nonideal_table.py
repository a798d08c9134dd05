"""docs/runtime.md's device non-ideality table on the full test split (issue 37's "Measure"): for
the shared pretrained ResNet20 and the zoo's drop-connect ResNet20, 20 chips on all 10,000 test
images: programming variation alone (2, 5, 10% of the conductance range), ADC resolution alone
(8, 6, 4 bits), and SA1 0 / 10 / 20 / 30% with the published device preset (`wan2022`), each
without and with per-chip calibration, the preset's rows with placement too.

    PYTHONPATH=. python benchmarks/nonideal_table.py run RUNDIR [KEY ...]  # the campaigns (resumable)
    PYTHONPATH=. python benchmarks/nonideal_table.py collect RUNDIR        # finished ones -> docs/results/nonideal/
    PYTHONPATH=. python benchmarks/nonideal_table.py write                 # remake the block in docs/runtime.md

``run`` needs the artifacts of benchmarks/placement_table.py in RUNDIR (``pretrained/``,
``resnet20-dc30-ft3/``) and runs, per model, the campaigns named by KEY (``MODEL.CAMPAIGN``, e.g.
``pretrained.wan2022-placed``; all of them without KEY), each into RUNDIR/MODEL.CAMPAIGN.json with
``--resume``. The baselines (no non-ideality: the plain fault-free accuracy) are the placement
table's committed campaigns (docs/results/placement/MODEL.fixed.json and MODEL.fixed-cal.json),
the same artifacts, images and seed. tests/test_nonideal_doc.py checks that the block is what
``render`` makes of the files.

An artifact rebuilt later (another session: the machine that built the baselines' is gone) can
differ in its model.onnx sha256 without computing anything else: a newer ``rram export`` records
more provenance in the ONNX metadata (the checkpoint's sha256). ``run`` then first reruns the
fixed-mapping baseline on the rebuilt artifact (RUNDIR/rebuilt/MODEL.fixed.json; not when it is the
artifact of the rerun committed in docs/results/nonideal/rebuilt/, which runs at once) and goes on only
if every chip at every rate gives the committed baseline's accuracy within ``MAX_IMAGES_APART``
images (float rounding, likely another CPU's; more means other weights); ``collect`` commits
that rerun to docs/results/nonideal/rebuilt/, and a row may name either artifact (the test checks
the rerun against the baseline chip for chip). New results files also record each model's
``content_sha256`` (runtime/artifact/deployed.py), which ignores that metadata.

Choices, stated: chips that place or calibrate to measured targets use the model's rate-0 BN
(``--bn-rate 0``; placement and per-rate BN clash, docs/runtime.md), the others ``--bn-rate auto``;
calibration targets ``measured`` with placement (the better of the two in the placement table,
a choice made there on the test split), BN targets without. Programming variation and ADC rows
have no stuck cells, so placement has nothing to move there and is not run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import placement_table  # benchmarks/placement_table.py: the baselines' campaign command
from placement_table import write_block  # one block writer

from runtime.fileio import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "nonideal"
REBUILT = RESULTS / "rebuilt"  # MODEL.fixed.json: the fixed-mapping baseline rerun on a rebuilt artifact
PLACEMENT = ROOT / "docs" / "results" / "placement"
MODELS = [("pretrained", "the shared pretrained ResNet20 (`resnet20-akamaster`, no drop-connect)"),
          ("resnet20-dc30-ft3", "the zoo's `resnet20-dc30-ft3` (drop-connect p = 0.3, 3-epoch fine-tune, width 1)")]
RUNS = 20
CAL = ["--calibrate", "256"]
PLACED = ["--bn-rate", "0", "--place"]
VARIATION = [0.02, 0.05, 0.1]
ADC_BITS = [8, 6, 4]
SA1 = "0,0.1,0.2,0.3"
WAN = [("wan2022", "fixed mapping", ["--bn-rate", "auto"]),
       ("wan2022-cal", "fixed mapping + calibration", ["--bn-rate", "auto", *CAL]),
       ("wan2022-placed", "placement", PLACED),
       ("wan2022-placed-cal", "placement + calibration (measured targets)",
        [*PLACED, *CAL, "--calibration-targets", "measured"])]


def campaigns() -> list[tuple[str, str, list[str]]]:
    """(name, SA1 rates, options) of every campaign of one model, in the order ``run`` runs them."""
    out = [(name, SA1, ["--nonideal", "wan2022", *options]) for name, _, options in WAN]
    for sigma in VARIATION:
        for cal in ([], CAL):
            out.append((f"variation-{sigma:g}" + ("-cal" if cal else ""), "0",
                        ["--bn-rate", "auto", "--variation", f"{sigma:g}", *cal]))
    for bits in ADC_BITS:
        for cal in ([], CAL):
            out.append((f"adc-{bits}" + ("-cal" if cal else ""), "0",
                        ["--bn-rate", "auto", "--adc-bits", str(bits), *cal]))
    return out


def command(artifact: str, out: str, rates: str, options: list[str]) -> list[str]:
    return ["rram", "validate", artifact, "--sa1", rates, "--runs", str(RUNS), "--seed", "0", *options,
            "--out", out, "--resume"]


def load(folder: Path, name: str) -> dict | None:
    """A complete committed campaign on the full test split, or None while it is not committed."""
    path = folder / f"{name}.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    config = doc["config"]
    assert doc["complete"] and config["images"] == 10000 and config["runs"] == RUNS, name
    assert (config.get("calibrate") == 256) == ("-cal" in name), name
    assert bool(config.get("place")) == ("-placed" in name), name
    return doc


def _summary(doc: dict | None, i: int = 0) -> dict | None:
    return None if doc is None else doc["rates"][i]["summary"]


def _cell(s: dict | None, base: float | None) -> str:
    if s is None:
        return "not run yet"
    loss = [] if base is None else [f"loss {100 * (base - s['mean']):.2f}"]
    worst = [f"min {100 * s['min']:.1f}"] if s["max"] > s["min"] else []  # identical chips: one figure
    return f"{100 * s['mean']:.2f}" + (f" ({', '.join(worst + loss)})" if worst + loss else "")


def render_model(model: str) -> list[str]:
    docs = {name: load(RESULTS, f"{model}.{name}") for name, _, _ in campaigns()}
    plain, plain_cal = load(PLACEMENT, f"{model}.fixed"), load(PLACEMENT, f"{model}.fixed-cal")
    base = None if plain is None else _summary(plain)["mean"]
    lines = ["plain fault-free accuracy " + ("not committed yet" if base is None else f"{100 * base:.2f}%")
             + "; mean top-1 % over 20 chips (worst chip, loss in points against the plain fault-free accuracy; "
             "one figure where every chip is the same)", "",
             "| non-ideality alone (no stuck cell) | uncalibrated | per-chip calibration (256 images) |",
             "|---|---|---|",
             f"| none | {_cell(_summary(plain), base)} | {_cell(_summary(plain_cal), base)} |"]
    for sigma in VARIATION:
        name = f"variation-{sigma:g}"
        lines.append(f"| programming variation {100 * sigma:g}% of the range (additive) | "
                     f"{_cell(_summary(docs[name]), base)} | {_cell(_summary(docs[name + '-cal']), base)} |")
    for bits in ADC_BITS:
        name = f"adc-{bits}"
        lines.append(f"| {bits}-bit ADCs (per-column calibrated range) | "
                     f"{_cell(_summary(docs[name]), base)} | {_cell(_summary(docs[name + '-cal']), base)} |")
    lines += ["", "| `wan2022` (variation + 1% read noise) and SA1 | SA1 0 | SA1 0.1 | SA1 0.2 | SA1 0.3 |",
              "|---|---|---|---|---|"]
    for name, label, _ in WAN:
        doc = docs[name]
        cells = [_cell(_summary(doc, i), base) for i in range(4)] if doc else ["not run yet", "", "", ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def render() -> str:
    lines = []
    for model, label in MODELS:
        first, *rest = render_model(model)
        lines += [f"**{label[0].upper() + label[1:]}**: {first}", *rest]
    return "\n".join(lines)


BEGIN = "<!-- nonideal-full: generated by benchmarks/nonideal_table.py write; tests/test_nonideal_doc.py checks it -->"
END = "<!-- /nonideal-full -->"


def write() -> None:
    write_block(ROOT / "docs" / "runtime.md", BEGIN, END, render())


def chip_accuracies(doc: dict) -> list[list[float]]:
    """Per rate, the accuracy of each chip in run order: what two campaigns on the same deployed
    weights, chips and images give identically."""
    return [[rate["runs"][str(i)]["accuracy"] for i in range(len(rate["runs"]))] for rate in doc["rates"]]


# Float rounding can flip an image whose top two logits nearly tie. Measured: on the shared ResNet20's
# rebuilt artifact (the same content_sha256 as a build at the baseline's commit), 79 of the 80 chips
# gave the committed accuracies exactly and one chip was one image of 10,000 apart; on
# resnet20-dc30-ft3's, all 80 exactly. The likely cause is the CPU (the rerun ran on AVX-512 cores;
# the baseline's file predates recording the CPU, so this is not shown). More than this many images
# on any chip means other weights, not rounding.
MAX_IMAGES_APART = 2


def images_apart(rerun: dict, baseline: dict) -> list[int]:
    """Per chip (all rates in order), how many test images' verdicts the two campaigns differ by."""
    images = baseline["config"]["images"]
    return [round(abs(a - b) * images) for ra, rb in zip(chip_accuracies(rerun), chip_accuracies(baseline))
            for a, b in zip(ra, rb)]


def same_baseline(rerun: dict, baseline: dict) -> bool:
    """A rerun of the fixed-mapping baseline on a rebuilt artifact computes what the committed one
    did: the same campaign (config less the model files' sha256), the same chips, and every chip's
    accuracy within ``MAX_IMAGES_APART`` images (the rest is the CPU's rounding)."""
    def identity(doc):
        return {k: v for k, v in doc["config"].items() if k != "models"}

    shape = [len(r) for r in chip_accuracies(rerun)] == [len(r) for r in chip_accuracies(baseline)]
    return (identity(rerun) == identity(baseline) and rerun["complete"] and baseline["complete"] and shape
            and max(images_apart(rerun, baseline)) <= MAX_IMAGES_APART)


def artifacts(model: str) -> list[dict]:
    """The ``config.models`` a row of MODEL may name: the placement baseline's artifact, and the
    rebuilt one whose baseline rerun is committed."""
    found = [json.loads((PLACEMENT / f"{model}.fixed.json").read_text())["config"]["models"]]
    rebuilt = REBUILT / f"{model}.fixed.json"
    if rebuilt.exists():
        found.append(json.loads(rebuilt.read_text())["config"]["models"])
    return found


def _models_of(artifact: Path) -> dict:
    """``config.models`` as ``rram validate`` will record it for this artifact folder."""
    from runtime.artifact import Artifact
    from runtime.campaign.plan import models_identity
    from runtime.errors import RuntimeInputError

    try:
        return models_identity(Artifact.load(artifact))
    except RuntimeInputError as e:
        sys.exit(f"nonideal_table: {e} (build it as benchmarks/placement_table.py says)")


def check_artifact(rundir: Path, model: str) -> None:
    """Before a row runs: RUNDIR/MODEL is the baseline's artifact or the committed rebuilt one
    (docs/results/nonideal/rebuilt/), or its baseline rerun (RUNDIR/rebuilt/MODEL.fixed.json, run
    now when missing) equals the committed baseline chip for chip."""
    models = _models_of(rundir / model)
    if models in artifacts(model):  # the baseline's, or one whose rerun was checked and committed
        return
    baseline = json.loads((PLACEMENT / f"{model}.fixed.json").read_text())
    out = rundir / "rebuilt" / f"{model}.fixed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"== {model}: rebuilt artifact (model.onnx sha256 differs from the baseline's); "
          f"rerunning its fixed-mapping baseline into {out}", flush=True)
    subprocess.run(placement_table.command(str(rundir / model), str(out), []), check=True)  # its `fixed`
    rerun = json.loads(out.read_text())
    apart = images_apart(rerun, baseline)
    print(f"== {model}: {apart.count(0)} of {len(apart)} chips give the committed accuracy exactly, "
          f"the others {sorted(set(apart) - {0})} image(s) apart", flush=True)
    if not same_baseline(rerun, baseline):
        sys.exit(f"{rundir / model} is not the artifact of {PLACEMENT / (model + '.fixed.json')}: "
                 "its fixed-mapping chips give other accuracies; rebuild it as the placement table says")


def run(rundir: Path, keys: list[str]) -> None:
    todo = [(m, name, rates, options) for m, _ in MODELS for name, rates, options in campaigns()
            if not keys or f"{m}.{name}" in keys]
    unknown = set(keys) - {f"{m}.{name}" for m, name, _, _ in todo}
    if unknown:
        sys.exit(f"unknown campaign {sorted(unknown)[0]}: MODEL.CAMPAIGN, e.g. pretrained.wan2022")
    for model in dict.fromkeys(m for m, _, _, _ in todo):
        check_artifact(rundir, model)
    for model, name, rates, options in todo:
        print(f"== {model}.{name}", flush=True)
        subprocess.run(command(str(rundir / model), str(rundir / f"{model}.{name}.json"), rates, options),
                       check=True)


def collect(rundir: Path) -> None:
    """Copy the finished campaigns (complete files only) into docs/results/nonideal/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for model, _ in MODELS:
        for name, _, _ in campaigns():
            src = rundir / f"{model}.{name}.json"
            if src.exists() and json.loads(src.read_text()).get("complete"):
                atomic_write_bytes(RESULTS / src.name, src.read_bytes())
        rerun = rundir / "rebuilt" / f"{model}.fixed.json"
        if rerun.exists() and same_baseline(json.loads(rerun.read_text()),
                                            json.loads((PLACEMENT / f"{model}.fixed.json").read_text())):
            REBUILT.mkdir(exist_ok=True)
            atomic_write_bytes(REBUILT / rerun.name, rerun.read_bytes())


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "write":
        write()
    elif what == "run" and len(sys.argv) >= 3:
        run(Path(sys.argv[2]), sys.argv[3:])
    elif what == "collect" and len(sys.argv) == 3:
        collect(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
