"""Registry of graph passes by name. A pass is ``fn(graph: gs.Graph, ctx: PassContext) -> None``
that rewrites the graph in place; the pipeline runs cleanup, toposort and shape inference after it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import PassError


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable
    help: str


_REGISTRY: dict[str, Pass] = {}

# The order a deployment build uses: clean, fold, then reshape kernels for the crossbar mapper.
# `upgrade-opset` goes first when the input's opset is older (pipeline.run).
STANDARD = ("eliminate-identity", "fold-constants", "fold-bn", "pad-1x1-to-3x3", "eliminate-dead")


def register(name: str, help: str):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} registered twice")
        _REGISTRY[name] = Pass(name, fn, help)
        return fn
    return deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    # Importing the modules registers their passes.
    from . import cleanup, embed_normalization, fold_bn, pad_1x1, summary, upgrade_opset  # noqa: F401


def available() -> dict[str, Pass]:
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def resolve(names) -> list[Pass]:
    """Pass names (a list or a comma-separated string; ``standard`` expands) -> Pass objects."""
    _load_builtin()
    if isinstance(names, str):
        text, names = names, [p.strip() for p in names.split(",")]
        if not all(names):
            raise PassError(f"empty pass name in {text!r}")
    out: list[Pass] = []
    for n in names:
        if n == "standard":
            out.extend(_REGISTRY[s] for s in STANDARD)
        elif n in _REGISTRY:
            out.append(_REGISTRY[n])
        else:
            raise PassError(f"unknown pass {n!r}: choose from {', '.join(sorted(_REGISTRY))} "
                            f"(or 'standard')")
    if not out:
        raise PassError("no passes given")
    return out
