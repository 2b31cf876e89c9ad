#!/usr/bin/env python3
"""Frames/s for 1080p RGB frames sent between two processes: lipgraph's shared-memory
transport vs a plain multiprocessing queue that pickles the pixels. Both in one run, with
the same bounded queue and the same consumer work (touching every page of each frame).

    python bench/transport.py [--frames 300] [--queue 4] [--repeat 3]
"""
from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

from _common import parser
from lipgraph.graph import shm

SHAPE = (1080, 1920, 3)


def _touch(frame: np.ndarray) -> int:
    return int(frame.reshape(-1)[::4096].sum())     # one byte per page: the data is really there


def consumer(q, mode: str, n: int, done) -> None:
    total = 0
    for _ in range(n):
        msg = q.get()
        frame = shm.loads(msg) if mode == "shm" else msg
        total += _touch(frame)
    done.put(total)


def run(mode: str, frames: int, queue_size: int) -> float:
    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(maxsize=queue_size), ctx.Queue()
    p = ctx.Process(target=consumer, args=(q, mode, frames, done))
    p.start()
    run_id = shm.new_run_id()
    pool = [np.random.default_rng(i).integers(0, 255, SHAPE, dtype=np.uint8) for i in range(4)]
    q.put(shm.dumps(pool[0], run_id) if mode == "shm" else pool[0])   # warm up the consumer
    t0 = time.perf_counter()
    for i in range(1, frames):
        frame = pool[i % len(pool)]
        q.put(shm.dumps(frame, run_id) if mode == "shm" else frame)
    done.get()
    dt = time.perf_counter() - t0
    p.join()
    shm.sweep(run_id)
    return (frames - 1) / dt


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    mb = np.prod(SHAPE) / 1e6
    print(f"1080p RGB frames ({mb:.1f} MB each), {a.frames} frames, queue {a.queue}, "
          f"best of {a.repeat} alternating runs")
    best = {"pickle": 0.0, "shm": 0.0}
    for _ in range(a.repeat):
        for mode in ("pickle", "shm"):
            best[mode] = max(best[mode], run(mode, a.frames, a.queue))
    for mode, fps in best.items():
        print(f"  {mode:<7} {fps:8.1f} frames/s  {fps * mb / 1e3:6.2f} GB/s")
    print(f"  shared memory / pickled queue: {best['shm'] / best['pickle']:.2f}x")


if __name__ == "__main__":
    main()
