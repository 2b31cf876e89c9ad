"""The Ray runner: the same graph file on a Ray cluster (or a local Ray started on demand).

Each placement group (each replica) becomes an actor asking for the resources its group
declares (`gpus`, `cpus`, `resources`; a GPU only where the cluster has GPUs) and runs
exactly as a process of the process runner does (`runners.group.GroupProcess`). Edges
between groups carry object references, so frames move through Ray's object store
(zero-copy on one node); all the queues of a run live in one asyncio actor (`EdgeHub`).
Failure handling and reports are every runner's (`runners.session`); at the end every actor
of the run is killed, so nothing is left running on the cluster.

Each actor keeps its trace part and temporary-file records in a scratch folder on its own
node and hands the trace back to the driver at the end. Inputs and outputs are paths: on a
multi-node cluster they must be on storage every node sees.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import threading
import time

import ray

from .errors import RunError
from .group import GroupLaunch, GroupProcess
from .report import RunOptions
from .runtime import remove_registered_temps, trace_part
from .session import Placement, RunSession, drain
from .stall import progress_state, stall_error
from .transport import edge_queues

COLLECT_TIMEOUT_S = 15.0    # for each actor to hand back its trace at the end
STALL_ANSWER_S = 3.0        # for each actor to say what its stages do when the run stalls
PUT_AHEAD = 4               # puts in flight per sender and edge
CONTROL_BATCH = 128         # the driver takes up to half this many control messages a call


class RayCodec:
    """Messages as object references (wrapped, so Ray does not resolve them in transit)."""

    @staticmethod
    def encode(msg):
        return (ray.put(msg),)

    @staticmethod
    def decode(data):
        return ray.get(data[0])


class EdgeHub:
    """Every bounded queue of one run (edges, and the unbounded control queue)."""

    def __init__(self, sizes: dict):
        self.queues = {key: asyncio.Queue(maxsize=size) for key, size in sizes.items()}
        # an async actor may run one caller's calls out of order: puts carry their number
        # and wait for their turn (each edge queue has one sender)
        self.turn = {key: 0 for key in sizes}
        self.turns = {key: asyncio.Condition() for key in sizes}

    async def put(self, key: str, item, seq: int | None = None) -> None:
        if seq is None:
            await self.queues[key].put(item)
            return
        cond = self.turns[key]
        async with cond:
            await cond.wait_for(lambda: self.turn[key] == seq)
        await self.queues[key].put(item)
        async with cond:
            self.turn[key] += 1
            cond.notify_all()

    async def get(self, key: str, timeout: float | None):
        try:
            return await asyncio.wait_for(self.queues[key].get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty() from None

    async def get_many(self, key: str, most: int, timeout: float | None) -> list:
        """One message (waiting up to `timeout`), then whatever else is already queued, up
        to `most`: one call instead of one per message when a backlog has built up."""
        q = self.queues[key]
        out = [await self.get(key, timeout)]
        while len(out) < most and not q.empty():
            out.append(q.get_nowait())
        return out

    async def qsize(self, key: str) -> int:
        return self.queues[key].qsize()


class HubQueue:
    """One of the hub's queues, with the blocking put/get/qsize of a multiprocessing queue.
    Every call is a round trip, so a put returns once the put `PUT_AHEAD` calls earlier has
    landed (the edge holds at most that many more than its size), and a get takes what is
    queued, up to half the queue's size, in one call."""

    def __init__(self, hub, key: str, size: int = 0, ordered: bool = True):
        self.hub, self.key = hub, key
        self.most = max(1, size // 2)
        self.seq = 0 if ordered else None
        self.pending: list = []         # puts sent, not yet known to have landed
        self.got: list = []             # messages taken from the hub, not yet handed out

    def put(self, item) -> None:
        self.pending.append(self.hub.put.remote(self.key, item, self.seq))
        if self.seq is not None:
            self.seq += 1
        if len(self.pending) > PUT_AHEAD:
            ray.get(self.pending.pop(0))

    def flush(self) -> None:
        ray.get(self.pending)
        self.pending.clear()

    def get(self, timeout: float | None = None):
        if not self.got:
            self.got = ray.get(self.hub.get_many.remote(self.key, self.most, timeout))
        return self.got.pop(0)

    def get_nowait(self):
        return self.get(0.0)

    def qsize(self) -> int:
        return ray.get(self.hub.qsize.remote(self.key))


class _Actor:
    """A placement group's process on the cluster (threaded, so `go` and `collect` reach it
    while it runs). On a node other than the driver's, the run's scratch folder exists only
    here: the actor makes it, hands its trace back and removes it."""

    def __init__(self):
        self.go = threading.Event()
        self.launch: GroupLaunch | None = None
        self.group: GroupProcess | None = None
        self.remote = False

    def start(self) -> None:
        self.go.set()

    def run(self, launch: GroupLaunch, driver_node: str) -> int:
        self.launch, self.remote = launch, ray.get_runtime_context().get_node_id() != driver_node
        os.makedirs(launch.run_dir, exist_ok=True)
        launch.go = self.go
        self.group = GroupProcess(launch)
        code = self.group.run()
        for q in [q for qs in launch.queues.values() for q in qs] + [launch.control]:
            # everything sent has landed before we report back (unless the run is torn down)
            with contextlib.suppress(Exception):
                q.flush()
        return code

    def collect(self, failed: bool) -> str | None:
        """After the run: this group's trace (text); a failed run's temporary files removed."""
        if self.launch is None:
            return None
        run_dir = self.launch.run_dir
        if failed:
            remove_registered_temps(run_dir)
        trace = getattr(self.group, "trace", None)
        if trace is not None:           # a stopped run's groups may still hold spans
            trace.flush()
        part = trace_part(run_dir, self.launch.group, self.launch.replica)
        if os.path.exists(part):
            with open(part) as f:
                return f.read()
        return None

    def stall_report(self) -> list:
        """What each stage's thread is doing now (asked by the stall watchdog; runs beside
        `run`, the actor being threaded)."""
        return self.group.stall_report() if self.group is not None else []

    def clean(self) -> None:
        """Once every actor's trace is collected: the scratch folder on a remote node goes."""
        if self.launch is not None and self.remote:
            shutil.rmtree(self.launch.run_dir, ignore_errors=True)


_init_lock = threading.Lock()


def actor_options(group, cluster: dict) -> tuple[dict, str | None]:
    """Ray actor options for a placement group's declared resources, and what the cluster
    (its total resources) cannot give, if anything. A GPU group on a cluster without GPUs
    runs on CPU (its stages' `device: auto` picks the CPU)."""
    opts = {"num_cpus": group.cpus or 0, "max_concurrency": 4,
            "num_gpus": (group.gpus or 0) if cluster.get("GPU", 0) > 0 else 0}
    if group.resources:
        opts["resources"] = dict(group.resources)
    unmet = []
    for key, amount in {"GPU": opts["num_gpus"], "CPU": opts["num_cpus"], **group.resources}.items():
        has = cluster.get(key, 0)
        if amount > has:
            unmet.append(f"{amount} {key}(s), the cluster has {has:g}" if key in ("GPU", "CPU") else
                         f"resource '{key}': {amount:g}, the cluster has {has:g} "
                         f"(start nodes with `ray start --resources '{{\"{key}\": N}}'`)")
    return opts, ", ".join(unmet) or None


def init_ray(address: str | None = None):
    """Connect to the cluster at `address`, or start a local Ray (once per process)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    with _init_lock:
        if ray.is_initialized():
            return ray
        kwargs = {"ignore_reinit_error": True, "include_dashboard": False,
                  "log_to_driver": True, "configure_logging": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = max(os.cpu_count() or 1, 1)
        ray.init(**kwargs)
        return ray


class RayActors(Placement):
    """Every group (each replica) in an actor, the edges in one hub actor (Ray connected)."""

    worker = "actor"

    def __init__(self, graph, run_id, run_dir, reporter, driver_node=None):
        super().__init__(graph, run_id, run_dir, reporter)
        keys = edge_queues(graph, lambda e, i: (f"{e.name}#{i}", e.queue_size))
        sizes = dict([k for ks in keys.values() for k in ks], control=0)     # 0: unbounded
        hub = ray.remote(EdgeHub).options(num_cpus=0, max_concurrency=10_000).remote(sizes)
        self.handles = [hub]             # every actor of the run (all killed at the end)
        self.queues = {name: [HubQueue(hub, *k) for k in ks] for name, ks in keys.items()}
        self.control = HubQueue(hub, "control", CONTROL_BATCH, ordered=False)   # many senders
        self.driver_node = driver_node or ray.get_runtime_context().get_node_id()
        self.actors, self.futures, self.exits = {}, {}, {}
        self.left: list | None = None   # what the workers said last, once the hub is gone

    def launch(self) -> RunError | None:
        cluster = ray.cluster_resources()
        options = {gname: actor_options(group, cluster) for gname, group in self.graph.groups.items()}
        unmet = [f"group '{g}': {why}" for g, (_, why) in options.items() if why]
        if unmet:       # Ray would wait forever for resources no node has
            return RunError("resources", "the cluster cannot place this graph: " + "; ".join(unmet))
        actor_cls = ray.remote(_Actor)
        for key in self.workers:
            launch = GroupLaunch(self.graph, *key, self.run_id, self.queues, self.control,
                                 self.run_dir, self.trace, os.getpid(), codec=RayCodec())
            actor = self.actors[key] = actor_cls.options(**options[key[0]][0]).remote()
            self.handles.append(actor)
            self.futures[key] = actor.run.remote(launch, self.driver_node)
        return None

    def events(self, timeout: float):
        return iter(self.left) if self.left is not None else drain(self.control, timeout)

    def go(self) -> None:
        for actor in self.actors.values():
            actor.start.remote()

    def ended(self) -> dict:
        pending = {ref: key for key, ref in self.futures.items() if key not in self.exits}
        if pending:
            finished, _ = ray.wait(list(pending), timeout=0, num_returns=len(pending))
            for ref in finished:
                try:
                    self.exits[pending[ref]] = ray.get(ref)
                except Exception as exc:       # the actor died (killed, node lost)
                    self.exits[pending[ref]] = exc
        return self.exits

    def lost(self, key, how) -> RunError:
        snap = self.reporter.processes.get(key) or {}
        notes = [f"stage '{s['stage']}' had reached item {s['last_index']}"
                 for s in snap.get("stages", []) if s.get("last_index") is not None]
        why = (f"died ({type(how).__name__})" if isinstance(how, BaseException)
               else "stopped without reporting")
        return self.lost_error(key, why, notes)

    def progress(self):
        # actors still being placed or starting have sent nothing yet: that is Ray's
        # scheduling, not a stall of the graph, so the clock starts once all have reported
        if len(self.reporter.processes) < len(self.workers):
            return None
        return progress_state(self.reporter.processes)

    def stall_error(self, timeout: float) -> RunError:
        refs = {key: self.actors[key].stall_report.remote() for key in self.workers
                if key not in self.exits}
        reports, silent = [], []
        deadline = time.monotonic() + STALL_ANSWER_S
        for key, ref in refs.items():
            try:
                reports += ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                silent.append(f"{self.name(key)} did not answer")
        return stall_error(timeout, reports, silent, self.graph)

    def stop_all(self, failed: bool) -> None:
        """Take what is left on the control queue, hand every trace back (a failed run's
        temporary files removed where they were written), then kill every actor."""
        try:
            self.left = list(drain(self.control))
            self._collect(failed)
        except Exception as exc:        # never in the way of removing the actors
            self.left = self.left or []
            self.reporter.warn("runner", f"could not collect the groups' traces: {exc}")
        for handle in self.handles:
            with contextlib.suppress(Exception):
                ray.kill(handle)

    def _collect(self, failed: bool) -> None:
        """Traces of every group into the driver's scratch folder (from whichever node ran
        it), and a failed run's temporary files removed where they were written."""
        refs = {key: actor.collect.remote(failed) for key, actor in self.actors.items()}
        texts = {}
        for key, ref in refs.items():
            with contextlib.suppress(Exception):    # the actor died with its node or was killed
                texts[key] = ray.get(ref, timeout=COLLECT_TIMEOUT_S)
        with contextlib.suppress(Exception):        # remote scratch folders go once all is collected
            ray.get([actor.clean.remote() for actor in self.actors.values()], timeout=COLLECT_TIMEOUT_S)
        os.makedirs(self.run_dir, exist_ok=True)
        for key, text in texts.items():
            if text:
                with open(trace_part(self.run_dir, *key), "w") as f:
                    f.write(text)


class RayRunner(RunSession):
    name = "ray"
    driver_node: str | None = None      # this process's Ray node (found at run time)

    def __init__(self, graph, options: RunOptions | None = None, address: str | None = None):
        super().__init__(graph, options)
        self.address = address
        self.handles: list = []

    def run(self):
        init_ray(self.address)      # first: Ray's SIGTERM handler gives way to the run's
        return super().run()

    def place(self, run_id: str, run_dir: str) -> RayActors:
        place = RayActors(self.graph, run_id, run_dir, self.reporter, self.driver_node)
        self.handles = place.handles
        return place
