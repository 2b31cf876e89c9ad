"""The process runner: each placement group (each replica of a replicated stage) in its own
spawned process, groups joined by bounded queues, pixel data in shared memory.

The runner's own process only coordinates: it starts the groups, relays stats into the
live progress and the profile, and watches for failures. On a stage error, a process that
dies (even by SIGKILL), SIGINT or SIGTERM, or a stall (nothing moved for the stall
timeout: see `runners.stall`) it stops every process within a few seconds, removes the
run's shared-memory segments and the temporary files sinks registered, and reports one
message naming the stage, the item and the original traceback (or, for a stall, the stack
of the stuck stage's thread).

What only a SIGKILL of the whole process group can leave (the runner cannot act on it) is
named after the runner's pid, so the next run's start removes it: shared-memory segments
and named semaphores (`graph.shm.sweep_stale`), scratch folders (`_sweep_stale_run_dirs`),
and temporary output files (`media.partial`, swept by the sinks and here for the profile
and trace).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import tempfile
import threading
import time

from lipgraph.graph import shm
from lipgraph.graph.stats import peak_rss_bytes
from lipgraph.media.partial import sweep_partials

from .group import GroupLaunch, SharedFlag, group_main
from .report import Interrupted, Reporter, RunOptions, RunResult, interrupted_error, raise_interrupted
from .stall import StallWatch, cpu_seconds, progress_state, stall_error
from .transport import edge_queue_count

POLL_S = 0.1
TERM_GRACE_S = 1.5        # SIGTERM, then SIGKILL after this
ERROR_GRACE_S = 0.5       # after a process dies, wait this long for its error report
STALL_ANSWER_S = 1.5      # the stall watchdog waits this long for each process's stacks


class ProcessRunner:
    name = "process"

    def __init__(self, graph, options: RunOptions | None = None):
        self.graph = graph
        self.options = options or RunOptions()
        self.reporter = Reporter(graph, self.name, self.options)
        self.cancelled: str | None = None

    def cancel(self, reason: str) -> None:
        """Stop the run from another thread (a sibling part of a split job failed); it ends
        as failed, cleaned up like any failure, within one poll."""
        self.cancelled = reason

    def _cancel_error(self) -> dict | None:
        if self.cancelled is None:
            return None
        return {"kind": "cancelled", "stage": None, "index": None, "message": self.cancelled}

    def run(self) -> RunResult:
        graph = self.graph
        shm.sweep_stale()
        _sweep_stale_run_dirs()
        sweep_partials(self.options.profile_path, self.options.trace_path)
        run_id = shm.new_run_id()
        run_dir = self.run_dir = tempfile.mkdtemp(prefix=f"lipgraph-run-{run_id}-")
        ctx = mp.get_context("spawn")
        queues = {}
        # queues hold named semaphores: named after this process, so that what a SIGKILL of
        # the whole run leaves is swept by the next run (graph/shm.py)
        with shm.named_semaphores():
            for e in graph.edges:
                if graph.is_cross_group(e):
                    n = edge_queue_count(graph.stages[e.src].workers, graph.stages[e.dst].workers)
                    queues[e.name] = [ctx.Queue(maxsize=e.queue_size) for _ in range(n)]
            control = ctx.Queue()
        self.go = SharedFlag(ctx)
        slots = {(name, r): None for name, st in graph.stages.items() for r in range(st.workers)}
        for i, key in enumerate(slots):
            slots[key] = i
        # per stage replica: first and last index of the message in hand (-1: none)
        self.beacons = ctx.RawArray("q", 2 * len(slots))
        self.beacon_slots = slots
        for i in range(2 * len(slots)):
            self.beacons[i] = -1
        self.stall_request = ctx.RawValue("q", 0)
        procs: dict[tuple, mp.Process] = {}
        for gname, group in graph.groups.items():
            for r in range(group.workers):
                launch = GroupLaunch(graph, gname, r, run_id, queues, control, run_dir,
                                     bool(self.options.trace_path), os.getpid(), self.beacons, slots,
                                     self.go, stall_request=self.stall_request)
                procs[(gname, r)] = ctx.Process(target=group_main, args=(launch,),
                                                name=f"lipgraph:{gname}[{r}]")
        if self.options.trace_path:
            self.reporter.trace_parts = [os.path.join(run_dir, f"trace-{g}-{r}.jsonl") for g, r in procs]
        # glibc gives each thread its own heap arena (8 per core by default); with a dozen
        # stage threads passing frame-sized buffers around, those heaps fragment and resident
        # memory creeps up over an hour. Two arenas keep it flat at no cost in speed
        # (bench/longvideo.py). Spawned processes inherit it; a value the user set wins.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")

        status, error, exit_code = "ok", None, 0
        done: set[tuple] = set()
        self.ready: set[tuple] = set()
        self.n_procs = len(procs)
        reader = _ControlReader(control)
        old_handlers = self._install_signals()
        try:
            for p in procs.values():
                p.start()
            error = self._monitor(procs, reader.messages, done)
            if error:
                status, exit_code = "failed", 1
        except (KeyboardInterrupt, Interrupted) as exc:
            status, error, exit_code = interrupted_error(exc)
        finally:
            # ignore further signals while tearing down, so cleanup always completes
            self._restore_signals(old_handlers, ignore=True)
            try:
                self._stop_all(procs)
                reader.stop()
                self._drain(reader.messages, done)
                left = shm.sweep(run_id)
                if left and status == "ok":
                    self.reporter.warn("runner", f"{left} shared-memory segment(s) were left and removed")
                if status != "ok":
                    self._remove_temps(run_dir)
                for qs in queues.values():
                    for q in qs:
                        q.close()
                        q.cancel_join_thread()
                control.close()
                control.cancel_join_thread()
                # the runner's own process counts too (peak RSS summed over every process)
                self.reporter.update(("runner", 0), {"pid": os.getpid(), "stages": [],
                                                     "peak_rss": peak_rss_bytes()})
                profile = self.reporter.finish(status, error)
                shutil.rmtree(run_dir, ignore_errors=True)
            finally:
                self._restore_signals(old_handlers)
        return RunResult(status, profile, error, exit_code)

    # ----- monitoring -------------------------------------------------------------------
    def _monitor(self, procs, control, done) -> dict | None:
        dead_since: dict[tuple, float] = {}
        watch = StallWatch(self.options.stall_timeout_s)
        while True:
            err = self._drain(control, done, timeout=POLL_S)
            if err:
                return err
            if watch.on and watch.stalled(self._progress(procs)):
                return self._stall_error(procs, watch.timeout)
            now = time.monotonic()
            for key, p in procs.items():
                if p.exitcode is None:
                    continue
                if p.exitcode == 0 and key in done:
                    continue
                # exited without saying it was done: give its error report a moment to arrive
                first = dead_since.setdefault(key, now)
                if now - first >= ERROR_GRACE_S:
                    return self._killed_error(key, p)
            if all(p.exitcode == 0 for p in procs.values()) and len(done) == len(procs):
                return None
            if self.cancelled is not None:
                return self._cancel_error()
            self.reporter.tick()

    def _drain(self, control, done, timeout: float = 0.0) -> dict | None:
        """Handle control messages; return the first error reported, if any."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                msg = control.get(timeout=left) if left > 0 else control.get_nowait()
            except queue.Empty:
                return None
            kind = msg[0]
            if kind == "stats":
                self.reporter.update(msg[1], msg[2])
            elif kind == "done":
                done.add(msg[1])
            elif kind == "ready":
                self.ready.add(msg[1])
                if len(self.ready) == self.n_procs:
                    self._on_all_ready()
            elif kind == "total":
                self.reporter.total = msg[1]
            elif kind == "warn":
                self.reporter.warn(msg[1], msg[2])
            elif kind == "error":
                return msg[1]

    def _on_all_ready(self) -> None:
        self.go.set()

    def _progress(self, procs) -> tuple:
        """The state the stall watchdog compares: the processes' snapshots, the beacons, and
        the CPU time of processes still starting (they have sent no snapshot yet)."""
        starting = tuple((key, cpu_seconds(p.pid)) for key, p in procs.items()
                         if key not in self.reporter.processes and p.pid is not None
                         and p.exitcode is None)
        return progress_state(self.reporter.processes, (tuple(self.beacons), starting))

    def _stall_error(self, procs, timeout: float) -> dict:
        """The watchdog fired: ask every live process for what its stages are doing (they
        answer with a file in the run's folder), then describe the stall."""
        live = {key: p for key, p in procs.items() if p.exitcode is None}
        self.stall_request.value += 1
        reports: dict[tuple, list] = {}
        deadline = time.monotonic() + STALL_ANSWER_S
        # a stopped process (SIGSTOP, a debugger) cannot answer: waiting for it is no use
        answering = [key for key, p in live.items() if not _stopped(p.pid)]
        while len(reports) < len(answering) and time.monotonic() < deadline:
            for gname, r in answering:
                path = os.path.join(self.run_dir, f"stall-{gname}-{r}.json")
                if (gname, r) not in reports and os.path.exists(path):
                    try:
                        with open(path) as f:
                            reports[(gname, r)] = json.load(f)
                    except (OSError, ValueError):
                        pass
            time.sleep(0.05)
        silent, silent_keys = [], []
        for key, p in live.items():
            if key in reports:
                continue
            # stopped or frozen: it would not act on SIGTERM either
            stopped = _stopped(p.pid)
            p.kill()
            gname, replica = key
            rep = f"[{replica}]" if self.graph.groups[gname].workers > 1 else ""
            stages = self.graph.groups[gname].stages
            line = (f"process of group '{gname}'{rep} (stages: {', '.join(stages)}) "
                    + ("is stopped (SIGSTOP or a debugger)" if stopped else
                       f"did not answer within {STALL_ANSWER_S:g} s (frozen)"))
            busy = self._in_hand(gname, replica)
            silent.append(line + ("; " + ", ".join(_describe_in_hand(b) for b in busy) if busy else ""))
            silent_keys.append(key)
        replicas = {name: st.workers for name, st in self.graph.stages.items()}
        error = stall_error(timeout, [r for rs in reports.values() for r in rs], silent, replicas)
        busy_reported = any(r["state"] in ("busy", "opening") for rs in reports.values() for r in rs)
        if error["stage"] is None and not busy_reported and len(silent_keys) == 1:
            busy = self._in_hand(*silent_keys[0])
            if len(busy) == 1:      # the silent process had one item in hand: name it
                error["stage"], error["index"] = busy[0][0], busy[0][1]
                error["group"] = silent_keys[0][0]
        return error

    def _in_hand(self, gname: str, replica: int) -> list[tuple]:
        """(stage, first, last) per stage of a process with an item in hand, from the
        beacons (first None: a source between two items)."""
        busy = []
        for s in self.graph.groups[gname].stages:
            slot = self.beacon_slots[(s, replica)]
            first, last = self.beacons[2 * slot], self.beacons[2 * slot + 1]
            if first >= 0:
                busy.append((s, first, last))
            elif last >= 0 and not self.graph.stages[s].ports[0]:
                busy.append((s, None, last))     # a source between two items
        return busy

    def _killed_error(self, key, p) -> dict:
        gname, replica = key
        code = p.exitcode
        how = (f"was killed by signal {signal.Signals(-code).name}" if code < 0
               else f"exited with status {code} without reporting an error")
        stages = self.graph.groups[gname].stages
        # the beacons say which item each stage of that process had in hand when it died
        busy = self._in_hand(gname, replica)
        rep = f"[{replica}]" if self.graph.groups[gname].workers > 1 else ""
        msg = f"process of group '{gname}'{rep} (stages: {', '.join(stages)}) {how}"
        if busy:
            msg += "; " + ", ".join(_describe_in_hand(b) for b in busy)
        stage, index = ((busy[0][0], busy[0][1]) if len(busy) == 1
                        else (stages[0] if len(stages) == 1 else None, None))
        return {"kind": "killed", "stage": stage, "group": gname, "index": index,
                "message": msg, "exitcode": code}

    # ----- teardown ---------------------------------------------------------------------
    def _stop_all(self, procs) -> None:
        alive = [p for p in procs.values() if p.pid is not None and p.exitcode is None]
        for p in alive:
            try:
                p.terminate()
            except Exception:
                pass
        deadline = time.monotonic() + TERM_GRACE_S
        for p in alive:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in alive:
            if p.exitcode is None:
                p.kill()
                p.join(2.0)
        for p in procs.values():
            if p.pid is not None:
                p.join(0.1)
                try:
                    p.close()
                except ValueError:
                    pass

    def _remove_temps(self, run_dir: str) -> None:
        remove_registered_temps(run_dir)

    @staticmethod
    def _install_signals() -> dict | None:
        """SIGTERM raises into the monitor loop (SIGINT already raises KeyboardInterrupt)."""
        try:
            return {signal.SIGTERM: signal.signal(signal.SIGTERM, raise_interrupted),
                    signal.SIGINT: signal.getsignal(signal.SIGINT)}
        except ValueError:   # not in the main thread: leave handlers alone
            return None

    @staticmethod
    def _restore_signals(old: dict | None, ignore: bool = False) -> None:
        if old is None:
            return
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN if ignore else h)


class _ControlReader:
    """Moves control messages from the processes' queue into a local one, in a thread, so
    the monitor never blocks on the pipe: a process stopped or killed while writing a large
    message (a stats snapshot is written in several pieces) leaves it half written, and
    reading it would wait forever. The monitor then still notices the dead process or the
    stall; only this thread stays blocked."""

    STOP = ("stop-reader",)

    def __init__(self, control):
        self.control = control
        self.messages: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="control-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                msg = self.control.get()
            except Exception:       # closed, or a killed writer's garbage
                return
            if msg == self.STOP:
                return
            self.messages.put(msg)

    def stop(self, timeout: float = 1.0) -> None:
        """Once every process is gone: everything they sent is read, then the thread ends."""
        try:
            self.control.put(self.STOP)
        except Exception:
            return
        self.thread.join(timeout)


def _stopped(pid: int) -> bool:
    """Whether a process is stopped (state T or t in /proc; False where unknown)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def _describe_in_hand(busy: tuple) -> str:
    s, a, b = busy
    return f"stage '{s}' was " + (f"producing the item after {b}" if a is None else
                                  f"processing items {a}..{b}" if b > a else
                                  f"processing item {a}")


def remove_registered_temps(run_dir: str) -> None:
    """Delete the temporary files stages registered in the run's scratch folder (the
    unfinished outputs of a failed run)."""
    path = os.path.join(run_dir, "temps.txt")
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            p = line.strip()
            if p and os.path.exists(p):
                try:
                    os.unlink(p)
                except OSError:
                    pass


def _sweep_stale_run_dirs() -> None:
    """Scratch folders of runs whose runner process is gone (killed before cleaning up)."""
    import glob
    import re
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "lipgraph-run-*")):
        m = re.match(r"lipgraph-run-(\d+)x", os.path.basename(path))
        if m and not shm.pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
