"""``upgrade-opset``: bring a model of an older opset to the opset the passes are written against,
with ONNX's own version converter (``onnx.version_converter``).

Models exported years ago (IR 3 / opset 6-9) carry operator versions that onnxruntime no longer
implements (BatchNormalization-6 with ``is_test``/``spatial``) and that the other passes do not
expect. The converter rewrites each node to its current version (attributes to inputs, removed
attributes dropped) and the pipeline verifies the result numerically like every other pass; the
original is then run with ONNX's reference evaluator where onnxruntime cannot load it (verify.py).
``standard`` runs this pass first whenever the input's opset is older than ``TARGET_OPSET``."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from .errors import PassError
from .graph import PassContext
from .model_io import one_line
from .registry import Condition, PassResult, register

# The opset `rram export` writes and the passes are written against.
TARGET_OPSET = 17


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version (the default domain)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _older(graph: gs.Graph, ctx: PassContext) -> str | None:
    return f"the graph is at opset {graph.opset}" if graph.opset < TARGET_OPSET else None


# Ensured by upgrade-opset; required by `standard` (catalog.STANDARD_REQUIRES), which runs
# upgrade-opset first when an older model lacks it.
OPSET_CURRENT = Condition(f"opset >= {TARGET_OPSET}", _older)


@register("upgrade-opset", f"convert an older model to opset {TARGET_OPSET} (ONNX's version converter)",
          ensures=(OPSET_CURRENT,))
def upgrade_opset(graph: gs.Graph, ctx: PassContext) -> PassResult:
    if graph.opset >= TARGET_OPSET:
        ctx.count("kept")  # already current: nothing to convert
        return PassResult(graph, False)
    before = graph.opset
    model = gs.export_onnx(graph, do_type_check=False)
    # onnx-graphsurgeon keeps weights as initializers only: IR 4 rules (IR 3 wants them as inputs)
    model.ir_version = max(model.ir_version, 4)
    try:
        converted = version_converter.convert_version(model, TARGET_OPSET)
    except Exception as e:
        raise PassError(f"upgrade-opset: ONNX's version converter cannot bring this model from opset {before} "
                        f"to {TARGET_OPSET} ({one_line(e)}); convert it with the tool that made it, or run the "
                        f"passes without upgrade-opset") from None
    new = gs.import_onnx(converted)
    graph.nodes, graph.inputs, graph.outputs = new.nodes, new.inputs, new.outputs
    graph.opset, graph.import_domains = new.opset, new.import_domains
    ctx.count("converted")
    ctx.stats["upgrade-opset.from"] = before
    return PassResult(graph, True)
