"""Ray as an executor of campaign tasks (``rram validate --ray``, ``rram sensitivity --ray``;
docs/scaling.md).

The driver (the process that writes the results file) puts the loaded artifact, the images and
the engine settings into Ray's object store once; one actor per ``threads`` CPUs of the cluster
builds its engine from them once, then takes tasks ``fn(engine, cmap, *args)``: the same
functions the local executor runs (``campaign.measure_chip``, ``sensitivity.layer_chip_accuracy``),
so a chip's numbers do not depend on where it ran. The driver keeps a few tasks per actor in
flight, pulling them lazily from the campaign's task iterator, and hands each result to the
campaign as it arrives; the campaign files it by run index, never by completion order.

Ray is an optional dependency (``pip install 'rram-toolchain[ray]'``): it is imported only here,
and only when an executor is made.
"""
from __future__ import annotations

import os
from collections import defaultdict, deque
from contextlib import suppress

from .errors import RuntimeInputError

INSTALL = "pip install 'rram-toolchain[ray]'"
IN_FLIGHT_PER_WORKER = 2  # one running, one queued: an actor never waits for the driver


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeInputError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class _Worker:
    """One Ray actor: an engine built once from the object store's artifact and images, then any
    number of tasks."""

    def __init__(self, artifact, images, labels, engine_kw: dict):
        from .engine import engine_factory

        self.engine = engine_factory(artifact, images, labels, engine_kw)
        self.cmap = artifact.first.cmap

    def call(self, fn, *args):
        return fn(self.engine, self.cmap, *args)

    def ready(self) -> bool:
        return True


def _user_error(error: BaseException) -> RuntimeInputError | None:
    """The RuntimeInputError a worker raised (bad input found where the engine is built), out of
    Ray's wrappers (task error, dead actor), so it reaches the one-line handler; None otherwise."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)  # Ray's wrapper (itself an instance of the cause's class)
        if inner is None and isinstance(error, RuntimeInputError):
            return RuntimeInputError(str(error))
        error = inner or error.__cause__
    return None


CONNECT_TIMEOUT_S = 30  # a Ray cluster address that has not connected by then is refused (one line)


def _remote_address(address: str | None) -> tuple[str, int] | None:
    """(host, port) of the cluster ``ray.init(address)`` connects to over the network: the
    address itself (HOST:PORT or ray://HOST:PORT) or, for None and 'auto', $RAY_ADDRESS; None when
    it starts or finds a local instance ('local', no RAY_ADDRESS) or the address is not HOST:PORT
    (left to Ray, still bounded by CONNECT_TIMEOUT_S when it names a host)."""
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS") or None
    if address is None or address in ("auto", "local"):
        return None
    host, _, port = str(address).removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    try:
        return (host, int(port)) if host and 0 < int(port) < 65536 else None
    except ValueError:
        return None


def _connect_within(ray, address: str | None, remote: tuple[str, int], seconds: float, flag: str) -> None:
    """``ray.init(address)`` to the cluster at ``remote``, given up after ``seconds``: first a TCP
    connection to it (a closed port or an unreachable host fails at once or within the time), then
    Ray's own connection, which otherwise retries for minutes (a port that is not a Ray cluster, a
    head that does not answer). Run in a daemon thread: one that never returns is left behind
    and does not keep the process from exiting."""
    import socket
    import threading
    import time

    deadline = time.monotonic() + seconds
    box: dict = {}

    def connect():
        try:
            with socket.create_connection(remote, timeout=seconds):
                pass
            box["probed"] = True
            ray.init(address=address, include_dashboard=False, logging_level="ERROR")
            box["done"] = True
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=connect, name="rram-ray-connect", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if "error" in box:
        e = box["error"]
        if isinstance(e, OSError) and "probed" not in box:
            raise RuntimeInputError(f"{flag}: cannot reach a Ray cluster at {remote[0]}:{remote[1]} "
                                    f"({e.strerror or type(e).__name__}); is `ray start --head` running there, "
                                    f"and is RAY_ADDRESS right?") from None
        raise e
    if "done" not in box:
        what = "no Ray cluster answered" if "probed" in box else "no answer"
        raise RuntimeInputError(f"{flag}: {what} at {remote[0]}:{remote[1]} within {seconds:g} s; is "
                                f"`ray start --head` running there, and is RAY_ADDRESS right?")


class RayExecutor:
    """``call``/``run`` as ``executors.LocalExecutor``, on Ray actors. ``address``: None connects as
    ``ray.init()`` does (RAY_ADDRESS, else the cluster `ray start` began on this machine, else a
    new local instance); an instance this process already started (``ray.init`` in a script or a
    test) is used as it is; a connection made here is closed at the end (and a local instance it
    started stops)."""

    def __init__(self, address: str | None, artifact, images, labels, engine_kw: dict):
        ray = self.ray = import_ray()
        self.started = False
        if not ray.is_initialized():
            # A local instance started here runs its workers at this process's priority, as a local
            # campaign runs: Ray's default (niceness 15) yields them to every other job of a shared
            # machine. (A cluster `ray start` began keeps its own setting.)
            os.environ.setdefault("RAY_worker_niceness", "0")
            flag = "--ray" if address is None else f"--ray {address}"
            remote = _remote_address(address)
            try:
                if remote is None:  # a new local instance (or this machine's cluster): no network wait
                    ray.init(address=address, include_dashboard=False, logging_level="ERROR")
                else:  # a cluster elsewhere: an address that does not answer is refused in seconds
                    _connect_within(ray, address, remote, CONNECT_TIMEOUT_S, flag)
            except (ConnectionError, ValueError, RuntimeError, OSError) as e:
                text = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise RuntimeInputError(f"{flag}: cannot start or reach Ray: {text}") from None
            self.started = True
        self.actors, self.workers, self.starting = [], [], {}
        try:
            threads = int(engine_kw.get("threads") or 1)  # per worker; the cluster's CPUs make the workers
            cpus = int(ray.cluster_resources().get("CPU", 0))
            if threads > cpus:
                raise RuntimeInputError(f"--threads {threads}: each Ray worker takes that many CPUs, and the "
                                        f"cluster has {cpus}")
            refs = [ray.put(x) for x in (artifact, images, labels, {**engine_kw, "threads": threads})]
            worker = ray.remote(num_cpus=threads)(_Worker)
            self.actors = [worker.remote(*refs) for _ in range(cpus // threads)]
            # a worker takes chips once it is up: one waiting for CPUs (another job's, or a previous
            # campaign's not yet released) must not hold chips back
            self.starting = {actor.ready.remote(): actor for actor in self.actors}
        except BaseException:
            self.close()
            raise

    def _admit(self, block: bool = False) -> None:
        """Workers that are up join ``workers`` (``block``: wait for one when none is)."""
        if not self.starting:
            return
        if block and not self.workers:
            self.ray.wait(list(self.starting), num_returns=1)
        up, _ = self.ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        for ref in up:
            actor = self.starting.pop(ref)
            self._get(ref)  # a worker that failed to start: its error
            self.workers.append(actor)

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            error = _user_error(e)
            if error is not None:
                raise error from None
            died = (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError,
                    self.ray.exceptions.NodeDiedError)
            if isinstance(e, died):  # a worker killed (out of memory, a lost node, by hand): one line
                text = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                raise RuntimeInputError(f"a Ray worker died ({type(e).__name__}: {text}); the chips finished "
                                        f"so far are kept: run the same command with --resume") from None
            raise

    def call(self, fn, *args):
        """One task on the first worker up; its result."""
        self._admit(block=True)
        return self._get(self.workers[0].call.remote(fn, *args))

    def run(self, tasks, finished, *, in_order: bool = False, dropped=None) -> None:
        """Each task ``(key, group, fn, args)`` on the least busy worker; ``finished(key, result)``
        as results arrive, in completion order, or with ``in_order`` in each group's task order,
        skipping those ``dropped(key)`` refuses by then (a rate past its precision target)."""
        ray = self.ray
        load: list[int] = []  # chips in flight per worker
        in_flight: dict = {}  # object ref -> (key, group, worker)
        order: dict = defaultdict(deque)  # group -> its keys in task order (in_order)
        waiting: dict = {}  # key -> result that waits for an earlier one of its group (in_order)
        tasks = iter(tasks)
        more = True
        try:
            while True:
                self._admit(block=not in_flight)
                load += [0] * (len(self.workers) - len(load))
                while more and len(in_flight) < IN_FLIGHT_PER_WORKER * len(self.workers):
                    task = next(tasks, None)
                    if task is None:
                        more = False
                        break
                    key, group, fn, args = task
                    w = load.index(min(load))
                    in_flight[self.workers[w].call.remote(fn, *args)] = (key, group, w)
                    load[w] += 1
                    if in_order:
                        order[group].append(key)
                if not in_flight:
                    return
                # a result, or a worker coming up (it gets chips at the next turn)
                ready, _ = ray.wait(list(in_flight) + list(self.starting), num_returns=1)
                for ref in ready:
                    if ref not in in_flight:
                        continue
                    key, group, w = in_flight.pop(ref)
                    load[w] -= 1
                    result = self._get(ref)
                    if not in_order:
                        finished(key, result)
                        continue
                    waiting[key] = result
                    queue = order[group]
                    while queue and queue[0] in waiting:
                        k = queue.popleft()
                        result = waiting.pop(k)
                        if dropped is None or not dropped(k):
                            finished(k, result)
        finally:
            for ref in in_flight:  # an error or an interrupt: queued chips need not run
                with suppress(Exception):  # finished meanwhile, or its worker is gone: nothing to stop
                    ray.cancel(ref)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors, self.workers, self.starting = [], [], {}
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
