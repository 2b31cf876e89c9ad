"""One placement group at run time: a spawned process (or Ray actor) running its stages as
threads joined by in-process channels, edges to other groups through `runners.transport`.
It reports a snapshot every second, and on the first stage failure the stage, item and
traceback; then it wakes every thread and exits non-zero. It dies with the runner too.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import threading
import time
import warnings

from lipgraph.graph.channels import Aborted, Inbox
from lipgraph.graph.items import EOS
from lipgraph.graph.profile import write_json_atomic
from lipgraph.graph.stats import DepthSeries, StageStats, TraceWriter, current_rss_bytes

from .errors import RunError
from .runtime import RunContext, RunFailure, StageRuntime, snapshot, trace_part
from .stall import opening_cpu, stage_report
from .transport import QueueOutput, Receiver, ShmCodec

SNAPSHOT_EVERY_S = 1.0
SAMPLE_EVERY_S = 0.2


@dataclasses.dataclass
class GroupLaunch:
    graph: object                 # graph.spec.GraphSpec
    group: str
    replica: int
    run_id: str
    queues: dict                  # edge name -> list of multiprocessing queues
    control: object               # multiprocessing queue to the runner
    run_dir: str                  # the run's scratch folder (traces, temp-file registry)
    trace: bool
    parent_pid: int
    beacons: object = None        # shared int64 array: item in hand per stage (-1: none)
    beacon_slots: dict = None     # (stage, replica) -> slot in `beacons`
    go: object = None             # flag set once every stage of every group has opened
    codec: object = None          # what queues carry (default: shared-memory pickles)
    stall_request: object = None  # shared counter: the runner's stall watchdog asks for stacks


class SharedFlag:
    """A set-once flag in shared memory that processes poll. Unlike a multiprocessing Event,
    whose set() waits until every waiting process has woken up (forever, if one of them was
    stopped or killed while waiting), setting it never waits on anyone."""

    def __init__(self, ctx):
        self.flag = ctx.RawValue("b", 0)

    def set(self) -> None:
        self.flag.value = 1

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.flag.value and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(self.flag.value)


def _die_with_parent(parent_pid: int) -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:      # the parent died before prctl took effect
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def group_main(launch: GroupLaunch) -> None:
    """Entry point of a group process (spawn start method)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the runner coordinates Ctrl-C
    _die_with_parent(launch.parent_pid)
    warnings.simplefilter("default")
    proc = GroupProcess(launch)
    code = proc.run()
    sys.stdout.flush()
    sys.stderr.flush()
    for qs in launch.queues.values():
        for q in qs:
            q.close()
            if code:
                # unread data may sit in the feeder: do not wait for consumers that are gone
                q.cancel_join_thread()
            else:
                q.join_thread()   # everything sent reaches the pipe before we exit
    launch.control.close()
    launch.control.join_thread()
    os._exit(code)


class GroupProcess:
    def __init__(self, launch: GroupLaunch):
        self.launch = launch
        self.graph = launch.graph
        self.key = (launch.group, launch.replica)
        self.failed = threading.Event()
        self.fail_lock = threading.Lock()
        self.inboxes: dict[str, Inbox] = {}
        self.runtimes: list[StageRuntime] = []
        self.depths: dict[str, tuple] = {}   # edge -> (how deep it is now, its DepthSeries)
        self.rss = DepthSeries(cap=512)      # resident memory over time
        self.trace: TraceWriter | None = None
        self.n_open = 0
        self.open_lock = threading.Lock()
        self.stall_seen = 0

    def send(self, msg) -> None:
        self.launch.control.put(msg)

    # ----- wiring -----------------------------------------------------------------------
    def build(self) -> list[threading.Thread]:
        g, launch = self.graph, self.launch
        codec = launch.codec or ShmCodec(launch.run_id)
        group = g.groups[launch.group]
        names = [n for n in g.topo_order() if n in group.stages]
        if launch.trace:
            self.trace = TraceWriter(
                trace_part(launch.run_dir, launch.group, launch.replica), os.getpid(),
                f"{launch.group}[{launch.replica}]" if group.workers > 1 else launch.group)
        self.inboxes = {name: Inbox(name) for name in names}
        threads = []
        for e in g.edges:
            if e.dst not in self.inboxes:
                continue
            if g.is_cross_group(e):
                ch = self.inboxes[e.dst].channel(e.dst_port, 1)
                qs = launch.queues[e.name]
                mine = qs if g.stages[e.src].workers > 1 else [qs[launch.replica % len(qs)]]
                threads.append(Receiver(mine, ch, self._receiver_failed, e.name, codec.decode))
                probe = (lambda qs=mine, ch=ch: sum(_qsize(q) for q in qs) + len(ch))
            else:
                probe = self.inboxes[e.dst].channel(e.dst_port, e.queue_size).__len__
            self.depths[e.name] = (probe, DepthSeries())
        for tid, name in enumerate(names, start=1):
            spec = g.stages[name]
            stats = StageStats(name, spec.type, spec.group, launch.replica)
            outs = {}
            for e in g.edges_from(name):
                if g.is_cross_group(e):
                    qs = launch.queues[e.name]     # a replica writes its own queue, TURN-marked
                    outs[e.src_port] = QueueOutput([qs[launch.replica]] if spec.workers > 1 else qs, codec)
                else:
                    outs[e.src_port] = self.inboxes[e.dst].channels[e.dst_port]
            stage = spec.cls(name, dict(spec.params), None)
            stage.ctx = RunContext(self.send, launch.run_dir, name, stats, launch.run_id,
                                   launch.replica, spec.workers)
            slot = (launch.beacon_slots or {}).get((name, launch.replica))
            beacon = (launch.beacons, slot) if slot is not None else None
            rt = StageRuntime(stage, stats, outs, self.trace, tid, emit_turns=spec.workers > 1,
                              beacon=beacon)
            self.runtimes.append(rt)
            threads.append(threading.Thread(target=self._run_stage, args=(rt,), name=f"stage:{name}",
                                            daemon=True))
        return threads

    # ----- running ----------------------------------------------------------------------
    def _opened(self) -> None:
        with self.fail_lock:
            self.n_open += 1
            if self.n_open == len(self.runtimes):
                self.send(("ready", self.key))

    def _wait_for_go(self, rt: StageRuntime) -> None:
        """Sources start once every model everywhere is loaded: queues do not fill up
        during setup, and latency and utilization measure the streaming alone."""
        go = self.launch.go
        rt.activity = ("waiting", "the start (every stage opened)", time.monotonic())
        while go is not None and not go.wait(0.2):
            if self.failed.is_set():
                raise Aborted()

    def _run_stage(self, rt: StageRuntime) -> None:
        inbox = self.inboxes[rt.stage.name]
        opened = False
        try:
            # one open at a time per process: model libraries' lazy imports are not
            # thread-safe, and loading in parallel gains little under the GIL
            with self.open_lock:
                rt.open()
            opened = True
            self._opened()
            if rt.is_source:
                self._wait_for_go(rt)
                rt.run_source()
            else:
                open_ports = set(rt.stage.in_ports)
                while open_ports:
                    ports = rt.wanted(open_ports)
                    t = time.monotonic()
                    rt.activity = ("waiting", "input on " + ", ".join(ports), t)
                    port, msg = inbox.get(ports)
                    rt.stats.wait_s += time.monotonic() - t
                    if msg is EOS:
                        open_ports.discard(port)
                        rt.eos(port)
                    else:
                        rt.handle(port, msg)
            rt.end()
        except Aborted:
            pass
        except BaseException as exc:
            self.fail(exc if isinstance(exc, RunFailure) else rt.failure(exc))
        finally:
            if opened:
                try:
                    rt.close()
                except Exception as exc:
                    if not self.failed.is_set():
                        self.fail(rt.failure(exc))

    def _receiver_failed(self, exc: BaseException, edge: str) -> None:
        dst = edge.split("->")[1].split(".")[0]
        spec = self.graph.stages[dst]
        self.fail(RunFailure(RunError.raised(
            exc, f"receiving on edge {edge}: {type(exc).__name__}: {exc}",
            stage=dst, type=spec.type, group=spec.group)))

    def fail(self, failure: RunFailure) -> None:
        with self.fail_lock:
            if self.failed.is_set():
                return
            self.failed.set()
        self.send(("error", failure.error))
        for inbox in self.inboxes.values():
            inbox.abort()

    def snapshot(self) -> dict:
        return snapshot(self.runtimes, edges={k: v.to_dict() for k, (_, v) in self.depths.items()},
                        rss=self.rss.to_dict(), open_cpu=opening_cpu(self.runtimes))

    def stall_report(self) -> list[dict]:
        """What each stage's thread is doing now, with the stack of those inside stage code
        (for the runner's stall watchdog)."""
        frames = sys._current_frames()
        return [stage_report(rt, frames, replica=self.launch.replica) for rt in self.runtimes]

    def _answer_stall_request(self) -> None:
        req = self.launch.stall_request
        if req is None or req.value == self.stall_seen:
            return
        self.stall_seen = req.value
        # a file rather than the control queue: a frozen process elsewhere may hold the
        # queue's write lock, and this must reach the runner regardless
        path = os.path.join(self.launch.run_dir, "stall-%s-%s.json" % self.key)
        write_json_atomic(path, self.stall_report())

    def sample(self) -> None:
        now = time.monotonic()
        rss = current_rss_bytes()
        self.rss.add(now, rss)
        if self.trace:
            self.trace.counter("rss MiB", now, {"rss": round(rss / 2**20, 1)})
        for name, (probe, series) in self.depths.items():
            try:
                d = probe()
            except Exception:
                continue
            series.add(now, d)
            if self.trace:
                self.trace.counter(f"queue {name}", now, {"depth": d})

    def run(self) -> int:
        key = self.key
        try:
            threads = self.build()
        except BaseException as exc:
            self.send(("error", RunError.raised(exc, f"building group: {exc}", group=self.launch.group)))
            return 1
        for t in threads:
            t.start()
        stage_threads = [t for t in threads if t.name.startswith("stage:")]
        last_snap = 0.0
        while not self.failed.is_set():
            alive = [t for t in stage_threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(SAMPLE_EVERY_S)
            self._answer_stall_request()
            self.sample()
            if time.monotonic() - last_snap >= SNAPSHOT_EVERY_S:
                last_snap = time.monotonic()
                self.send(("stats", key, self.snapshot()))
        self.sample()
        if self.trace:
            self.trace.close()
        self.send(("stats", key, self.snapshot()))
        if self.failed.is_set():
            return 1
        self.send(("done", key))
        return 0


def _qsize(q) -> int:
    try:
        return q.qsize()
    except (NotImplementedError, OSError):
        return 0
