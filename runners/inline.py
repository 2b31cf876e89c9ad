"""The inline runner: the whole graph in one thread, for debugging and as the baseline of the
streaming runners.

A cooperative scheduler steps one stage at a time, sinks first: while all its outputs are
below capacity, a stage takes one message from an input it accepts, or a source produces
one message. Edges are deques sized like the graph's queues (a step may overshoot by what
one message produces). When no stage can step while some are unfinished, the graph is
deadlocked and the run fails with the state of every edge.

Stopping the thread raises `Stopped` into it, which takes effect once it runs Python code
again; a stage blocked in one native call is left behind when the grace runs out.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import queue
import sys
import threading
import time

from lipgraph.graph.items import EOS
from lipgraph.graph.stats import StageStats, TraceWriter

from .errors import RunError
from .runtime import RunContext, RunFailure, StageRuntime, snapshot, trace_part
from .session import Placement, RunSession, drain
from .stall import cpu_seconds, stage_report, stall_error

KEY = ("inline", 0)
SNAPSHOT_EVERY_S = 0.25
STOP_GRACE_S = 1.5


class Stopped(BaseException):
    """Raised into the scheduler's thread to stop it. A BaseException, so a stage's own
    `except Exception` does not swallow it."""


class _DequeOutput:
    def __init__(self, buf: collections.deque, place: "InlineThread"):
        self.buf, self.place = buf, place

    def put(self, msg) -> float:
        self.buf.append(msg)
        self.place.moves += 1
        return 0.0


class InlineThread(Placement):
    def __init__(self, graph, run_id, run_dir, reporter):
        super().__init__(graph, run_id, run_dir, reporter)
        self.workers = [KEY]
        self.msgs: queue.Queue = queue.Queue()
        self.moves = 0                  # messages moved and steps taken (progress)
        self.active: StageRuntime | None = None     # the stage being stepped
        self.code: int | None = None    # once the thread has ended: 0 ok, 1 failed or stopped
        self.lock = threading.Lock()
        self.interruptible = False      # a stop may raise into the thread
        self.stopping = False
        self.thread = threading.Thread(target=self._main, name="inline", daemon=True)
        self.trace = TraceWriter(trace_part(run_dir, *KEY), os.getpid(), "inline") if self.trace else None
        self.queues = {(e.dst, e.dst_port): collections.deque() for e in graph.edges}
        self.caps = {(e.dst, e.dst_port): e.queue_size for e in graph.edges}
        self.out_key = {(e.src, e.src_port): (e.dst, e.dst_port) for e in graph.edges}
        self.order = graph.topo_order()
        self.runtimes: dict[str, StageRuntime] = {}
        for tid, name in enumerate(self.order, start=1):
            spec = graph.stages[name]
            stats = StageStats(name, spec.type, spec.group)
            stage = spec.cls(name, dict(spec.params), None)
            stage.ctx = RunContext(self.msgs.put, run_dir, name, stats)
            outs = {p: _DequeOutput(self.queues[self.out_key[(name, p)]], self) for p in spec.ports[1]}
            self.runtimes[name] = StageRuntime(stage, stats, outs, self.trace, tid)

    def launch(self) -> None:
        self.thread.start()

    def events(self, timeout: float):
        return drain(self.msgs, timeout)

    def ended(self) -> dict:
        return {KEY: self.code} if self.code is not None else {}

    def lost(self, key, how) -> RunError:
        return RunError("killed", "the inline runner's thread ended without reporting an error")

    def progress(self) -> tuple:
        # loading models moves no message: the CPU time of the thread opening a stage counts
        rt = self.active
        cpu = (cpu_seconds(os.getpid(), self.thread.native_id)
               if rt is not None and rt.activity[0] == "opening" else None)
        return self.moves, sum(rt.stage.ctx.pulse for rt in self.runtimes.values()), cpu

    def stall_error(self, timeout: float) -> RunError:
        rt = self.active
        return stall_error(timeout, [stage_report(rt, sys._current_frames())] if rt else [])

    def stop_all(self, failed: bool) -> None:
        with self.lock:
            self.stopping = True
            if self.interruptible:
                _async_raise(self.thread.ident, Stopped)
        if self.thread.ident is not None:
            self.thread.join(STOP_GRACE_S)

    # ----- the scheduler's thread -------------------------------------------------------
    def _main(self) -> None:
        opened: list[StageRuntime] = []
        code = 1
        try:
            try:
                with self.lock:
                    if self.stopping:
                        raise Stopped()
                    self.interruptible = True
                self._schedule(opened)
                code = 0
            finally:
                # from here on a stop must not raise into this thread
                with self.lock:
                    self.interruptible = False
                _async_raise(threading.get_ident(), None)     # drop one not yet delivered
        except Stopped:
            pass
        except RunFailure as f:
            self.msgs.put(("error", f.error))
        except BaseException as exc:        # the scheduler's own failure
            self.msgs.put(("error", RunError.raised(exc)))
        finally:
            for rt in opened:
                with contextlib.suppress(Exception):
                    rt.close()
            if self.trace:
                self.trace.close()
            self._snapshot()
            if code == 0:
                self.msgs.put(("done", KEY))
            self.code = code

    def _schedule(self, opened: list) -> None:
        queues, caps, out_key, runtimes = self.queues, self.caps, self.out_key, self.runtimes
        steps, open_ports, done = {}, {}, set()
        for name in self.order:
            rt = self.active = runtimes[name]
            try:
                rt.open()
            except Exception as exc:
                raise rt.failure(exc) from exc
            self.active = None
            self.moves += 1
            opened.append(rt)
            if rt.is_source:
                steps[name] = rt.source_steps()
            open_ports[name] = set(rt.stage.in_ports)
        last_snap = 0.0
        rev = list(reversed(self.order))
        while len(done) < len(self.order):
            progressed = False
            for name in rev:
                if name in done:
                    continue
                rt = runtimes[name]
                if not all(len(queues[out_key[(name, p)]]) < caps[out_key[(name, p)]]
                           for p in rt.stage.out_ports):
                    continue    # an output is full: this stage would block here
                self.active = rt
                try:
                    if rt.is_source:
                        try:
                            next(steps[name])
                        except StopIteration:
                            rt.end()
                            done.add(name)
                        progressed = True
                        continue
                    ports = open_ports[name]
                    for port in rt.wanted(ports):
                        q = queues[(name, port)]
                        if q:
                            msg = q.popleft()
                            if msg is EOS:
                                ports.discard(port)
                                rt.eos(port)
                                if not ports:
                                    rt.end()
                                    done.add(name)
                            else:
                                rt.handle(port, msg)
                            progressed = True
                            break
                except RunFailure:
                    raise
                except Exception as exc:
                    raise rt.failure(exc) from exc
                self.active = None
            if not progressed:
                raise RunFailure(RunError("deadlock", self._describe(done, open_ports)))
            self.moves += 1
            if time.monotonic() - last_snap > SNAPSHOT_EVERY_S:
                last_snap = time.monotonic()
                self._snapshot()

    def _snapshot(self) -> None:
        self.msgs.put(("stats", KEY, snapshot(list(self.runtimes.values()))))

    def _describe(self, done, open_ports) -> str:
        lines = ["graph deadlocked: no stage can make progress"]
        for name in self.runtimes:
            if name not in done:
                lines.append(f"  {name}: waiting on {sorted(open_ports.get(name, ())) or 'outputs'}")
        for (dst, port), q in self.queues.items():
            if q:
                lines.append(f"  edge into {dst}.{port}: {len(q)} message(s), head {q[0]!r}")
        return "\n".join(lines)


class InlineRunner(RunSession):
    name = "inline"
    placement = InlineThread


def _async_raise(ident: int, exc) -> None:
    """Raise `exc` in thread `ident` once it runs Python code (None: cancel a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                               None if exc is None else ctypes.py_object(exc))
