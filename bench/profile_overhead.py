#!/usr/bin/env python3
"""What always-on profiling costs per message, measured in one run.

Drives a trivial stage (so the bookkeeping is all there is to measure) three ways:
  bare      the stage's own generator, no runtime
  stats     through StageRuntime: counters, busy/blocked timing, latency at sinks
  trace     the same plus Chrome-trace spans written to a file
and prints microseconds per message and the share of a 1 ms/frame stage it would be.

    python bench/profile_overhead.py [--messages 200000]
"""
from __future__ import annotations

import os
import tempfile
import time

from _common import parser
from lipgraph.graph.items import Item
from lipgraph.graph.stats import StageStats, TraceWriter
from lipgraph.runners.runtime import StageRuntime
from lipgraph.stages.synthetic import SyntheticMap


class _Null:
    def put(self, msg) -> float:
        return 0.0


def bench(mode: str, n: int) -> float:
    stage = SyntheticMap("map", {})
    items = [Item(i, {"trail": []}) for i in range(n)]
    if mode == "bare":
        t = time.perf_counter()
        for it in items:
            for _ in stage.process(it, "in"):
                pass
        return (time.perf_counter() - t) / n
    tmp = None
    trace = None
    if mode == "trace":
        fd, tmp = tempfile.mkstemp(suffix=".jsonl")
        os.close(fd)
        trace = TraceWriter(tmp, os.getpid(), "bench")
    rt = StageRuntime(stage, StageStats("map", "synthetic_map", "g"), {"out": _Null()}, trace, 1)
    t = time.perf_counter()
    for it in items:
        rt.handle("in", it)
    dt = (time.perf_counter() - t) / n
    if trace:
        trace.close()
        os.unlink(tmp)
    return dt


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--messages", type=int, default=200_000)
    a = ap.parse_args()
    res = {}
    for mode in ("bare", "stats", "trace", "bare", "stats", "trace"):   # interleaved, best of 2
        v = bench(mode, a.messages)
        res[mode] = min(res.get(mode, v), v)
    print(f"{a.messages} messages through a trivial stage:")
    for mode, v in res.items():
        print(f"  {mode:<6} {v * 1e6:7.2f} us/message")
    over_s, over_t = res["stats"] - res["bare"], res["trace"] - res["bare"]
    print(f"  profiling overhead: {over_s * 1e6:.2f} us/message without trace, "
          f"{over_t * 1e6:.2f} us/message with trace")
    print(f"  = {100 * over_t / 1e-3:.2f}% of a stage that spends 1 ms per frame "
          f"(trace thins spans past 20k per stage)")


if __name__ == "__main__":
    main()
