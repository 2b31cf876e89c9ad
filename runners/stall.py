"""The stall watchdog: a run in which nothing moves for `stall_timeout_s` seconds (no stage
finished an item, no message moved, no heartbeat) is stopped like a failed one, since a hung
stage would otherwise hold the whole pipeline forever (graph/README.md, Stalls). When it
fires the placement collects what each stage's thread is doing (`stage_report`) and fails
the run with `stall_error`, naming the stuck stage(s), the item and the stack.

Setup moves no messages: there, CPU time counts as progress instead (a process importing, a
thread loading a model); a process stopped or stuck in the kernel uses none.
"""
from __future__ import annotations

import os
import time
import traceback

from .errors import RunError, describe_where

BUSY = ("busy", "opening")          # states in which a thread is inside a stage's own code
STACK_FRAMES = 25                   # innermost frames shown per stuck thread
_ENGINE = os.path.join("runners", "runtime.py")


class StallWatch:
    """Seconds since the observed progress state last changed."""

    def __init__(self, timeout_s: float | None):
        self.timeout = float(timeout_s or 0)
        self.state = None
        self.since = time.monotonic()

    @property
    def on(self) -> bool:
        return self.timeout > 0

    def stalled(self, state=None) -> bool:
        """Record the current progress state; True once it has not changed for the timeout."""
        now = time.monotonic()
        if state is not None and state != self.state:
            self.state, self.since = state, now
            return False
        return self.on and now - self.since >= self.timeout


def progress_state(processes: dict, extra=()) -> tuple:
    """What changes whenever anything moves: per process snapshot, the data messages each
    stage took and gave, the heartbeats and the CPU time of a thread opening a stage (times
    are left out: they change regardless)."""
    out = []
    for key in sorted(processes, key=str):
        snap = processes[key]
        out.append((key, snap.get("pulse", 0), snap.get("open_cpu"),
                    tuple((s["stage"], s.get("replica"), s["msgs_in"], s["msgs_out"])
                          for s in snap.get("stages", []))))
    return tuple(out), tuple(extra)


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """CPU time (user + system) of a process, or of one of its threads (Linux; else None)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        with open(path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def opening_cpu(runtimes) -> float | None:
    """CPU time of the thread of this process that is opening a stage, if one is."""
    for rt in runtimes:
        if rt.activity[0] == "opening" and getattr(rt, "native_id", None) is not None:
            return cpu_seconds(os.getpid(), rt.native_id)
    return None


def format_stack(frame) -> str:
    """The stack of a thread inside stage code, from the stage's own frames inwards (the
    runner's frames above the call into the stage are left out)."""
    frames = traceback.extract_stack(frame)
    engine = [i for i, f in enumerate(frames) if f.filename.endswith(_ENGINE)]
    if engine and engine[-1] + 1 < len(frames):
        frames = frames[engine[-1] + 1:]
    frames = frames[-STACK_FRAMES:]
    return "".join(traceback.format_list(frames))


def stage_report(rt, frames: dict, replica: int = 0) -> dict:
    """What one stage's thread is doing (a `runners.runtime.StageRuntime`), JSON-ready."""
    state, detail, since = rt.activity
    report = {"stage": rt.stage.name, "type": rt.stats.type, "group": rt.stats.group,
              "replica": replica, "state": state, "detail": detail,
              "for_s": round(time.monotonic() - since, 1), "index": rt.current,
              "last": rt.current_last, "after": rt.emitted if rt.is_source else None,
              "stack": None}
    frame = frames.get(rt.thread_ident) if rt.thread_ident is not None else None
    if state in BUSY and frame is not None:
        report["stack"] = format_stack(frame)
    return report


def _where(r: dict) -> str:
    if r["index"] is None and r["after"] is None:
        return "outside any item"
    return describe_where(r["index"], r["after"], r["last"])


def _name(r: dict, replicas: dict) -> str:
    rep = f"[{r['replica']}]" if replicas.get(r["stage"], 1) > 1 else ""
    return f"stage '{r['stage']}'{rep}"


def stall_error(timeout: float, reports: list[dict], silent: list[str] | None = None,
                graph=None) -> RunError:
    """The run's error once the watchdog fired. `reports`: `stage_report`s of every stage
    that answered; `silent`: one line per process that could not answer (stopped, frozen)."""
    replicas = {name: st.workers for name, st in graph.stages.items()} if graph else {}
    silent = silent or []
    busy = [r for r in reports if r["state"] in BUSY]
    lines = [f"stalled: nothing moved for {timeout:g} s (no stage finished an item, no message "
             f"moved; --stall-timeout {timeout:g})"]
    for r in busy:
        lines.append(f"{_name(r, replicas)} ({r['type']}, group {r['group']}) is stuck "
                     f"{_where(r)}, in {r['detail']}() for {r['for_s']:g} s"
                     + ("; its thread is at:" if r["stack"] else ""))
        if r["stack"]:
            lines.append(r["stack"].rstrip("\n"))
    lines += silent
    if not busy and not silent:
        lines.append("no stage is inside its own code (every stage waits on another)")
    rest = [r for r in reports if r["state"] not in BUSY and r["state"] != "done"]
    if rest:
        def state(r):
            what = (f"waiting for {r['detail']}" if r["state"] == "waiting" and r["detail"] else
                    f"blocked on output '{r['detail']}'" if r["state"] == "blocked" else r["state"])
            return f"{_name(r, replicas)} {what} for {r['for_s']:g} s"
        lines.append("other stages: " + "; ".join(state(r) for r in rest))
    one = busy[0] if len(busy) == 1 else None
    return RunError("stalled", "\n".join(lines), stage=one["stage"] if one else None,
                    group=one["group"] if one else None, index=one["index"] if one else None,
                    stacks={f"{r['stage']}[{r['replica']}]": r["stack"] for r in busy if r["stack"]})
