"""The pass contract: a pass returns PassResult(graph, modified) and declares what it requires
(checked before it runs: unmet, it is refused) and what it ensures (checked after it: violated, a
bug). The pipeline's preparations (BN rate, upgrade-opset for `standard`) follow the declarations."""
from __future__ import annotations

import pathlib

import pytest
from onnx import helper

import passes
from passes import bn_rates, catalog, fold_bn, pad_1x1, upgrade_opset
from passes.registry import Condition, PassResult
from toolchain.cli import main as rram

from _passes_util import conv_bn_model, init, make_model, vi

NEVER = Condition("a condition no graph meets", lambda graph, ctx: "it never holds")


@pytest.fixture
def custom():
    """Register test passes; unregistered afterwards."""
    names = []

    def add(name, fn, **kw):
        passes.register(name, "test pass", **kw)(fn)
        names.append(name)
        return name
    yield add
    for n in names:
        passes.unregister(n)


def test_unmet_requirement_refuses_the_pass_in_one_line(custom, tmp_path, capsys):
    ran = []
    name = custom("test-needs", lambda g, c: ran.append(1), requires=(NEVER,))
    with pytest.raises(passes.PassError) as e:
        passes.run(conv_bn_model(), ["fold-bn", name], verify="off")
    assert str(e.value) == "pass 'test-needs' requires a condition no graph meets: it never holds"
    assert not ran
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    src.write_bytes(conv_bn_model().SerializeToString())
    assert rram(["passes", str(src), str(out), "--passes", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rram: error: pass 'test-needs' requires") and not out.exists()


def test_broken_guarantee_is_caught(custom):
    """A pass that claims fold-bn's guarantee without folding anything is a bug, reported as such."""
    name = custom("test-fake-fold", lambda g, c: PassResult(g, False), ensures=(fold_bn.NO_BN,))
    with pytest.raises(passes.PassError, match=r"^pass 'test-fake-fold' broke its guarantee no BatchNormalization "
                                               r"left but the ones reported kept: 1 BatchNormalization left, 0 "
                                               r"reported kept \(a bug in the pass\)$"):
        passes.run(conv_bn_model(), [name], verify="off")
    custom("test-never", lambda g, c: PassResult(g, False), ensures=(NEVER,))
    with pytest.raises(passes.PassError, match="'test-never' broke its guarantee"):
        passes.run(conv_bn_model(), ["test-never"], verify="off")


def test_kept_nodes_do_not_break_the_guarantee():
    """fold-bn and pad-1x1-to-3x3 leave what they cannot handle (with a warning): no violation."""
    m = conv_bn_model(k=1)
    m.graph.node[0].attribute.append(helper.make_attribute("dilations", [2, 2]))  # pad skips it
    m.graph.output.append(vi("c", ["N", 8, 9, 9]))  # the Conv's output is also the model's: fold-bn keeps the BN
    res = passes.run(m, ["fold-bn", "pad-1x1-to-3x3"], verify="off")
    assert res.stats == {"fold-bn.kept": 1, "pad-1x1-to-3x3.skipped": 1}
    assert res.modified == {"fold-bn": False, "pad-1x1-to-3x3": False}


def test_modified_is_reported(custom):
    res = passes.run(conv_bn_model(k=1, pads=[0, 0, 0, 0]), ["summary", "standard", "upgrade-opset"], pad_1x1=True)
    assert res.modified == {"summary": False, "eliminate-identity": False, "fold-constants": False,
                            "fold-bn": True, "pad-1x1-to-3x3": True, "eliminate-dead": False,
                            "upgrade-opset": False}
    # not trained padded (no rram.model saying so), not asked: `standard` leaves the 1x1 kernel
    res = passes.run(conv_bn_model(k=1, pads=[0, 0, 0, 0]), "standard")
    assert "pad-1x1-to-3x3" not in res.modified and not res.padding["applied"] and res.padding["convs_1x1"] == 1
    # An older pass returning None rewrote the graph in place: taken as modified.
    custom("test-legacy", lambda g, c: None)
    assert passes.run(conv_bn_model(), ["test-legacy"], verify="off").modified == {"test-legacy": True}


def test_a_pass_must_return_a_pass_result(custom):
    custom("test-bad-return", lambda g, c: g)
    with pytest.raises(passes.PassError, match="'test-bad-return' returned Graph, not a PassResult"):
        passes.run(conv_bn_model(), ["test-bad-return"], verify="off")


def test_built_in_declarations():
    known = passes.available()
    assert known["fold-bn"].requires == (bn_rates.SELECTED,)
    assert known["fold-bn"].ensures == (fold_bn.NO_BN,)
    assert known["pad-1x1-to-3x3"].ensures == (pad_1x1.NO_1X1_CONV,)
    assert known["upgrade-opset"].ensures == (upgrade_opset.OPSET_CURRENT,)
    assert catalog.provider(upgrade_opset.OPSET_CURRENT) is known["upgrade-opset"]
    assert catalog.requirements("standard") == catalog.STANDARD_REQUIRES
    assert catalog.requirements(["fold-bn"]) == ()
    # The pipeline asks the declarations, never a pass's name.
    source = (pathlib.Path(passes.__file__).parent / "pipeline.py").read_text()
    assert all(f'"{n}"' not in source for n in known)


def test_a_pass_requiring_one_bn_rate_gets_the_default(custom):
    """Any pass that requires bn_rates.SELECTED gets the rate selection fold-bn gets."""
    m = conv_bn_model()
    m.graph.initializer.extend([init(f"{n}@rate=0.1", _values(m, n)) for n in ("bn.mean", "bn.var")])
    for k, v in (("rram.bn_stats_rates", '["0.1"]'), ("rram.bn_rate_default", "0.1")):
        m.metadata_props.add(key=k, value=v)
    seen = []
    name = custom("test-one-rate", lambda g, c: seen.append(dict(c.metadata)) or PassResult(g, False),
                  requires=(bn_rates.SELECTED,))
    res = passes.run(m, [name], verify="off")
    assert res.bn_rate == "0.1" and "rram.bn_stats_rates" not in seen[0]
    assert res.warnings == ["test-one-rate folds the default BN statistics (rate 0.1); choose another rate "
                            "with --bn-rate"]


def test_standard_establishes_its_opset_requirement():
    """`standard` on an older opset: the pass that ensures opset >= 17 goes first; a list that
    already holds it, or a model already current, gets none added."""
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [], [vi("x", [1, 2])], [vi("y", [1, 2])], opset=13)
    assert passes.run(m, "standard").passes[0] == "upgrade-opset"
    assert passes.run(m, "standard,upgrade-opset").passes == [*passes.STANDARD, "upgrade-opset"]
    assert passes.run(m, "eliminate-dead").passes == ["eliminate-dead"]
    current = make_model([helper.make_node("Relu", ["x"], ["y"])], [], [vi("x", [1, 2])], [vi("y", [1, 2])])
    assert passes.run(current, "standard").passes == list(passes.STANDARD)


def _values(model, name):
    from onnx import numpy_helper
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
