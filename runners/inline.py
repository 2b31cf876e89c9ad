"""The inline runner: the whole graph in one process and one thread, for debugging and as
the baseline of the streaming runners.

A cooperative scheduler steps one stage at a time, sinks first: while all its outputs are
below capacity, a stage takes one message from an input it accepts, or a source produces
one message. Edges are plain deques sized like the graph's queues (a step may overshoot by
what one message produces). When no stage can step while some are unfinished,
the graph is deadlocked and the run fails with the state of every edge.

A stage call that never returns (a hang) is caught by the stall watchdog, a thread that
fires when no step has completed for `stall_timeout_s`: it takes the stack of the runner's
thread and raises `StallError` into it (through the SIGTERM handler the runner installs on
the main thread, which also interrupts a blocking call; as an asynchronous exception
elsewhere, which takes effect once the thread runs Python code again).
"""
from __future__ import annotations

import collections
import os
import signal
import sys
import tempfile
import threading
import time

from lipgraph.graph.items import EOS
from lipgraph.graph.stage import StageContext
from lipgraph.graph.stats import StageStats, TraceWriter, cuda_peak_bytes, peak_rss_bytes
from lipgraph.media.partial import sweep_partials

from .report import Interrupted, Reporter, RunOptions, RunResult, interrupted_error
from .runtime import StageFailure, StageRuntime
from .stall import StallError, StallWatch, cpu_seconds, stage_report, stall_error


class DeadlockError(RuntimeError):
    pass


class _DequeOutput:
    def __init__(self, buf: collections.deque, moved=None):
        self.buf = buf
        self.moved = moved or (lambda: None)

    def put(self, msg) -> float:
        self.buf.append(msg)
        self.moved()
        return 0.0


class _InlineContext(StageContext):
    def __init__(self, runner: "InlineRunner", stage: str, stats: StageStats):
        self.runner, self.stage, self.stats = runner, stage, stats
        self.group = stats.group

    def set_total(self, total):
        self.runner.reporter.total = total

    def register_temp(self, path):
        self.runner.temps.append(path)

    def warn(self, message):
        self.runner.reporter.warn(self.stage, message)

    def count(self, key, amount=1, reason=None):
        self.stats.count(key, amount, reason)

    def heartbeat(self):
        self.runner.watch.beat()


class Cancelled(Exception):
    pass


class InlineRunner:
    name = "inline"

    def __init__(self, graph, options: RunOptions | None = None):
        self.graph = graph
        self.options = options or RunOptions()
        self.reporter = Reporter(graph, self.name, self.options)
        self.temps: list[str] = []
        self.cancelled: str | None = None
        self.watch = StallWatch(self.options.stall_timeout_s)
        self.active: StageRuntime | None = None     # the stage being stepped
        self.stalled: dict | None = None            # the watchdog's error, once it fired
        self.interruptible = False                  # the watchdog may raise into the run
        self.fire_lock = threading.Lock()

    def cancel(self, reason: str) -> None:
        """Stop the run from another thread; it ends as failed, cleaned up."""
        self.cancelled = reason

    def run(self) -> RunResult:
        graph = self.graph
        sweep_partials(self.options.profile_path, self.options.trace_path)
        trace = None
        if self.options.trace_path:
            fd, part = tempfile.mkstemp(prefix="lipgraph-trace-", suffix=".jsonl")
            os.close(fd)
            self.reporter.trace_parts.append(part)
            trace = TraceWriter(part, os.getpid(), "inline")
        queues = {(e.dst, e.dst_port): collections.deque() for e in graph.edges}
        caps = {(e.dst, e.dst_port): e.queue_size for e in graph.edges}
        out_key = {(e.src, e.src_port): (e.dst, e.dst_port) for e in graph.edges}
        runtimes: dict[str, StageRuntime] = {}
        steps = {}
        open_ports = {}
        order = graph.topo_order()
        for tid, name in enumerate(order, start=1):
            spec = graph.stages[name]
            stats = StageStats(name, spec.type, spec.group)
            stage = spec.cls(name, dict(spec.params), None)
            stage.ctx = _InlineContext(self, name, stats)
            outs = {p: _DequeOutput(queues[out_key[(name, p)]], self.watch.beat)
                    for p in spec.ports[1]}
            runtimes[name] = StageRuntime(stage, stats, outs, trace, tid)
            runtimes[name].thread_ident = threading.get_ident()
            open_ports[name] = set(spec.ports[0])

        status, error, exit_code = "ok", None, 0
        done: set[str] = set()
        opened: list[StageRuntime] = []
        self.thread_ident, self.native_id = threading.get_ident(), threading.get_native_id()
        prev_term = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:   # not the main thread
            prev_term = None
        self.on_main = prev_term is not None
        stop_watchdog = threading.Event()
        self.watch.beat()
        self.interruptible = True
        if self.watch.on:
            threading.Thread(target=self._watchdog, args=(stop_watchdog,), name="stall-watchdog",
                             daemon=True).start()
        try:
            try:
                for name in order:
                    rt = runtimes[name]
                    self.active = rt
                    try:
                        rt.open()
                    except Exception as exc:
                        raise rt.failure(exc) from exc
                    self.active = None
                    self.watch.beat()
                    opened.append(rt)
                    if rt.is_source:
                        steps[name] = rt.source_steps()
                last_tick = 0.0
                rev = list(reversed(order))
                while len(done) < len(order):
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
                        except StageFailure:
                            raise
                        except Exception as exc:
                            raise rt.failure(exc) from exc
                        self.active = None
                    if not progressed:
                        raise DeadlockError(self._describe(queues, runtimes, done, open_ports))
                    self.watch.beat()
                    if self.cancelled is not None:
                        raise Cancelled(self.cancelled)
                    if self.stalled is not None:    # off the main thread: the stuck call returned
                        raise StallError()
                    now = time.monotonic()
                    if now - last_tick > 0.25:
                        last_tick = now
                        self._snapshot(runtimes)
                        self.reporter.tick()
            finally:
                # from here on the watchdog must not raise into this thread
                with self.fire_lock:
                    self.interruptible = False
                    if self.stalled is not None and not self.on_main:
                        _async_raise(self.thread_ident, None)     # drop one not yet delivered
                stop_watchdog.set()
        except StallError:
            status, exit_code = "failed", 1
            error = self.stalled
        except StageFailure as f:
            status, exit_code = "failed", 1
            error = f.to_dict()
        except DeadlockError as exc:
            status, exit_code = "failed", 1
            error = {"kind": "deadlock", "message": str(exc)}
        except Cancelled as exc:
            status, exit_code = "failed", 1
            error = {"kind": "cancelled", "stage": None, "index": None, "message": str(exc)}
        except (KeyboardInterrupt, Interrupted) as exc:
            status, error, exit_code = interrupted_error(exc)
        finally:
            if prev_term is not None:
                signal.signal(signal.SIGTERM, prev_term)
            for rt in opened:
                try:
                    rt.close()
                except Exception:
                    pass
            if trace:
                trace.close()
        if status != "ok":
            for path in self.temps:
                if os.path.exists(path):
                    os.unlink(path)
        self._snapshot(runtimes)
        profile = self.reporter.finish(status, error)
        return RunResult(status, profile, error, exit_code)

    def _on_sigterm(self, signum, frame):
        if self.stalled is not None:        # sent by the watchdog
            if self.interruptible:
                raise StallError()
            return
        raise Interrupted(signum)

    def _watchdog(self, stop: threading.Event) -> None:
        last_cpu = None
        while not stop.wait(0.2):
            rt = self.active
            if rt is not None and rt.activity[0] == "opening":
                # loading models moves no message: CPU time used says it is not stuck
                cpu = cpu_seconds(os.getpid(), self.native_id)
                if cpu != last_cpu:
                    last_cpu = cpu
                    self.watch.beat()
                    continue
            if self.watch.stalled():
                self._fire()
                return

    def _fire(self) -> None:
        with self.fire_lock:
            if not self.interruptible:
                return
            rt = self.active
            frames = sys._current_frames()
            reports = [stage_report(rt, frames)] if rt is not None else []
            self.stalled = stall_error(self.watch.timeout, reports)
            if self.on_main:
                # wakes a blocking call too; the handler raises StallError
                signal.pthread_kill(self.thread_ident, signal.SIGTERM)
            else:
                _async_raise(self.thread_ident, StallError)

    def _snapshot(self, runtimes) -> None:
        self.reporter.update(("inline", 0), {
            "pid": os.getpid(), "stages": [rt.stats.snapshot() for rt in runtimes.values()],
            "peak_rss": peak_rss_bytes(), "cuda_peak": cuda_peak_bytes()})

    @staticmethod
    def _describe(queues, runtimes, done, open_ports) -> str:
        lines = ["graph deadlocked: no stage can make progress"]
        for name, rt in runtimes.items():
            if name in done:
                continue
            lines.append(f"  {name}: waiting on {sorted(open_ports.get(name, ())) or 'outputs'}")
        for (dst, port), q in queues.items():
            if q:
                lines.append(f"  edge into {dst}.{port}: {len(q)} message(s), head {q[0]!r}")
        return "\n".join(lines)


def _async_raise(ident: int, exc) -> None:
    """Raise `exc` in thread `ident` once it runs Python code (None: cancel a pending one)."""
    import ctypes
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                               None if exc is None else ctypes.py_object(exc))
