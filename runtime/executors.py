"""Executors of campaign tasks: who runs the per-chip functions (``campaign.measure_chip``,
``sensitivity.layer_chip_accuracy``, ``campaign.clean_accuracy``), each called as
``fn(engine, cmap, *args)``. ``LocalExecutor`` runs them in this process; ``ray_executor.RayExecutor``
on Ray actors, with the same interface:

- ``call(fn, *args)``: one task, its result;
- ``run(tasks, finished, in_order=False, dropped=None)``: tasks ``(key, group, fn, args)`` pulled
  lazily from an iterator, each result handed to ``finished(key, result)``; with ``in_order``, in
  each group's task order, skipping the keys ``dropped(key)`` refuses by then;
- a context manager (a Ray connection made for the campaign is closed at its end).

This module knows nothing of campaigns or results files: they import it.
"""
from __future__ import annotations

from .engine import check_normalization, engine_factory


class LocalExecutor:
    """Runs tasks one after the other in this process, pulling each from the (lazy) task iterator
    only when the previous one is recorded, so nothing runs past a stop."""

    def __init__(self, artifact, images, labels, engine_kw: dict):
        self.engine = engine_factory(artifact, images, labels, engine_kw)
        self.cmap = artifact.first.cmap

    def call(self, fn, *args):
        return fn(self.engine, self.cmap, *args)

    def run(self, tasks, finished, *, in_order: bool = False, dropped=None) -> None:
        # one at a time, in order: in_order and dropped are for parallel executors
        for key, _group, fn, args in tasks:
            finished(key, fn(self.engine, self.cmap, *args))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def executor(ray: bool | str | None, artifact, images, labels, engine_kw: dict):
    """This process (``ray`` false), or Ray workers: ``True`` connects as ``ray.init()`` does
    (RAY_ADDRESS, else the cluster `ray start` began on this machine, else a new local instance),
    a string is the cluster's address (``"auto"``, ``"local"``, ``"host:port"``, ``"ray://..."``)."""
    if not ray:
        return LocalExecutor(artifact, images, labels, engine_kw)
    from .ray_executor import RayExecutor

    check_normalization(artifact)  # before starting Ray: the workers would only fail later
    return RayExecutor(None if ray is True else str(ray), artifact, images, labels, engine_kw)
