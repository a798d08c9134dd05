"""The pipeline report's conclusions (issue 35) are computed from the campaign's numbers: change a
number and the sentence changes; a campaign below the stated size is called a smoke test; the
deployment pick follows the means; every box of the figure is drawn, the flat ones too."""
import copy

from toolchain.pipeline import conclusions as C


def doc(clean, rates, n=5):
    """A results document: ``rates`` maps SA1 -> (BN rate, [chip accuracies])."""
    out = {"config": {"images": 2000, "runs": n}, "clean": {f"rate-{k}": v for k, v in clean.items()}, "rates": []}
    for sa1, (bn, accs) in rates.items():
        mean = sum(accs) / len(accs)
        sd = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else None
        half = None if sd is None else 2.776 * sd / len(accs) ** 0.5
        out["rates"].append({"sa1": sa1, "model": f"rate-{bn}", "runs": {str(i): {"accuracy": a} for i, a in
                                                                       enumerate(accs)},
                             "summary": {"n": len(accs), "mean": mean, "std": sd, "min": min(accs), "max": max(accs),
                                         "ci95": None if half is None else [mean - half, mean + half]}})
    return out


PLAIN = doc({"0.0": 0.818, "0.1": 0.62}, {0.0: ("0.0", [0.818] * 5), 0.1: ("0.1", [0.43, 0.52, 0.57, 0.62, 0.70])})
CAL = doc({"0.0": 0.8165}, {0.0: ("0.0", [0.8165] * 5), 0.1: ("0.1", [0.74, 0.745, 0.75, 0.755, 0.76])})
BASE = doc({"0.0": 0.7885, "0.1": 0.5345}, {0.0: ("0.0", [0.7885] * 5), 0.1: ("0.1", [0.32, 0.45, 0.5, 0.55, 0.63])})


def series(plain=PLAIN, cal=CAL, base=BASE):
    return [C.Series("drop-connect p=0.1", "fault-aware", False, plain),
            C.Series("drop-connect p=0.1 + per-chip calibration", "fault-aware", True, cal),
            C.Series("baseline", "baseline", False, base)]


def test_the_sentence_says_the_numbers_and_changes_with_them():
    s = series()
    text = C.sentence(s[0], 2000, 256, None)
    assert "at SA1 10% the mean of 5 chips is 56.80%" in text and "from 43.00% to 70.00%" in text
    assert "25.00 points below its fault-free 81.80%" in text
    changed = copy.deepcopy(PLAIN)
    changed["rates"][1]["summary"]["mean"] = 0.6
    assert "the mean of 5 chips is 60.00%" in C.sentence(series(plain=changed)[0], 2000, 256, None)


def test_smoke_test_below_the_stated_size_and_not_above():
    s = series()[0]
    assert "**A smoke test**: 5 chips x 2,000 images is below the 20 chips x 10,000 images" in \
        C.sentence(s, 2000, 256, None)
    big = doc({"0.0": 0.818}, {0.1: ("0.1", [0.70 + 0.0005 * i for i in range(C.MIN_CHIPS)])})
    text = C.sentence(C.Series("m", "model", False, big), C.MIN_IMAGES, None, None)
    assert "smoke test" not in text and "Trustworthy to ±" in text


def test_calibration_effect_and_its_fault_free_cost_are_computed():
    s = series()
    text = C.sentence(s[1], 2000, 256, s[0])
    assert "raises the mean at SA1 10% by 18.20 points" in text  # 75.00 - 56.80
    assert "costs 0.15 points on a fault-free chip" in text and "only 256 images" in text


def test_deploy_names_the_best_artifacts_and_links_the_hand_off_doc():
    text = C.deploy_sentence(series(), ["0.0", "0.1"], 256, "../../docs/deploying.md")
    assert "`fault-aware/art/rate-0.1/`" in text and "rram calibrate --fault-map CHIP --calibrate 256" in text
    assert "[docs/deploying.md](../../docs/deploying.md)" in text and "best mean at SA1 10%, 75.00%" in text
    better_base = doc({"0.0": 0.80}, {0.1: ("0.1", [0.90] * 2 + [0.91] * 3)})
    text = C.deploy_sentence(series(base=better_base), ["0.0", "0.1"], 256, "d.md")
    assert "the baseline artifacts (`baseline/art/rate-0.0/`" in text and "calibrate" not in text.split(";")[0]


def test_next_run_is_sized_from_the_widest_spread():
    text = C.next_sentence(series(), 2000, "demo.toml")
    sd = 100 * BASE["rates"][1]["summary"]["std"]
    assert f"`validate.runs = {C.chips_needed(sd)}`" in text and f"sd {sd:.2f} points for baseline" in text
    assert "remove `validate.images`" in text
    assert f"; {C.MIN_CHIPS} suffice for the deployed drop-connect p=0.1 + per-chip calibration)" in text
    assert C.chips_needed(1.0) == C.MIN_CHIPS and C.chips_needed(10.0) == 97  # (1.96 * 10 / 2) ** 2 = 96.04


def test_the_fault_free_bn_rate_column_is_explained_with_its_numbers():
    text = C.fault_free_columns(series(), ["0.0", "0.1"])
    assert "The BN rate 0.1 column (62.00% for drop-connect p=0.1, 53.45% for baseline)" in text
    assert "56.80% for drop-connect p=0.1 at SA1 10%" in text
    assert C.fault_free_columns(series(), ["0.0"]) == ""


def test_every_box_is_drawn_the_flat_fault_free_ones_too(tmp_path, monkeypatch):
    """The 0% boxes (every chip the same perfect chip) had no height and vanished under the dashed
    fault-free line."""
    import runtime.plot as plot

    monkeypatch.setattr(plot, "read_results", lambda p: PLAIN)
    svg = plot.plot_results([tmp_path / "r.json"], tmp_path / "f.svg").read_text()
    assert svg.count('id="flat-box') == 2  # the 0% box, as a bar and a marker; the 10% box is a real box
    flat = doc({"0.0": 0.818}, {0.0: ("0.0", [0.818] * 5), 0.1: ("0.1", [0.5] * 5)})
    monkeypatch.setattr(plot, "read_results", lambda p: flat)
    svg = plot.plot_results([tmp_path / "r.json"], tmp_path / "g.svg").read_text()
    assert svg.count('id="flat-box') == 4
