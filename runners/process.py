"""The process runner: each placement group (each replica) in its own spawned process, groups
joined by bounded queues, pixel data in shared memory. A process that dies without a report
is named with the item each of its stages had in hand, read from a shared array of beacons.
"""
from __future__ import annotations

import contextlib
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
from .stall import BUSY, cpu_seconds, progress_state, stall_error
from .transport import edge_queues

TERM_GRACE_S = 1.5        # SIGTERM, then SIGKILL after this
STALL_ANSWER_S = 1.5      # the stall watchdog waits this long for each process's stacks


class LocalProcesses(Placement):
    def __init__(self, graph, run_id, run_dir, reporter):
        super().__init__(graph, run_id, run_dir, reporter)
        ctx = mp.get_context("spawn")
        # queues hold named semaphores: named after this process, so that what a SIGKILL of
        # the whole run leaves is swept by the next run (graph/shm.py)
        with shm.named_semaphores():
            self.queues = edge_queues(graph, lambda e, _: ctx.Queue(maxsize=e.queue_size))
            self.control = ctx.Queue()
        self.go_flag = SharedFlag(ctx)
        replicas = [(name, r) for name, st in graph.stages.items() for r in range(st.workers)]
        self.slots = {key: i for i, key in enumerate(replicas)}
        # per stage replica: first and last index of the message in hand (-1: none)
        self.beacons = ctx.RawArray("q", [-1] * (2 * len(self.slots)))
        self.stall_request = ctx.RawValue("q", 0)
        self.procs: dict[tuple, mp.Process] = {}
        for key in self.workers:
            launch = GroupLaunch(graph, *key, run_id, self.queues, self.control, run_dir, self.trace,
                                 os.getpid(), self.beacons, self.slots, self.go_flag,
                                 stall_request=self.stall_request)
            self.procs[key] = ctx.Process(target=group_main, args=(launch,), name="lipgraph:%s[%s]" % key)
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
        return self.lost_error(key, how, [_describe_in_hand(b) for b in busy],
                               stage, index, exitcode=code)

    def stall_error(self, timeout: float):
        """Ask every live process for what its stages are doing (they answer with a file in
        the run's folder); one that cannot answer is named from its beacons and killed."""
        live = {key: p for key, p in self.procs.items() if p.exitcode is None}
        self.stall_request.value += 1
        reports: dict[tuple, list] = {}
        deadline = time.monotonic() + STALL_ANSWER_S
        # a stopped process (SIGSTOP, a debugger) cannot answer: waiting for it is no use
        waiting = {key for key, p in live.items() if not _stopped(p.pid)}
        while waiting and time.monotonic() < deadline:
            for key in list(waiting):
                try:
                    with open(os.path.join(self.run_dir, "stall-%s-%s.json" % key)) as f:
                        reports[key] = json.load(f)
                    waiting.discard(key)
                except (OSError, ValueError):       # not written yet
                    pass
            time.sleep(0.05)
        silent = [key for key in live if key not in reports]
        lines = []
        for key in silent:
            # stopped or frozen: it would not act on SIGTERM either
            stopped = _stopped(live[key].pid)
            live[key].kill()
            lines.append(self.lost_error(key, "is stopped (SIGSTOP or a debugger)" if stopped else
                                         f"did not answer within {STALL_ANSWER_S:g} s (frozen)",
                                         [_describe_in_hand(b) for b in self._in_hand(key)]).message)
        answers = [r for rs in reports.values() for r in rs]
        error = stall_error(timeout, answers, lines, self.graph)
        if error.stage is None and len(silent) == 1 and not any(r["state"] in BUSY for r in answers):
            busy = self._in_hand(silent[0])
            if len(busy) == 1:      # the silent process had one item in hand: name it
                error.stage, error.index, error.group = busy[0][0], busy[0][1], silent[0][0]
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
            with contextlib.suppress(Exception):
                p.terminate()
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
                with contextlib.suppress(ValueError):
                    p.close()
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
