#!/usr/bin/env python3
"""Flat memory on long videos: the MuseTalk graph on synthetic clips of 1, 10 and 60 minutes
(face runs and cutaway runs, small frames so it runs on a laptop CPU, tiny random models),
printing the peak RSS summed over every process of each run and the ratio to the shortest.

    python bench/longvideo.py [--minutes 1 10 60] [--size 160x120] [--keep DIR]

Peak RSS is each process's high-water mark (VmHWM), summed: an upper bound of the true peak
of the sum. The profile of each run is kept beside its output.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# as bench._common: tests import this module from the repository's root
from bench._common import (MUSETALK, frame_size, parser, random_models, timed_graph_run,  # noqa: E402
                           work_folder, write_json)


def run_length(folder: str, minutes: float, size: tuple[int, int], weights: dict,
               extra: list[str]) -> dict:
    from lipgraph.tools.synthetic import graph_command, make_long_clip, model_sets
    tag = f"{minutes:g}min"
    video, audio = os.path.join(folder, f"{tag}.mp4"), os.path.join(folder, f"{tag}.wav")
    if not (os.path.exists(video) and os.path.exists(audio)):
        make_long_clip(folder, minutes, width=size[0], height=size[1], name=tag)
    out = os.path.join(folder, f"out-{tag}.mp4")
    cmd = graph_command(MUSETALK, video, audio, out,
                        model_sets(weights) + ["mux.preset=ultrafast", "batch.batch_size=16"] + extra,
                        "--no-trace")
    wall = timed_graph_run(cmd, f"{tag} run")
    prof = json.load(open(out + ".profile.json"))
    return {"minutes": minutes, "frames": prof["items_done"], "wall_s": wall,
            "peak_rss_bytes": prof["peak_rss_total_bytes"],
            "per_process": {f"{p['group']}[{p['replica']}]": p["peak_rss_bytes"] for p in prof["processes"]},
            "bottleneck": (prof.get("bottleneck") or {}).get("stage")}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--size", default="160x120")
    ap.add_argument("--keep", default=None, help="folder for inputs and outputs (reused)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    size = frame_size(a.size)
    folder = work_folder(a.keep, "lipgraph-long-")
    weights = random_models(folder)
    rows = []
    for m in a.minutes:
        r = run_length(folder, m, size, weights, a.sets)
        rows.append(r)
        print(f"{m:6g} min  {r['frames']:7d} frames  {r['wall_s']:8.1f} s  "
              f"{r['frames'] / r['wall_s']:6.1f} frames/s  peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB  "
              f"({', '.join(f'{k} {v / 2**20:.0f}' for k, v in r['per_process'].items())})", flush=True)
    base = rows[0]["peak_rss_bytes"]
    for r in rows[1:]:
        print(f"peak RSS {r['minutes']:g} min / {rows[0]['minutes']:g} min: "
              f"{r['peak_rss_bytes'] / base:.3f}")
    write_json(os.path.join(folder, "longvideo.json"), rows)


if __name__ == "__main__":
    main()
