"""The built-in passes (importing their modules registers them), the ``standard`` list and name
resolution. The registry imports no pass module; this module imports them all, so nothing imports
back what imports it."""
from __future__ import annotations

from . import cleanup, embed_normalization, fold_bn, pad_1x1, summary, upgrade_opset  # noqa: F401
from .errors import PassError
from .registry import Condition, Pass, registered
from .upgrade_opset import OPSET_CURRENT

# The order a deployment build uses: clean, fold, then reshape kernels for the crossbar mapper.
# pad-1x1-to-3x3 is part of it where it helps (``pads_1x1``): a model trained with its 1x1 kernels
# padded, or on request; otherwise padding would only multiply those layers' cells by 9.
STANDARD = ("eliminate-identity", "fold-constants", "fold-bn", "pad-1x1-to-3x3", "eliminate-dead")
PAD = "pad-1x1-to-3x3"
# What `standard` needs of its input: an unmet condition is established by the registered pass that
# ensures it, put first (upgrade-opset for an older opset), unless the list already has such a pass.
STANDARD_REQUIRES = (OPSET_CURRENT,)


def available() -> dict[str, Pass]:
    return registered()


def _names(names) -> list[str]:
    if isinstance(names, str):
        text, names = names, [p.strip() for p in names.split(",")]
        if not all(names):
            raise PassError(f"empty pass name in {text!r}")
    return list(names)


def pads_1x1(metadata: dict, requested: bool | None = None) -> bool:
    """Whether ``standard`` pads 1x1 convolutions to 3x3: ``requested`` (True: --pad-1x1), else
    only for a model trained that way, as ``rram export`` records it (``rram.model``'s
    ``"padded"``; an ONNX model from elsewhere records nothing: not padded)."""
    if requested is not None:
        return bool(requested)
    import json

    from runtime.metadata import MODEL_KEY

    try:
        spec = json.loads(metadata.get(MODEL_KEY) or "{}")
    except ValueError:
        return False
    return isinstance(spec, dict) and spec.get("padded") is True


def resolve(names, *, pad: bool = True) -> list[Pass]:
    """Pass names (a list or a comma-separated string; ``standard`` expands, without
    pad-1x1-to-3x3 when ``pad`` is False) -> Pass objects. A pass named explicitly always runs."""
    known = registered()
    out: list[Pass] = []
    for n in _names(names):
        if n == "standard":
            out.extend(known[s] for s in STANDARD if pad or s != PAD)
        elif n in known:
            out.append(known[n])
        else:
            raise PassError(f"unknown pass {n!r}: choose from {', '.join(known)} (or 'standard')")
    if not out:
        raise PassError("no passes given")
    return out


def requirements(names) -> tuple[Condition, ...]:
    """What the pass list asks of the input before its first pass (beyond each pass's ``requires``)."""
    return STANDARD_REQUIRES if "standard" in _names(names) else ()


def provider(condition: Condition) -> Pass | None:
    """The registered pass that ensures ``condition`` (the first by name), or None."""
    return next((p for p in registered().values() if condition in p.ensures), None)


def establish(names, passes: list[Pass], graph, ctx) -> list[Pass]:
    """``passes`` with, first, a pass for each unmet condition of ``requirements(names)`` that no
    pass of the list ensures."""
    first = []
    for cond in requirements(names):
        if cond.violation(graph, ctx) is None or any(cond in p.ensures for p in passes + first):
            continue
        p = provider(cond)
        if p is None:
            raise PassError(f"the passes need {cond.name} ({cond.violation(graph, ctx)}) and no pass ensures it")
        first.append(p)
    return first + passes
