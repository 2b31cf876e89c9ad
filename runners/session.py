"""One run of a graph, whatever places its groups: the lifecycle every runner shares.

A `RunSession` makes the run's id and scratch folder, installs the signal handlers, launches
the workers through its `Placement` (local processes, Ray actors or one thread) and watches
them: their messages, workers that end without a word, the stall watchdog (`runners.stall`)
and cancellation. However the run ends, it stops every worker, takes their last snapshots,
removes the run's shared memory and, for a failed run, the temporary files stages registered
(so nothing is left at the output path), and writes the report (`runners.report`).

What a SIGKILL of the whole run leaves is named after the runner's pid and swept by the next
run's start: shared memory and named semaphores (`graph.shm.sweep_stale`), scratch folders
(`sweep_stale_run_dirs`), temporary output files (`media.partial`).
"""
from __future__ import annotations

import glob
import os
import queue
import re
import shutil
import signal
import tempfile
import threading
import time

from lipgraph.graph import shm
from lipgraph.media.partial import sweep_partials

from .errors import Interrupted, RunError, interrupted_error, raise_interrupted
from .report import Reporter, RunOptions, RunResult
from .runtime import remove_registered_temps, trace_part
from .stall import StallWatch

POLL_S = 0.1
ERROR_GRACE_S = 0.5       # a worker ended without a word: wait this long for its error report


class Placement:
    """Where the groups of one run execute (every placement implements the methods below).
    `workers` holds one (group, replica) key per worker, each of which sends ("stats", key,
    snapshot), ("ready", key), ("done", key), ("total", n), ("warn", stage, text) or
    ("error", RunError)."""

    worker = "process"      # what messages call one worker

    def __init__(self, graph, run_id: str, run_dir: str, reporter: Reporter):
        self.graph, self.run_id, self.run_dir, self.reporter = graph, run_id, run_dir, reporter
        self.trace = bool(reporter.options.trace_path)
        self.workers = [(g, r) for g, group in graph.groups.items() for r in range(group.workers)]

    def launch(self) -> RunError | None:
        """Start every worker; an error if the run cannot be placed at all (nothing started)."""
        raise NotImplementedError

    def events(self, timeout: float):
        """The workers' messages, waiting up to `timeout` for the first."""
        raise NotImplementedError

    def go(self) -> None:
        """Every worker has opened its stages: the sources may start."""
        raise NotImplementedError

    def ended(self) -> dict:
        """Workers that have ended: key -> 0 (cleanly) or what ended them."""
        raise NotImplementedError

    def lost(self, key: tuple, how) -> RunError:
        """The error of a worker that ended (`how`) without reporting one."""
        raise NotImplementedError

    def progress(self):
        """What changes whenever anything moves, for the stall watchdog (None: not yet)."""
        raise NotImplementedError

    def stall_error(self, timeout: float) -> RunError:
        """Nothing moved for `timeout` s: what each stage is doing, the stuck one named."""
        raise NotImplementedError

    def stop_all(self, failed: bool) -> None:
        """Stop every worker still running and release what the placement holds."""
        raise NotImplementedError

    def name(self, key: tuple) -> str:
        """How messages name a worker: "process of group 'gpu'[1] (stages: a, b)"."""
        gname, replica = key
        group = self.graph.groups[gname]
        rep = f"[{replica}]" if group.workers > 1 else ""
        return f"{self.worker} of group '{gname}'{rep} (stages: {', '.join(group.stages)})"

    def lost_error(self, key: tuple, how: str, notes=(), stage=None, index=None, **extra) -> RunError:
        stages = self.graph.groups[key[0]].stages
        if stage is None and len(stages) == 1:
            stage = stages[0]
        message = f"{self.name(key)} {how}" + ("; " + ", ".join(notes) if notes else "")
        return RunError("killed", message, stage=stage, group=key[0], index=index, **extra)


class RunSession:
    """A runner: the lifecycle of one run, its groups placed by `placement`."""

    name = ""
    placement: type[Placement] = Placement

    def __init__(self, graph, options: RunOptions | None = None):
        self.graph = graph
        self.options = options or RunOptions()
        self.reporter = Reporter(graph, self.name, self.options)
        self.cancelled: str | None = None
        self.run_dir: str | None = None

    def cancel(self, reason: str) -> None:
        """Stop the run from another thread (a sibling part of a split job failed, a user
        pressed Cancel); it ends as failed, cleaned up like any failure, within one poll.
        Setting `RunOptions.cancel` (an Event) does the same."""
        self.cancelled = reason

    def _cancel_reason(self) -> str | None:
        event = self.options.cancel
        if self.cancelled is None and event is not None and event.is_set():
            self.cancelled = "cancelled: run stopped"
        return self.cancelled

    def place(self, run_id: str, run_dir: str) -> Placement:
        return self.placement(self.graph, run_id, run_dir, self.reporter)

    def run(self) -> RunResult:
        opts = self.options
        shm.sweep_stale()
        sweep_stale_run_dirs()
        sweep_partials(opts.profile_path, opts.trace_path)
        run_id = shm.new_run_id()
        run_dir = self.run_dir = tempfile.mkdtemp(prefix=f"lipgraph-run-{run_id}-")
        status, error, exit_code = "ok", None, 0
        place = None
        old_handlers = install_signals()
        try:
            place = self.place(run_id, run_dir)
            if opts.trace_path:
                self.reporter.trace_parts = [trace_part(run_dir, *key) for key in place.workers]
            error = place.launch()
            if error is not None:
                status, exit_code = "failed", 2
            else:
                error = self._watch(place)
                if error is not None:
                    status, exit_code = "failed", 1
        except (KeyboardInterrupt, Interrupted) as exc:
            status, error, exit_code = interrupted_error(exc)
        finally:
            # further signals are ignored while tearing down, so clean-up always completes
            restore_signals(old_handlers, ignore=True)
            try:
                if place is not None:
                    place.stop_all(status != "ok")
                    for msg in place.events(0.0):       # the last snapshots
                        if msg[0] in ("stats", "total", "warn"):
                            self._handle(msg, place)
                left = shm.sweep(run_id)
                if left and status == "ok":
                    self.reporter.warn("runner", f"{left} shared-memory segment(s) were left and removed")
                if status != "ok":
                    remove_registered_temps(run_dir)
                profile = self.reporter.finish(status, error)
                shutil.rmtree(run_dir, ignore_errors=True)
            finally:
                restore_signals(old_handlers)
        return RunResult(status, profile, error, exit_code, self.reporter.warnings())

    def _watch(self, place: Placement) -> RunError | None:
        """Until every worker is done (None) or the run must stop (its error)."""
        watch = StallWatch(self.options.stall_timeout_s)
        self.done, self.ready, unannounced = set(), set(), {}
        n = len(place.workers)
        while True:
            for msg in place.events(POLL_S):
                error = self._handle(msg, place)
                if error is not None:
                    return error
            state = place.progress() if watch.on else None
            if state is not None and watch.stalled(state):
                return place.stall_error(watch.timeout)
            ended, now = place.ended(), time.monotonic()
            for key, how in ended.items():
                # ended without saying it was done: give its error report a moment to arrive
                if not (how == 0 and key in self.done) and \
                        now - unannounced.setdefault(key, now) >= ERROR_GRACE_S:
                    return place.lost(key, how)
            if len(self.done) == len(ended) == n and all(how == 0 for how in ended.values()):
                return None
            if self._cancel_reason() is not None:
                return RunError("cancelled", self.cancelled)
            self.reporter.tick()

    def _handle(self, msg: tuple, place: Placement) -> RunError | None:
        kind = msg[0]
        if kind == "stats":
            self.reporter.processes[msg[1]] = msg[2]
        elif kind == "done":
            self.done.add(msg[1])
        elif kind == "ready":
            self.ready.add(msg[1])
            if len(self.ready) == len(place.workers):
                place.go()
        elif kind == "total":
            self.reporter.total = msg[1]
        elif kind == "warn":
            self.reporter.warn(msg[1], msg[2])
        elif kind == "error":
            return msg[1]
        return None


def drain(q, timeout: float = 0.0):
    """Messages of queue `q`, waiting up to `timeout` for them."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            yield q.get(timeout=left) if left > 0 else q.get_nowait()
        except queue.Empty:
            return


def install_signals() -> dict | None:
    """SIGTERM raises into the monitor loop (SIGINT already raises KeyboardInterrupt). Python
    lets only the main thread set handlers: a run started from another thread (a web server's
    worker) leaves them alone and is stopped through `cancel` instead."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {signal.SIGTERM: signal.signal(signal.SIGTERM, raise_interrupted),
            signal.SIGINT: signal.getsignal(signal.SIGINT)}


def restore_signals(old: dict | None, ignore: bool = False) -> None:
    for s, h in (old or {}).items():
        signal.signal(s, signal.SIG_IGN if ignore else h)


def sweep_stale_run_dirs() -> None:
    """Scratch folders of runs whose runner process is gone (killed before cleaning up)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "lipgraph-run-*")):
        m = re.match(r"lipgraph-run-(\d+)x", os.path.basename(path))
        if m and not shm.pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
