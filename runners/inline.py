"""The inline runner: the whole graph in one process and one thread, for debugging and as
the baseline of the streaming runners.

A cooperative scheduler steps one stage at a time, sinks first: while all its outputs are
below capacity, a stage takes one message from an input it accepts, or a source produces
one message. Edges are plain deques sized like the graph's queues (a step may overshoot by
what one message produces). When no stage can step while some are unfinished,
the graph is deadlocked and the run fails with the state of every edge.
"""
from __future__ import annotations

import collections
import os
import signal
import tempfile
import time

from graph.items import EOS
from graph.stage import StageContext
from graph.stats import StageStats, TraceWriter, cuda_peak_bytes, peak_rss_bytes

from .report import Interrupted, Reporter, RunOptions, RunResult, interrupted_error, raise_interrupted
from .runtime import StageFailure, StageRuntime


class DeadlockError(RuntimeError):
    pass


class _DequeOutput:
    def __init__(self, buf: collections.deque):
        self.buf = buf

    def put(self, msg) -> float:
        self.buf.append(msg)
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

    def cancel(self, reason: str) -> None:
        """Stop the run from another thread; it ends as failed, cleaned up."""
        self.cancelled = reason

    def run(self) -> RunResult:
        graph = self.graph
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
            outs = {p: _DequeOutput(queues[out_key[(name, p)]]) for p in spec.ports[1]}
            runtimes[name] = StageRuntime(stage, stats, outs, trace, tid)
            open_ports[name] = set(spec.ports[0])

        status, error, exit_code = "ok", None, 0
        done: set[str] = set()
        opened: list[StageRuntime] = []
        prev_term = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, raise_interrupted)
        except ValueError:   # not the main thread
            prev_term = None
        try:
            for name in order:
                rt = runtimes[name]
                try:
                    rt.open()
                except Exception as exc:
                    raise rt.failure(exc) from exc
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
                if not progressed:
                    raise DeadlockError(self._describe(queues, runtimes, done, open_ports))
                if self.cancelled is not None:
                    raise Cancelled(self.cancelled)
                now = time.monotonic()
                if now - last_tick > 0.25:
                    last_tick = now
                    self._snapshot(runtimes)
                    self.reporter.tick()
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
