"""Per-stage run statistics, kept in constant memory however long the run.

Every stage thread owns a `StageStats`; every process samples its queue depths into
`DepthSeries` and writes timeline spans through a `TraceWriter`. Snapshots are plain dicts
(JSON-able) sent to the runner, which builds the profile (`graph.profile`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from typing import Any


class LatencyHistogram:
    """Log-bucketed histogram (about 2% relative resolution) for p50/p95 in fixed memory."""

    RATIO = 1.02
    MIN = 1e-5

    def __init__(self, counts: dict | None = None):
        self.counts: dict[int, int] = dict(counts or {})
        self.n = sum(self.counts.values())
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        b = 0 if seconds <= self.MIN else int(math.log(seconds / self.MIN, self.RATIO)) + 1
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def merge(self, other: "LatencyHistogram") -> None:
        for b, c in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + c
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = q * (self.n - 1)
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen > rank:
                if b == 0:
                    return self.MIN
                # bucket b holds [MIN*R^(b-1), MIN*R^b): report its geometric middle
                return self.MIN * self.RATIO ** (b - 0.5)
        return self.max

    def to_dict(self) -> dict:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "total": self.total,
                "max": self.max}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyHistogram":
        h = cls({int(k): v for k, v in d.get("counts", {}).items()})
        h.total, h.max = d.get("total", 0.0), d.get("max", 0.0)
        return h


class DepthSeries:
    """Queue depth over time, decimated to at most `cap` points (halving resolution)."""

    def __init__(self, cap: int = 2048):
        self.cap = cap
        self.points: list[tuple[float, int]] = []
        self.stride = 1
        self._skip = 0
        self.max = 0
        self.sum = 0
        self.n = 0

    def add(self, t: float, depth: int) -> None:
        self.max = max(self.max, depth)
        self.sum += depth
        self.n += 1
        self._skip += 1
        if self._skip < self.stride:
            return
        self._skip = 0
        self.points.append((round(t, 3), depth))
        if len(self.points) >= self.cap:
            self.points = self.points[::2]
            self.stride *= 2

    def to_dict(self) -> dict:
        return {"points": self.points, "max": self.max,
                "mean": (self.sum / self.n) if self.n else 0.0}


@dataclasses.dataclass
class StageStats:
    """Counters and times of one stage (one replica); updated by its thread only."""

    stage: str
    type: str
    group: str
    replica: int = 0
    items_in: int = 0
    items_out: int = 0
    msgs_in: int = 0
    msgs_out: int = 0
    batch_sizes: dict = dataclasses.field(default_factory=dict)   # size of Batch messages taken in
    busy_s: float = 0.0
    wait_s: float = 0.0
    blocked_s: float = 0.0
    setup_s: float = 0.0
    first_t: float | None = None
    last_t: float | None = None
    last_index: int | None = None
    counters: dict = dataclasses.field(default_factory=dict)
    reasons: dict = dataclasses.field(default_factory=dict)
    latency: LatencyHistogram = dataclasses.field(default_factory=LatencyHistogram)
    is_sink: bool = False
    # snapshots are taken from another thread
    lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def took(self, n_items: int, batch: int | None, index: int | None) -> None:
        now = time.monotonic()
        if self.first_t is None:
            self.first_t = now
        self.last_t = now
        self.msgs_in += 1
        self.items_in += n_items
        if batch is not None:
            self.batch_sizes[batch] = self.batch_sizes.get(batch, 0) + 1
        if index is not None:
            self.last_index = index

    def gave(self, n_items: int) -> None:
        self.msgs_out += 1
        self.items_out += n_items
        self.last_t = time.monotonic()
        if self.first_t is None:
            self.first_t = self.last_t

    def count(self, key: str, amount: int = 1, reason: str | None = None) -> None:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + amount
            if reason:
                r = self.reasons.setdefault(key, {})
                r[reason] = r.get(reason, 0) + amount

    def snapshot(self) -> dict:
        with self.lock:
            snap = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "lock"}
            snap.update(batch_sizes={str(k): v for k, v in self.batch_sizes.items()},
                        counters=dict(self.counters), reasons={k: dict(v) for k, v in self.reasons.items()},
                        latency=self.latency.to_dict() if self.is_sink else None)
        return snap


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if os.uname().sysname == "Darwin" else r * 1024
    except Exception:
        return 0


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def cuda_peak_bytes() -> int | None:
    import sys
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_allocated())
    except Exception:
        return None
    return None


class TraceWriter:
    """Chrome Trace Event spans of one process, appended to a JSON-lines file as they come.

    Spans per stage are thinned as a run grows (all of the first 20k, then 1 in 10, then 1 in
    100 past 200k) so an hour-long run yields a file Perfetto still opens.
    """

    def __init__(self, path: str | None, pid: int, process_name: str):
        self.path = path
        self.pid = pid
        self.lock = threading.Lock()
        self.buf: list[str] = []
        self.counts: dict[int, int] = {}
        self.f = open(path, "a", encoding="utf-8") if path else None
        self._emit({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                    "args": {"name": process_name}})

    def _emit(self, ev: dict) -> None:
        if self.f is None:
            return
        with self.lock:
            self.buf.append(json.dumps(ev, separators=(",", ":")))
            if len(self.buf) >= 512:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self.f and self.buf:
            self.f.write("\n".join(self.buf) + "\n")
            self.f.flush()
            self.buf.clear()

    def thread_name(self, tid: int, name: str) -> None:
        self._emit({"ph": "M", "name": "thread_name", "pid": self.pid, "tid": tid,
                    "args": {"name": name}})

    def span(self, tid: int, name: str, start: float, end: float, args: dict | None = None) -> None:
        if self.f is None:
            return
        n = self.counts.get(tid, 0) + 1
        self.counts[tid] = n
        keep = 1 if n <= 20_000 else (10 if n <= 200_000 else 100)
        if n % keep:
            return
        ev = {"ph": "X", "name": name, "pid": self.pid, "tid": tid,
              "ts": round(start * 1e6, 1), "dur": round((end - start) * 1e6, 1)}
        if args:
            ev["args"] = args
        self._emit(ev)

    def counter(self, name: str, t: float, values: dict) -> None:
        self._emit({"ph": "C", "name": name, "pid": self.pid, "tid": 0,
                    "ts": round(t * 1e6, 1), "args": values})

    def flush(self) -> None:
        """Write what is buffered (someone wants the file now: a run that is being stopped)."""
        with self.lock:
            self._flush_locked()

    def close(self) -> None:
        with self.lock:
            self._flush_locked()
            if self.f:
                self.f.close()
                self.f = None
