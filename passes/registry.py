"""The pass type and the registry of passes by name. Imports no pass module (``catalog.py`` does:
importing a pass module registers its passes).

A pass is ``fn(graph: gs.Graph, ctx: PassContext) -> PassResult`` (``None`` is accepted from older
passes: the graph was rewritten in place, ``modified`` unknown and taken as True). It declares the
conditions it ``requires`` (checked before it runs: unmet, it is refused with a PassError) and the
ones it ``ensures`` (checked after it and the pipeline's cleanup: violated, a bug, PassError)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    """A fact about the graph (and its metadata) a pass can require or ensure. ``check(graph, ctx)``
    returns None when it holds, otherwise a short text saying what is wrong."""
    name: str
    check: Callable

    def violation(self, graph, ctx) -> str | None:
        return self.check(graph, ctx)


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the graph (the one it was given, rewritten in place, or a new one) and
    whether it changed anything."""
    graph: object
    modified: bool


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable
    help: str
    requires: tuple = ()  # Conditions that must hold before the pass runs
    ensures: tuple = ()   # Conditions that hold after it (checked: a violation is a bug)


_REGISTRY: dict[str, Pass] = {}


def register(name: str, help: str, *, requires=(), ensures=()):
    """Decorator: register ``fn`` as pass ``name`` with a one-line ``help``."""
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"pass {name!r} registered twice")
        _REGISTRY[name] = Pass(name, fn, help, tuple(requires), tuple(ensures))
        return fn
    return deco


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered() -> dict[str, Pass]:
    """Every pass registered so far, by name (the built-in ones once ``catalog`` is imported)."""
    return dict(sorted(_REGISTRY.items()))
