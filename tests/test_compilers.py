"""The artifact in real compilers (issue 14, docs/deploying.md): the shared ResNet20's float model
after passes and its QDQ ``model.onnx`` (paper preset) give in OpenVINO (CPU plugin, the documented
settings) and Apache TVM (Relax ONNX frontend, llvm) the argmax of onnxruntime and logits within
1e-4 relative, on 64 real test images. Skipped only where a compiler is not installed (the
``compilers`` extra: ``pip install -e '.[compilers]'``)."""
from __future__ import annotations

import onnx
import pytest

from _compilers import OPENVINO_EXACT, compare, onnxruntime_logits, openvino_compile, openvino_logits, tvm_logits
from conftest import SHARED_DATA, SHARED_RESNET20

pytestmark = pytest.mark.slow  # the real data and model

IMAGES = 64
TOL = 1e-4  # max |diff| / max |logit|; measured here: 3.7e-7 (OpenVINO), 5.7e-7 (TVM)
MODELS = ("float", "qdq", "qdq-embedded")


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """export -> passes standard -> quantize paper through the CLI, and the same with the
    normalisation embedded (passes standard,embed-normalization): {name: (model path, inputs)}."""
    if not SHARED_RESNET20.is_file() or not (SHARED_DATA / "test").is_dir():
        pytest.skip(f"the shared ResNet20 or CIFAR-10 is missing ({SHARED_RESNET20}, {SHARED_DATA})")
    from runtime.metadata import Normalization, normalize_images
    from toolchain.cli import main
    from toolchain.data import load_split

    w = tmp_path_factory.mktemp("compilers")
    for argv in (["export", SHARED_RESNET20, "--model", "resnet20", "--out", w / "r20.onnx"],
                 ["passes", w / "r20.onnx", w / "r20.passes.onnx", "--passes", "standard"],
                 ["quantize", w / "r20.passes.onnx", w / "art", "--preset", "paper"],
                 ["passes", w / "r20.onnx", w / "r20.emb.onnx", "--passes", "standard,embed-normalization"],
                 ["quantize", w / "r20.emb.onnx", w / "art-emb", "--preset", "paper"]):
        assert main([str(a) for a in argv]) == 0, argv
    images = load_split(SHARED_DATA, "test").subset(IMAGES).images
    meta = {p.key: p.value for p in onnx.load(w / "r20.passes.onnx").metadata_props}
    x = normalize_images(images, Normalization.from_metadata(meta, "the model"))  # as rram validate does
    unit = normalize_images(images, None)  # images in [0, 1]: the embedded model normalises itself
    return {"float": (w / "r20.passes.onnx", x), "qdq": (w / "art" / "model.onnx", x),
            "qdq-embedded": (w / "art-emb" / "model.onnx", unit)}


@pytest.fixture(scope="module")
def reference(flow):
    return {name: onnxruntime_logits(path, x) for name, (path, x) in flow.items()}


def _assert_matches(ref, got):
    c = compare(ref, got)
    assert c["argmax_agreement"] == 1.0, c
    assert c["max_rel_diff"] <= TOL, c


def test_embedded_artifact_is_the_same_model(flow, reference):
    # The [0, 1] model fed images gives the normalised model's logits: the comparisons below
    # cover a compiler that reads no metadata at all.
    _assert_matches(reference["qdq"], reference["qdq-embedded"])


@pytest.mark.parametrize("name", MODELS)
def test_openvino_documented_settings(flow, reference, name):
    ov = pytest.importorskip("openvino", reason="OpenVINO not installed (pip install -e '.[compilers]')")
    path, x = flow[name]
    compiled = openvino_compile(path, OPENVINO_EXACT)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 0
    _assert_matches(reference[name], openvino_logits(path, x, compiled=compiled))


@pytest.mark.parametrize("name", MODELS)
def test_tvm_relax_llvm(flow, reference, name):
    pytest.importorskip("tvm", reason="Apache TVM not installed (pip install -e '.[compilers]')")
    path, x = flow[name]
    _assert_matches(reference[name], tvm_logits(path, x, batch=IMAGES))


def _runtime_ops(compiled) -> list[dict]:
    ops = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        ops.append({k: rt[k].astype(str) for k in ("layerType", "runtimePrecision", "originalLayersNames")
                    if k in rt})
    return ops


def test_openvino_defaults_on_this_cpu(flow, reference):
    """What OpenVINO's defaults do to the QDQ model here, asserted so that a change of OpenVINO or
    of the CPU shows up. Two defaults matter (docs/deploying.md): (1) the inference precision is
    bf16 on a CPU with BF16 support (measured elsewhere, AVX512-BF16: logits off by up to 0.36,
    99.6% argmax agreement), f32 otherwise; (2) dynamic quantisation (group size 32) of the
    activations of a layer with compressed int8 weights (the classifier's DequantizeLinear -> Gemm,
    a FullyConnected with i8 weights); on an AVX512 CPU it cost 0.126 of logit, 99.95% agreement."""
    ov = pytest.importorskip("openvino", reason="OpenVINO not installed (pip install -e '.[compilers]')")
    path, x = flow["qdq"]
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    compiled = openvino_compile(path, None)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    got = compare(reference["qdq"], openvino_logits(path, x, compiled=compiled))
    # The classifier runs as a FullyConnected on int8 weights: the layer dynamic quantisation targets.
    fc = [op for op in _runtime_ops(compiled) if op.get("layerType") == "FullyConnected"]
    assert fc and all(op["runtimePrecision"] == "i8" for op in fc), fc
    assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 32  # on by default
    if "BF16" in caps:
        # bf16 by default: not the validated numbers (8 mantissa bits)
        assert hint == ov.Type.bf16
        assert got["max_rel_diff"] > 1e-3, got
    else:
        # This machine (AMD EPYC, AVX2, no AVX512-BF16): f32 by default, and the AVX2 kernels do
        # not quantise the activations dynamically although the group size says 32: measured
        # 3.6e-7, the same as with the documented settings. If a new OpenVINO starts doing so on
        # AVX2, this fails: update docs/deploying.md.
        assert hint == ov.Type.f32
        assert got["argmax_agreement"] == 1.0 and got["max_rel_diff"] <= TOL, got
