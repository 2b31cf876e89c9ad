"""The Ray runner: the same graph file on a Ray cluster (or a local Ray started on demand).

Each placement group (each replica of a replicated stage) becomes an actor asking for the
resources its group declares (`gpus`, `cpus`, `resources` in the graph's `groups:`; a GPU
is asked for only where the cluster has GPUs). Inside, the group runs exactly as in a
process of the process runner (`runners.group.GroupProcess`: stages as threads). Edges
between groups are bounded queues carrying object references, so frames move through Ray's
object store (zero-copy on one node); all the queues of a run live in one asyncio actor
(`EdgeHub`) rather than one actor process per edge; senders keep a few puts in flight and
receivers take several queued messages per call, since every call is a round trip. Stats,
progress, the profile, the trace and failure handling are every runner's (`runners.session`):
a stage error or a dead actor stops the job with the stage, the item and the traceback, and
every actor and queue of the run is killed, so nothing is left running on the cluster.

Each actor keeps its trace part and temporary-file records in a scratch folder on its own
node and hands the trace back to the driver at the end (removing a failed run's temporary
files itself). Inputs and outputs are paths: on a multi-node cluster they must be on
storage every node sees.
"""
from __future__ import annotations

import os
import shutil
import threading
import time

from .errors import RunError
from .group import GroupLaunch, GroupProcess
from .report import RunOptions
from .runtime import remove_registered_temps
from .session import Placement, RunSession, drain
from .stall import progress_state, stall_error
from .transport import edge_queue_count

COLLECT_TIMEOUT_S = 15.0    # for each actor to hand back its trace at the end
STALL_ANSWER_S = 3.0        # for each actor to say what its stages do when the run stalls
PUT_AHEAD = 4               # puts in flight per sender and edge
CONTROL_BATCH = 128         # the driver takes up to half this many control messages a call


class RayCodec:
    """Messages as object references (wrapped, so Ray does not resolve them in transit)."""

    @staticmethod
    def encode(msg):
        import ray
        return (ray.put(msg),)

    @staticmethod
    def decode(data):
        import ray
        return ray.get(data[0])


class EdgeHub:
    """Every bounded queue of one run (edges, and the unbounded control queue)."""

    def __init__(self, sizes: dict):
        import asyncio
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
        import asyncio
        from queue import Empty
        try:
            return await asyncio.wait_for(self.queues[key].get(), timeout)
        except asyncio.TimeoutError:
            raise Empty() from None

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

    Each call to the hub is a round trip, so both ends pipeline: a put returns once the
    put `PUT_AHEAD` calls earlier has landed (the hub runs one caller's calls in order, so
    order is kept and the edge holds at most that many messages more than its size), and a
    get takes what is already queued, up to half the queue's size, in one call."""

    def __init__(self, hub, key: str, size: int = 0, ordered: bool = True):
        self.hub, self.key = hub, key
        self.most = max(1, size // 2)
        self.seq = 0 if ordered else None
        self.pending: list = []         # puts sent, not yet known to have landed
        self.got: list = []             # messages taken from the hub, not yet handed out

    def put(self, item) -> None:
        import ray
        self.pending.append(self.hub.put.remote(self.key, item, self.seq))
        if self.seq is not None:
            self.seq += 1
        if len(self.pending) > PUT_AHEAD:
            ray.get(self.pending.pop(0))

    def flush(self) -> None:
        import ray
        ray.get(self.pending)
        self.pending.clear()

    def get(self, timeout: float | None = None):
        import ray
        if not self.got:
            self.got = ray.get(self.hub.get_many.remote(self.key, self.most, timeout))
        return self.got.pop(0)

    def get_nowait(self):
        return self.get(0.0)

    def qsize(self) -> int:
        import ray
        return ray.get(self.hub.qsize.remote(self.key))


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


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
        self.launch, self.remote = launch, _node_id() != driver_node
        os.makedirs(launch.run_dir, exist_ok=True)
        launch.go = self.go
        self.group = GroupProcess(launch)
        code = self.group.run()
        for q in [q for qs in launch.queues.values() for q in qs] + [launch.control]:
            try:
                q.flush()               # everything sent has landed before we report back
            except Exception:           # the hub is gone: the run is being torn down
                pass
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
        part = os.path.join(run_dir, f"trace-{self.launch.group}-{self.launch.replica}.jsonl")
        text = None
        if os.path.exists(part):
            with open(part) as f:
                text = f.read()
        return text

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
    unmet = []
    if opts["num_gpus"] > cluster.get("GPU", 0):
        unmet.append(f"{opts['num_gpus']} GPU(s), the cluster has {cluster.get('GPU', 0):g}")
    if opts["num_cpus"] > cluster.get("CPU", 0):
        unmet.append(f"{opts['num_cpus']} CPU(s), the cluster has {cluster.get('CPU', 0):g}")
    if group.resources:
        opts["resources"] = dict(group.resources)
        for key, amount in group.resources.items():
            if amount > cluster.get(key, 0):
                unmet.append(f"resource '{key}': {amount:g}, the cluster has {cluster.get(key, 0):g} "
                             f"(start nodes with `ray start --resources '{{\"{key}\": N}}'`)")
    return opts, ", ".join(unmet) or None


def init_ray(address: str | None = None):
    """Connect to the cluster at `address`, or start a local Ray (once per process)."""
    import ray
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
    """Every group (each replica) in an actor, the edges in one hub actor."""

    def __init__(self, graph, run_id, run_dir, reporter, address=None, driver_node=None):
        super().__init__(graph, run_id, run_dir, reporter)
        ray = self.ray = init_ray(address)
        sizes = {"control": 0}           # 0: unbounded
        for e in graph.edges:
            if graph.is_cross_group(e):
                n = edge_queue_count(graph.stages[e.src].workers, graph.stages[e.dst].workers)
                sizes.update({f"{e.name}#{i}": e.queue_size for i in range(n)})
        hub = ray.remote(EdgeHub).options(num_cpus=0, max_concurrency=10_000).remote(sizes)
        self.handles = [hub]             # every actor of the run (all killed at the end)
        self.queues = {}
        for key in sizes:
            if key != "control":
                self.queues.setdefault(key.rpartition("#")[0], []).append(HubQueue(hub, key, sizes[key]))
        self.control = HubQueue(hub, "control", CONTROL_BATCH, ordered=False)   # many senders
        self.driver_node = driver_node or _node_id()
        self.workers = [(g, r) for g, group in graph.groups.items() for r in range(group.workers)]
        self.actors, self.futures, self.exits = {}, {}, {}
        self.left: list | None = None   # what the workers said last, once the hub is gone

    def launch(self) -> RunError | None:
        cluster = self.ray.cluster_resources()
        options = {gname: actor_options(group, cluster) for gname, group in self.graph.groups.items()}
        unmet = [f"group '{g}': {why}" for g, (_, why) in options.items() if why]
        if unmet:       # Ray would wait forever for resources no node has
            return RunError("resources", "the cluster cannot place this graph: " + "; ".join(unmet))
        actor_cls = self.ray.remote(_Actor)
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
            finished, _ = self.ray.wait(list(pending), timeout=0, num_returns=len(pending))
            for ref in finished:
                try:
                    self.exits[pending[ref]] = self.ray.get(ref)
                except Exception as exc:       # the actor died (killed, node lost)
                    self.exits[pending[ref]] = exc
        return self.exits

    def lost(self, key, how) -> RunError:
        snap = self.reporter.processes.get(key) or {}
        notes = [f"stage '{s['stage']}' had reached item {s['last_index']}"
                 for s in snap.get("stages", []) if s.get("last_index") is not None]
        why = (f"died ({type(how).__name__})" if isinstance(how, BaseException)
               else "stopped without reporting")
        return self.lost_error(key, "actor", why, notes)

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
                reports += self.ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                silent.append(f"{self.name(key, 'actor')} did not answer")
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
            try:
                self.ray.kill(handle)
            except Exception:
                pass

    def _collect(self, failed: bool) -> None:
        """Traces of every group into the driver's scratch folder (from whichever node ran
        it), and a failed run's temporary files removed where they were written."""
        ray = self.ray
        refs = {key: actor.collect.remote(failed) for key, actor in self.actors.items()}
        texts = {}
        for key, ref in refs.items():
            try:
                texts[key] = ray.get(ref, timeout=COLLECT_TIMEOUT_S)
            except Exception:           # the actor died with its node or was killed
                pass
        try:                            # remote scratch folders go once all is collected
            ray.get([actor.clean.remote() for actor in self.actors.values()], timeout=COLLECT_TIMEOUT_S)
        except Exception:
            pass
        os.makedirs(self.run_dir, exist_ok=True)
        for (gname, r), text in texts.items():
            if text:
                with open(os.path.join(self.run_dir, f"trace-{gname}-{r}.jsonl"), "w") as f:
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
        place = RayActors(self.graph, run_id, run_dir, self.reporter, self.address, self.driver_node)
        self.handles = place.handles
        return place
