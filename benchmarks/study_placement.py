"""docs/RESULTS.md's tables with placement (issue 36), one per architecture (ResNet20 option A, VGG13-BN;
``HEADINGS``, each model's in ``ARCH``): the campaigns of
benchmarks/placement_table.py (docs/runtime.md's full-split placement table: 20 chips x 10,000
test images, SA1 0 / 10 / 20 / 30%), read in place from docs/results/placement/, with the study's
columns: per method the mean (± between-chip sd, worst chip) at each rate, the loss against the
model's plain fault-free accuracy (its fixed-mapping campaign at SA1 0: no calibration, no
placement) and against the campaign's own fault-free chips.

Each model has one row per method in ``METHODS``; each table ends with the choice made on the
validation split among its candidates (``VAL_CANDIDATES``, ``chosen``) and, in a table of several
models (ResNet20), each other method's choice there (``PER_METHOD``, ``chosen_for``); the rows that
may run on the paper's 100 chips are ``protocol_rows``. A method whose file is not committed yet says
"not run yet", and its row fills in when the file lands (no code change). The files also join the
study's status and targets blocks (benchmarks/study_tables.py: ``files``, ``label``). Used by
benchmarks/study_tables.py; tests/test_results_doc.py checks the blocks against the files.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import placement_table  # benchmarks/placement_table.py: the campaigns and their file names
import study_losses as losses  # benchmarks/study_losses.py

from toolchain import zoo

FOLDER = "placement"  # docs/results/placement/<model>.<method>.json (placement_table.py's names)
HEADINGS = {  # study_tables' model folder -> the heading of its table with placement
    "resnet20a": "ResNet20, option A, with placement (width 1; 20 chips x 10,000 images, docs/runtime.md's "
                 "placement table)",
    "vgg13": "VGG13-BN, with placement (width 1; 20 chips x 10,000 images, docs/runtime.md's placement table)",
}
MODELS = {  # <model> of the file names -> what the row is, in row order; every one at width 1
    "pretrained": "the shared pretrained model (no drop-connect): the README flow's artifact, one BN",
    "resnet20-dc30-ft3": "zoo `resnet20-dc30-ft3`: drop-connect p=0.3, 3-epoch fine-tune of the shared model",
    "resnet20-dc30-ft10": "zoo `resnet20-dc30-ft10`: drop-connect p=0.3, 10-epoch fine-tune of the shared model, "
                          "validation split held out",
    "resnet20-dc40-ft10": "zoo `resnet20-dc40-ft10`: drop-connect p=0.4, 10-epoch fine-tune of the shared model, "
                          "validation split held out",
    "vgg13-dc30": "zoo `vgg13-dc30`: drop-connect p=0.3, 30 epochs from scratch, bf16 training, "
                  "validation split held out",
}
ARCH = {  # <model> -> the table it is in (a HEADINGS key): written out, so a new model must say which
    "pretrained": "resnet20a", "resnet20-dc30-ft3": "resnet20a", "resnet20-dc30-ft10": "resnet20a",
    "resnet20-dc40-ft10": "resnet20a", "vgg13-dc30": "vgg13",
}
NOT_CHOSEN = {"resnet20-dc30-ft3"}  # models not chosen on the validation split: marked (*), the NOTE says why
METHODS = {  # <method> of the file names -> the method a file of that name is (its config says the same;
    #         a test checks), in row order; the label stands where the file is not committed yet
    "fixed": "per-rate BN",
    "fixed-cal": "per-chip calibration (256 images)",
    "placed": "placement",
    "placed-cal": "placement + per-chip calibration (256 images)",
    "placed-cal-measured": "placement + per-chip calibration to measured targets (256 images, rate-0 artifact)",
}
NOT_RUN = "not run yet"
PROTOCOL = placement_table.PROTOCOL_SUFFIX  # MODEL.METHOD.100-chips.json: the paper's protocol


def path(results: Path, model: str, method: str, protocol: bool = False) -> Path:
    return results / FOLDER / placement_table.file_name(model, method, protocol)


def files(results: Path, arch: str = "resnet20a") -> list[Path]:
    """The committed campaigns of ARCH's table, in row order, as the status and the targets count them:
    a method run on the paper's 100 chips stands in place of its 20-chip campaign (the same first 20
    chips; issue 36: the protocol for the headline rows). The other files of the folder, such as the
    measured-targets-on-a-per-rate-artifact evidence, are not methods of the study."""
    out = []
    for m in models_of(arch):
        for v in METHODS:
            full = path(results, m, v, protocol=True)
            out += [full] if full.is_file() else [p] if (p := path(results, m, v)).is_file() else []
    return out


def models_of(arch: str) -> list[str]:
    """The models of ARCH's table (a study_tables folder: "resnet20a", "vgg13"), in row order."""
    return [m for m in MODELS if ARCH[m] == arch]


def label(p: Path) -> str:
    """What a row's model is; (*) where the NOTE under the table says how it was not chosen."""
    return _label(losses.stem(p))


def _label(model: str) -> str:
    return MODELS[model] + (" (*)" if model in NOT_CHOSEN else "")


def caveat(p: Path) -> str:
    """What the status says beside a row of a model not chosen on the validation split (this
    table's or the quick campaigns' of the same model), or beside the row chosen on it."""
    if p.parent.name == FOLDER and (choice := chosen(p.parent.parent, ARCH[losses.stem(p)])) is not None \
            and (losses.stem(p), p.name.split(".")[1]) == choice:
        return "; chosen on the validation split (the table \"Chosen on the validation split\" below)"
    if losses.stem(p) not in NOT_CHOSEN:
        return ""
    cal = losses.read(p)["config"].get("calibrate")
    return ("; (*) chosen before the validation split existed (trained on all 50,000 training images)"
            + (", and its calibration targets not chosen on the validation split" if cal else ""))


def _row(results: Path, model: str, method: str, rates: list[float], protocol: bool = False) -> str:
    p = path(results, model, method, protocol)
    if not p.is_file():
        return f"| {_label(model)} | {METHODS[method]} | {NOT_RUN} |" + " |" * (len(rates) + 3)
    doc = json.loads(p.read_text())
    cfg, summary = doc["config"], {round(r["sa1"], 6): r["summary"] for r in doc["rates"] if r.get("sa0", 0) == 0}
    cells = []
    for r in rates:
        s = summary.get(r)
        cells.append("n/a" if s is None else f"{100 * s['mean']:.2f}" if r == 0
                     else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (min {100 * s['min']:.1f})")
    plain, own = losses.losses(p)
    faulty = [r for r in rates if r > 0]
    return (f"| {_label(model)} | {losses.method(p)} | {cfg['runs']} x {cfg['images']:,} | " + " | ".join(cells)
            + f" | **{losses.fmt_losses(plain, faulty)}** | {losses.fmt_losses(own, faulty)} "
              f"| [{p.name}](results/{FOLDER}/{p.name}) |")


def _plain_line(results: Path, arch: str) -> str:
    """Each model's plain fault-free accuracy, as the losses take it."""
    parts = []
    for model in models_of(arch):
        fixed = path(results, model, "fixed")
        plain = losses.plain_accuracy(fixed) if fixed.is_file() else None
        name = "the shared model" if model == "pretrained" else f"`{model}`"
        parts.append(f"{name} {100 * plain:.2f}%" if plain is not None
                     else f"{name} not measured yet (its per-rate BN campaign is {NOT_RUN})")
    return "Plain fault-free accuracy (each model's fixed-mapping campaign at SA1 0): " + "; ".join(parts) + "."


NOTE = (
    "(*) Not chosen by the study's rules: `resnet20-dc30-ft3` is issue 34's model; it and its p = 0.3 were "
    "chosen before the validation split existed, and it was trained on all 50,000 training images "
    "(zoo/manifest.json). Which calibration targets it should use (the BN targets of its per-rate "
    "artifacts, or targets measured on its rate-0 artifact) has not been chosen on the validation split "
    "either: both rows are shown. It cannot be chosen on the validation split (it trained on those images); "
    "the status above shows the row chosen there instead (the table \"Chosen on the validation split\" below).")
ABOUT = (
    "The shared model's rows run the README flow's artifact (`rram export resnet20-akamaster`, `rram "
    "passes --passes standard`, `rram quantize --preset paper`), not the study pipeline's per-rate "
    "artifacts of the first table, so its fault-free accuracy differs from theirs; its placement + "
    "calibration campaign drew its calibration images from the whole training split (it ran before the "
    "validation hold-out; each file's `calibrate_sha256` names its images). Placement without calibration "
    "on the drop-connect model's per-rate artifacts shows the clash docs/runtime.md explains: the rate-0.3 "
    "artifact's BN expects the weight energy an unplaced chip loses.")


VGG13_NOTE = (
    "`vgg13-dc30` trained from scratch on the 45,000 training images outside the validation split, at a "
    "fifth of the study's peak learning rate (the study's diverged at width 1: docs/RESULTS.md's status); "
    "its p = 0.3 is the study's choice for VGG13-BN at width 0.5, made on the test split before the "
    "validation split existed, not chosen again here. Its artifacts hold BN re-estimated at SA1 0 and "
    "0.3 (`rram recalibrate --bn-rate 0,0.3`, on the same 45,000 images): per-rate BN takes the nearer "
    "one at 10 and 20%.")


NOTES = {"resnet20a": f"{NOTE}\n\n{ABOUT}", "vgg13": VGG13_NOTE}  # under each table, by architecture


def table(results: Path, arch: str = "resnet20a") -> str:
    """ARCH's table (every model and method, committed or not), its plain accuracies and its notes."""
    rates = [0.0, 0.1, 0.2, 0.3]
    at = " / ".join(f"{100 * r:g}" for r in rates if r > 0) + "%"
    lines = [f"### {HEADINGS[arch]}", "",
             "| variant | method | chips x images | " + " | ".join(f"SA1 {100 * r:g}%" for r in rates)
             + f" | loss vs plain fault-free, {at} | vs own fault-free chips | file |",
             "|---|---|---|" + "---|" * len(rates) + "---|---|---|"]
    lines += [_row(results, m, v, rates, protocol) for m in models_of(arch) for v in METHODS
              for protocol in (False, True) if not protocol or path(results, m, v, True).is_file()]
    return "\n".join(lines + ["", _plain_line(results, arch), "", NOTES[arch], "", validation_table(results, arch)])


# The choice on the validation split (issue 36): the candidates' placement + calibration campaigns on
# the 5,000 held-out training images (`rram validate ... --split val`, 10 chips per rate), files
# docs/results/val/MODEL.METHOD.json beside MODEL.plain.json (the plain fault-free accuracy on the same
# images); the candidate with the smallest largest loss against it at 10 / 20 / 30% SA1 is chosen, and
# its test-split campaign runs on the paper's 100 chips (with each other method's chosen row:
# ``protocol_rows``).
VAL_FOLDER = "val"
VAL_CANDIDATES = [(m, v) for m in ("resnet20-dc30-ft3", "resnet20-dc30-ft10")
                  for v in ("placed-cal", "placed-cal-measured")] + [
    ("resnet20-dc30-ft10", "placed-cal1024-measured"),  # the calibration size N: 1,024 images instead of 256
    ("resnet20-dc30-ft10", "placed-rate0"),  # placement alone, every chip on the rate-0 artifact (no calibration)
    ("resnet20-dc40-ft10", "placed-cal"), ("resnet20-dc40-ft10", "placed-cal-measured"),  # the rate p: 0.4
    ("vgg13-dc30", "placed-cal"), ("vgg13-dc30", "placed-cal-measured")]  # VGG13-BN: the calibration targets
VAL_NOTE = (
    "Only a model that did not train on the validation images can be chosen on them: `resnet20-dc30-ft10` "
    "and `resnet20-dc40-ft10` (`--hold-out-val`, zoo/manifest.json); `resnet20-dc30-ft3` trained on all "
    "50,000 training images, the 5,000 validation images among them, so its rows are shown for reference "
    "and are not eligible. All three fine-tune the shared pretrained model, which was itself trained on all "
    "50,000: their fault-free accuracy on the validation split is optimistic against the test split's. "
    "`resnet20-dc30-ft10`'s BN statistics were re-estimated on all 50,000 training images (before `rram "
    "recalibrate` held the validation images out by default), which favours it slightly here. The choice "
    "rests on losses, each against the candidate's own plain accuracy on the same images, not on the "
    "accuracy kept (the column at 30% SA1): a model that starts lower may lose less. Not chosen here: "
    "fine-tuning the shared model (from issue 34's test-split figures).")


VGG13_VAL_NOTE = (
    "`vgg13-dc30` trained with the validation images held out (zoo/manifest.json), so it is eligible; "
    "the choice here is between the calibration targets (its per-rate artifacts' BN, or targets measured "
    "on its rate-0 artifact).")


def eligible(model: str) -> bool:
    """A zoo model that trained with the validation images held out (its manifest says so)."""
    return model in _held_out_val()


@functools.cache
def _held_out_val() -> frozenset[str]:
    """The zoo models whose training held the validation images out, read from zoo/manifest.json
    once per process (the tables ask once per row and candidate)."""
    return frozenset(name for name, entry in zoo.manifest().items() if entry["training"].get("hold_out_val"))


def val_path(results: Path, model: str, method: str) -> Path:
    return results / VAL_FOLDER / f"{model}.{method}.json"


def candidates(arch: str) -> list[tuple[str, str]]:
    """ARCH's candidates on the validation split, in the order of VAL_CANDIDATES."""
    return [(m, v) for m, v in VAL_CANDIDATES if ARCH[m] == arch]


def val_files(results: Path, arch: str = "resnet20a") -> list[Path]:
    return [p for m, v in candidates(arch) if (p := val_path(results, m, v)).is_file()]


def chosen(results: Path, arch: str = "resnet20a") -> tuple[str, str] | None:
    """(model, method) of ARCH chosen on the validation split, among the eligible candidates (``eligible``):
    the smallest largest loss against its plain accuracy there, by the one-standard-error rule (of
    the candidates whose largest loss is within one standard error of the best one's, the cheapest:
    the fewest calibration images, then the first listed), so that a difference smaller than the
    chips' noise does not buy a costlier method; None until every candidate's file is committed."""
    return _choose(results, candidates(arch))


def _choose(results: Path, pairs: list[tuple[str, str]]) -> tuple[str, str] | None:
    """``chosen``'s rule over the validation campaigns of PAIRS ((model, method), in order)."""
    found = [p for m, v in pairs if (p := val_path(results, m, v)).is_file()]
    if len(found) < len(pairs):
        return None
    bests = [losses.Best(f, *losses.losses(f)) for f in found if eligible(losses.stem(f))]
    if not bests:  # no candidate trained with the validation images held out
        return None
    best = min(bests, key=lambda b: b.rank)
    within = [b for b in bests if b.rank[0] == best.rank[0] and b.worst <= best.worst + standard_error(best)]
    pick = min(within, key=lambda b: (losses.read(b.path)["config"].get("calibrate") or 0, found.index(b.path)))
    return losses.stem(pick.path), pick.path.name.split(".")[1]


# Each other method's headline row (issue 36: "each model's best row under each method"): in a table
# of several eligible models (ResNet20), the model is chosen on the validation split by ``chosen``'s
# rule among the eligible models run with that method's own options (placement_table.VARIANTS, `rram
# validate ART --split val --bn-rate auto ... --runs 10 --seed 0`: docs/results/val/MODEL.METHOD.json);
# in a table of one model (VGG13-BN) there is nothing to choose.
PER_METHOD = ("fixed", "fixed-cal", "placed")


def method_candidates(arch: str, method: str) -> list[tuple[str, str]]:
    """ARCH's eligible models run with METHOD on the validation split, in table order."""
    return [(m, method) for m in models_of(arch) if eligible(m)]


def chosen_for(results: Path, arch: str, method: str) -> tuple[str, str] | None:
    """METHOD's headline row of ARCH (a PER_METHOD method): the table's one model, or the eligible
    model chosen on the validation split; None until every candidate's file is committed."""
    models = models_of(arch)
    if len(models) == 1:
        return models[0], method
    return _choose(results, method_candidates(arch, method))


def chosen_file(results: Path, arch: str = "resnet20a") -> Path | None:
    """The test-split campaign of the row chosen on the validation split: its 100-chip run where
    committed, else its 20-chip one; None without a choice or a committed campaign."""
    choice = chosen(results, arch)
    if choice is None:
        return None
    return next((p for p in (path(results, *choice, protocol=True), path(results, *choice)) if p.is_file()), None)


def protocol_rows(results: Path, arch: str = "resnet20a") -> list[tuple[str, str]]:
    """(model, method) of ARCH whose test-split campaign may run on the paper's 100 chips (issue
    36: "each model's best row under each method"). With placement + calibration: every eligible
    candidate on the validation split that is a method of the test table (``METHODS``), since any
    of them may be chosen, and one chosen before a later candidate moved the choice keeps its run
    (ResNet20's `resnet20-dc30-ft10` with measured targets). Every other method (PER_METHOD:
    per-rate BN, per-chip calibration, placement alone): ``chosen_for``, the table's one model
    (VGG13-BN) or the model chosen on the validation split for that method (ResNet20); none for a
    method whose choice is not made yet."""
    rows = [(m, v) for m, v in candidates(arch) if eligible(m) and v in METHODS]
    return rows + [row for v in PER_METHOD if (row := chosen_for(results, arch, v)) is not None and row not in rows]


def _mean_at(p: Path, rate: float) -> str:
    """A campaign's mean accuracy (%) at SA1 ``rate``, or n/a."""
    mean = losses.means(p).get(rate)
    return "n/a" if mean is None else f"{100 * mean:.2f}"


def standard_error(best) -> float:
    """The standard error (points) of a campaign's mean at the rate of its largest loss."""
    rate = max((r for r in losses.RATES if r in best.plain), key=best.plain.get)
    summary = next(e["summary"] for e in losses.read(best.path)["rates"] if round(e["sa1"], 6) == rate)
    return 100 * summary["std"] / summary["n"] ** 0.5


VAL_NOTES = {"resnet20a": VAL_NOTE, "vgg13": VGG13_VAL_NOTE}  # under each choice, by architecture


VAL_HEADER = ["| model | method | chips x images | plain fault-free | loss vs plain fault-free, 10 / 20 / 30% "
              "| mean at 30% SA1 | chosen | file |", "|---|---|---|---|---|---|---|---|"]


def _val_row(results: Path, model: str, method: str, choice: tuple[str, str] | None) -> str:
    """One candidate's row of a validation table (VAL_HEADER): its losses there, and whether it is
    CHOICE ("not eligible" where it trained on the validation images)."""
    p = val_path(results, model, method)
    if not p.is_file():
        return f"| `{model}` | {METHODS.get(method, method)} | {NOT_RUN} | | | | | |"
    cfg, plain = losses.read(p)["config"], losses.plain_accuracy(p)
    return (f"| `{model}` | {losses.method(p)} | {cfg['runs']} x {cfg['images']:,} | "
            + ("n/a" if plain is None else f"{100 * plain:.2f}")
            + f" | **{losses.fmt_losses(losses.losses(p)[0], losses.RATES)}** | {_mean_at(p, 0.3)} | "
            + ("yes" if choice == (model, method) else "" if eligible(model) else "not eligible")
            + f" | [{p.name}](results/{VAL_FOLDER}/{p.name}) |")


def validation_table(results: Path, arch: str = "resnet20a") -> str:
    title = HEADINGS[arch].split(",")[0]  # "ResNet20", "VGG13-BN"
    lines = [f"### Chosen on the validation split ({title}, width 1, with placement)", "",
             "The candidates on the 5,000 validation images (`rram validate ART --split val --place --calibrate "
             "256 [--calibration-targets measured --bn-rate 0] --sa1 0,0.1,0.2,0.3 --runs 10 --seed 0`), each "
             "loss against the candidate's plain fault-free accuracy on the same images (`MODEL.plain.json`: "
             "the rate-0 artifact, no calibration, no placement). The smallest largest loss is chosen by the "
             "one-standard-error rule: of the candidates within one standard error of the best (between "
             "chips, at the best one's worst rate), the cheapest, the fewest calibration images "
             "(benchmarks/study_placement.py `chosen`).", "",
             *VAL_HEADER]
    choice = chosen(results, arch)
    lines += [_val_row(results, model, method, choice) for model, method in candidates(arch)]
    if choice is not None:
        full = path(results, *choice, protocol=True)
        twenty = ("its 20-chip row above" if path(results, *choice).is_file()
                  else f"its 20-chip campaign is {NOT_RUN}")
        lines += ["", f"Chosen: `{choice[0]}`, {losses.method(val_path(results, *choice))}. On the test split: "
                  + (f"[{full.name}](results/{FOLDER}/{full.name}) (the paper's 100 chips); {twenty}."
                     if full.is_file() else f"{twenty}; its 100-chip campaign is {NOT_RUN}.")]
    return "\n".join(lines + ["", VAL_NOTES[arch]] + _per_method_lines(results, arch))


def _per_method_lines(results: Path, arch: str) -> list[str]:
    """The per-method choice on the validation split (``chosen_for``), for a table of several models:
    each PER_METHOD method's eligible models, their losses there and which is chosen; its row's
    100-chip campaign on the test split where committed."""
    if len(models_of(arch)) == 1:
        return []
    title = HEADINGS[arch].split(",")[0]
    lines = ["", f"### Chosen on the validation split, per method ({title}, width 1)", "",
             "Each other method's headline row (issue 36: each model's best row under each method, the paper's "
             "100 chips for it) is chosen the same way among the eligible models, each run with the method's own "
             "options on the 5,000 validation images (`rram validate ART --split val --bn-rate auto [--calibrate "
             "256 | --place] --sa1 0,0.1,0.2,0.3 --runs 10 --seed 0`).", "",
             *VAL_HEADER]
    for method in PER_METHOD:
        choice = chosen_for(results, arch, method)
        lines += [_val_row(results, model, method, choice) for model, method in method_candidates(arch, method)]
    lines += ["", "Placement here keeps the per-rate BN of the test split's `placement` rows, whose BN of the "
              "highest rate collapses on placed chips at the higher fault rates, on both splits; placement alone "
              "on the rate-0 artifact is the candidate `placed-rate0` of the table above."]
    chosen_rows = [(v, c) for v in PER_METHOD if (c := chosen_for(results, arch, v)) is not None]
    if chosen_rows:
        lines.append("")
        for method, choice in chosen_rows:
            full = path(results, *choice, protocol=True)
            lines.append(f"- {METHODS[method]}: `{choice[0]}`; on the test split "
                         + (f"[{full.name}](results/{FOLDER}/{full.name}) (the paper's 100 chips)."
                            if full.is_file() else f"its 20-chip row above; its 100-chip campaign is {NOT_RUN}."))
    return lines
