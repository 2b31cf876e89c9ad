#!/usr/bin/env python3
"""Scaling out one long clip: the MuseTalk graph as 1 pipeline and as N parts side by side
(segment parallelism), on Ray (local unless --address), in one run; prints frames/s of each
and the speed-up. On a machine with few cores the gain is bounded by the cores (and, with
GPUs, by the GPUs: each part's GPU group asks for one).

    python bench/scaleout.py [--minutes 2] [--parts 2] [--size 160x120] [--address ADDR]
                             [--models tiny|full] [--device cpu|cuda]
"""
from __future__ import annotations

import os

from _common import MUSETALK, frame_size, model_args, parser, random_models, timed_graph_run, work_folder
from lipgraph.tools.synthetic import graph_command, make_long_clip, model_sets


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--parts", type=int, default=2)
    model_args(ap, "160x120")
    ap.add_argument("--address", default=None)
    a = ap.parse_args()
    w, h = frame_size(a.size)
    folder = work_folder(a.keep, "lipgraph-scaleout-")
    weights = random_models(folder, a.models)
    video, audio = make_long_clip(folder, a.minutes, width=w, height=h, face_run=100, period=200)
    frames = int(round(a.minutes * 60 * 25))
    sets = model_sets(weights, a.device) + ["mux.preset=ultrafast", "batch.batch_size=16"]
    extra = ["--runner", "ray"] + (["--address", a.address] if a.address else [])
    results = {}
    for parts in (1, a.parts):
        out = os.path.join(folder, f"out-{parts}.mp4")
        cmd = graph_command(MUSETALK, video, audio, out, sets, "--quiet", "--no-trace", *extra,
                            "--parallel", str(parts))
        wall = results[parts] = timed_graph_run(cmd, f"{parts} part(s)")
        print(f"  {parts} part(s): {wall:7.1f} s, {frames / wall:6.1f} frames/s (setup included)",
              flush=True)
    print(f"\n{frames} frames ({a.minutes:g} min, half with a face) at {w}x{h}, {a.models} models, "
          f"{a.device}, {os.cpu_count()} CPU cores")
    print(f"{a.parts} parts vs 1: {results[1] / results[a.parts]:.2f}x")


if __name__ == "__main__":
    main()
