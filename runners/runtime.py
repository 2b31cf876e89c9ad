"""One stage at run time: its instance, its stats, and where its output ports lead. Every
runner drives stages through `StageRuntime` and `RunContext`, so timing, tracing, latency at
sinks and error context are the same on every runner.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Protocol

from lipgraph.graph.items import EOS, Batch, Flush, Info, Item, count_items
from lipgraph.graph.stage import Stage, StageContext
from lipgraph.graph.stats import StageStats, TraceWriter, cuda_peak_bytes, peak_rss_bytes

from .errors import RunError


class Output(Protocol):
    def put(self, msg: Any) -> float: ...       # seconds blocked


class RunFailure(Exception):
    """Fails the run with `error` (a stage raised: the stage, the item, the traceback)."""

    def __init__(self, error: RunError):
        super().__init__(error.describe())
        self.error = error


class RunContext(StageContext):
    """What a stage may ask of its run; messages for the session go out through `send`."""

    def __init__(self, send, run_dir: str, stage: str, stats: StageStats, run_id: str = "local",
                 replica: int = 0, replicas: int = 1):
        self.send, self.run_dir, self.stage, self.stats = send, run_dir, stage, stats
        self.group, self.run_id, self.replica, self.replicas = stats.group, run_id, replica, replicas
        self.pulse = 0          # heartbeats: progress inside a long step

    def set_total(self, total):
        self.send(("total", total))

    def register_temp(self, path):
        # appended at once, so the session finds it even if this process is killed next
        with open(os.path.join(self.run_dir, "temps.txt"), "a") as f:
            f.write(os.path.abspath(path) + "\n")

    def warn(self, message):
        self.send(("warn", self.stage, message))

    def count(self, key, amount=1, reason=None):
        self.stats.count(key, amount, reason)

    def heartbeat(self):
        self.pulse += 1


class StageRuntime:
    def __init__(self, stage: Stage, stats: StageStats, outputs: dict[str, Output],
                 trace: TraceWriter | None = None, tid: int = 0, emit_turns: bool = False,
                 beacon=None):
        self.stage = stage
        # (shared array, slot): the item in hand, readable by the runner if we are killed
        self.beacon = beacon
        self.stats = stats
        self.outputs = outputs
        self.trace = trace
        self.tid = tid
        self.emit_turns = emit_turns
        self._current: int | None = None
        self.emitted: int | None = None      # last index a source produced
        self.current_last: int | None = None  # last index of the batch in hand
        self.is_source = not stage.in_ports
        self.stats.is_sink = not stage.out_ports
        # what the stage's thread is doing, for the stall watchdog: (state, detail, since)
        # with state "opening"/"busy" (in the stage's own code), "waiting" (for input or the
        # start), "blocked" (on a full output), "idle" or "done"; and the thread's ident
        self.activity: tuple[str, str | None, float] = ("idle", None, time.monotonic())
        self.thread_ident: int | None = None
        self.native_id: int | None = None
        if trace:
            trace.thread_name(tid, stage.name)

    # ----- error context ----------------------------------------------------------------
    @property
    def current(self) -> int | None:
        return self._current

    @current.setter
    def current(self, index: int | None) -> None:
        self._current = index
        if self.beacon is not None:
            arr, slot = self.beacon
            arr[2 * slot] = -1 if index is None else index

    def _hold(self, msg) -> None:
        """Mark a data message as in hand (first and last index, for post-mortems)."""
        self.current, self.current_last = msg.index, msg.last_index
        if self.beacon is not None:
            arr, slot = self.beacon
            arr[2 * slot + 1] = msg.last_index

    def failure(self, exc: BaseException) -> RunFailure:
        return RunFailure(RunError.raised(exc, stage=self.stage.name, type=self.stats.type,
                                            group=self.stats.group, index=self.current,
                                            after=self.emitted, last=self.current_last))

    # ----- lifecycle --------------------------------------------------------------------
    def open(self) -> None:
        """Open the stage in the thread that will run it."""
        self.thread_ident, self.native_id = threading.get_ident(), threading.get_native_id()
        t = time.monotonic()
        self.activity = ("opening", "open", t)
        self.stage.open()
        self.stats.setup_s += time.monotonic() - t
        self.activity = ("idle", None, time.monotonic())
        if self.trace:
            self.trace.span(self.tid, f"{self.stage.name}:open", t, time.monotonic())

    def close(self) -> None:
        self.stage.close()

    # ----- emitting ---------------------------------------------------------------------
    def _send(self, port: str, msg: Any) -> None:
        out = self.outputs.get(port)
        if out is None:
            raise RuntimeError(f"stage '{self.stage.name}' emitted on unknown output port '{port}' "
                               f"(outputs: {', '.join(self.outputs) or 'none'})")
        if isinstance(msg, (Item, Batch)):
            self.stats.gave(count_items(msg))
        busy = self.activity
        self.activity = ("blocked", port, time.monotonic())
        self.stats.blocked_s += out.put(msg)
        self.activity = busy

    def _drive(self, call, label: str, index: int | None, what: str = "process") -> None:
        """Call a stage method and run what it returns to exhaustion, timing the stage's own
        work (the call, and each step of a generator) apart from the time spent sending."""
        start = time.monotonic()
        self.activity = ("busy", what, start)
        sending = 0.0
        for port, msg in call() or ():
            t = time.monotonic()
            self._send(port, msg)
            sending += time.monotonic() - t
        busy = time.monotonic() - start - sending
        self.stats.busy_s += busy
        self.activity = ("idle", None, time.monotonic())
        if self.trace and busy > 0:
            self.trace.span(self.tid, label, start, time.monotonic(),
                            {"index": index, "busy_ms": round(busy * 1e3, 3)})

    # ----- inputs -----------------------------------------------------------------------
    def handle(self, port: str, msg: Any) -> None:
        """Deliver one message that arrived on `port` (anything but EOS)."""
        stage = self.stage
        if isinstance(msg, (Item, Batch)):
            self._hold(msg)
            self.stats.took(count_items(msg), len(msg) if isinstance(msg, Batch) else None,
                            msg.last_index)
            if self.stats.is_sink:
                now = time.monotonic()
                for m in msg.members():
                    self.stats.latency.add(now - m.t0)
            self._drive(lambda: stage.process(msg, port), stage.name, msg.index)
            if self.emit_turns:
                for out in self.outputs.values():
                    out.turn()
            self.current = self.current_last = None
        elif isinstance(msg, Info):
            self._drive(lambda: stage.on_info(msg, port), f"{stage.name}:info", None, "on_info")
        elif isinstance(msg, Flush):
            self._drive(lambda: stage.on_flush(msg, port), f"{stage.name}:flush", None, "on_flush")
        else:
            raise RuntimeError(f"stage '{stage.name}' got an unknown message {msg!r} on '{port}'")

    def eos(self, port: str) -> None:
        self._drive(lambda: self.stage.on_eos(port), f"{self.stage.name}:eos", None, "on_eos")

    def end(self) -> None:
        """All inputs ended (or the source is exhausted): finish, then EOS on every output."""
        self._drive(self.stage.finish, f"{self.stage.name}:finish", None, "finish")
        for port, out in self.outputs.items():
            self.activity = ("blocked", port, time.monotonic())
            self.stats.blocked_s += out.put(EOS)
        self.activity = ("done", None, time.monotonic())

    def source_steps(self):
        """Generate the source's messages one at a time (yields after each is sent)."""
        t = time.monotonic()
        self.activity = ("busy", "generate", t)
        for port, msg in self.stage.generate():
            dt = time.monotonic() - t
            self.stats.busy_s += dt
            data = isinstance(msg, (Item, Batch))
            if data:
                self._hold(msg)                   # in hand while it is being sent
                if self.trace:
                    self.trace.span(self.tid, self.stage.name, t, t + dt, {"index": msg.index})
            self._send(port, msg)
            if data:
                self.emitted, self.current = msg.last_index, None
            yield
            t = time.monotonic()
            self.activity = ("busy", "generate", t)
        self.stats.busy_s += time.monotonic() - t

    def run_source(self) -> None:
        for _ in self.source_steps():
            pass

    def wanted(self, open_ports: set[str]) -> list[str]:
        ports = [p for p in self.stage.accepts() if p in open_ports]
        if not ports and open_ports:
            raise RuntimeError(
                f"stage '{self.stage.name}' accepts none of its open inputs ({', '.join(sorted(open_ports))}); "
                "it holds a message on every input yet emitted nothing")
        return ports


def snapshot(runtimes: list[StageRuntime], **extra) -> dict:
    """What a worker reports to the session: its stages' stats, its memory, heartbeats."""
    return {"pid": os.getpid(), "stages": [rt.stats.snapshot() for rt in runtimes],
            "peak_rss": peak_rss_bytes(), "cuda_peak": cuda_peak_bytes(),
            "pulse": sum(rt.stage.ctx.pulse for rt in runtimes), **extra}


def trace_part(run_dir: str, group: str, replica: int) -> str:
    """The file a worker writes its trace spans to (merged into the run's trace at the end)."""
    return os.path.join(run_dir, f"trace-{group}-{replica}.jsonl")


def remove_registered_temps(run_dir: str) -> None:
    """Delete the temporary files stages registered in the run's scratch folder (the
    unfinished outputs of a failed run)."""
    path = os.path.join(run_dir, "temps.txt")
    if os.path.exists(path):
        with open(path) as f:
            for p in filter(None, map(str.strip, f)):
                with contextlib.suppress(OSError):
                    os.unlink(p)
