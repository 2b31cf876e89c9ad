"""The process runner: each placement group (each replica of a replicated stage) in its own
spawned process, groups joined by bounded queues, pixel data in shared memory.

The runner's own process only coordinates (`runners.session`). On a failure, a signal or a
stall it stops every process: SIGTERM, then SIGKILL `TERM_GRACE_S` later. A process that dies
without a report (SIGKILL, a crash) is named with the item each of its stages had in hand,
read from a shared array of beacons the stages keep up to date.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import signal
import threading
import time

from lipgraph.graph import shm
from lipgraph.graph.stats import peak_rss_bytes

from .group import GroupLaunch, SharedFlag, group_main
from .session import Placement, RunSession, drain
from .stall import cpu_seconds, progress_state, stall_error
from .transport import edge_queue_count

TERM_GRACE_S = 1.5        # SIGTERM, then SIGKILL after this
STALL_ANSWER_S = 1.5      # the stall watchdog waits this long for each process's stacks


class LocalProcesses(Placement):
    def __init__(self, graph, run_id, run_dir, reporter):
        super().__init__(graph, run_id, run_dir, reporter)
        ctx = mp.get_context("spawn")
        self.queues = {}
        # queues hold named semaphores: named after this process, so that what a SIGKILL of
        # the whole run leaves is swept by the next run (graph/shm.py)
        with shm.named_semaphores():
            for e in graph.edges:
                if graph.is_cross_group(e):
                    n = edge_queue_count(graph.stages[e.src].workers, graph.stages[e.dst].workers)
                    self.queues[e.name] = [ctx.Queue(maxsize=e.queue_size) for _ in range(n)]
            self.control = ctx.Queue()
        self.go_flag = SharedFlag(ctx)
        self.slots = {}
        for name, st in graph.stages.items():
            for r in range(st.workers):
                self.slots[(name, r)] = len(self.slots)
        # per stage replica: first and last index of the message in hand (-1: none)
        self.beacons = ctx.RawArray("q", [-1] * (2 * len(self.slots)))
        self.stall_request = ctx.RawValue("q", 0)
        self.procs: dict[tuple, mp.Process] = {}
        for gname, group in graph.groups.items():
            for r in range(group.workers):
                launch = GroupLaunch(graph, gname, r, run_id, self.queues, self.control, run_dir,
                                     self.trace, os.getpid(), self.beacons, self.slots,
                                     self.go_flag, stall_request=self.stall_request)
                self.procs[(gname, r)] = ctx.Process(target=group_main, args=(launch,),
                                                     name=f"lipgraph:{gname}[{r}]")
        self.workers = list(self.procs)
        self.reader = _ControlReader(self.control)

    def launch(self) -> None:
        # glibc gives each thread its own heap arena (8 per core by default); with a dozen
        # stage threads passing frame-sized buffers around, those heaps fragment and resident
        # memory creeps up over an hour. Two arenas keep it flat at no cost in speed
        # (bench/longvideo.py). Spawned processes inherit it; a value the user set wins.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        for p in self.procs.values():
            p.start()

    def events(self, timeout: float):
        return drain(self.reader.messages, timeout)

    def go(self) -> None:
        self.go_flag.set()

    def ended(self) -> dict:
        return {key: p.exitcode for key, p in self.procs.items() if p.exitcode is not None}

    def progress(self) -> tuple:
        """The processes' snapshots, the beacons, and the CPU time of processes still
        starting (they have sent no snapshot yet)."""
        starting = tuple((key, cpu_seconds(p.pid)) for key, p in self.procs.items()
                         if key not in self.reporter.processes and p.pid is not None
                         and p.exitcode is None)
        return progress_state(self.reporter.processes, (tuple(self.beacons), starting))

    def lost(self, key, code):
        how = (f"was killed by signal {signal.Signals(-code).name}" if code < 0
               else f"exited with status {code} without reporting an error")
        busy = self._in_hand(key)
        stage, index = (busy[0][0], busy[0][1]) if len(busy) == 1 else (None, None)
        return self.lost_error(key, "process", how, [_describe_in_hand(b) for b in busy],
                               stage, index, exitcode=code)

    def stall_error(self, timeout: float):
        """Ask every live process for what its stages are doing (they answer with a file in
        the run's folder); one that cannot answer is named from its beacons and killed."""
        live = {key: p for key, p in self.procs.items() if p.exitcode is None}
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
            busy = self._in_hand(key)
            silent.append(f"{self.name(key, 'process')} "
                          + ("is stopped (SIGSTOP or a debugger)" if stopped else
                             f"did not answer within {STALL_ANSWER_S:g} s (frozen)")
                          + ("; " + ", ".join(_describe_in_hand(b) for b in busy) if busy else ""))
            silent_keys.append(key)
        error = stall_error(timeout, [r for rs in reports.values() for r in rs], silent, self.graph)
        busy_reported = any(r["state"] in ("busy", "opening") for rs in reports.values() for r in rs)
        if error.stage is None and not busy_reported and len(silent_keys) == 1:
            busy = self._in_hand(silent_keys[0])
            if len(busy) == 1:      # the silent process had one item in hand: name it
                error.stage, error.index, error.group = busy[0][0], busy[0][1], silent_keys[0][0]
        return error

    def _in_hand(self, key: tuple) -> list[tuple]:
        """(stage, first, last) per stage of a process with an item in hand, from the
        beacons (first None: a source between two items)."""
        gname, replica = key
        busy = []
        for s in self.graph.groups[gname].stages:
            slot = self.slots[(s, replica)]
            first, last = self.beacons[2 * slot], self.beacons[2 * slot + 1]
            if first >= 0:
                busy.append((s, first, last))
            elif last >= 0 and not self.graph.stages[s].ports[0]:
                busy.append((s, None, last))     # a source between two items
        return busy

    def stop_all(self, failed: bool) -> None:
        procs = self.procs.values()
        alive = [p for p in procs if p.pid is not None and p.exitcode is None]
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
        for p in procs:
            if p.pid is not None:
                p.join(0.1)
                try:
                    p.close()
                except ValueError:
                    pass
        self.reader.stop()
        for q in [q for qs in self.queues.values() for q in qs] + [self.control]:
            q.close()
            q.cancel_join_thread()
        # the runner's own process counts too (peak RSS summed over every process)
        self.reader.messages.put(("stats", ("runner", 0), {"pid": os.getpid(), "stages": [],
                                                          "peak_rss": peak_rss_bytes()}))


class ProcessRunner(RunSession):
    name = "process"
    placement = LocalProcesses


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
