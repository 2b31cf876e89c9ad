#!/usr/bin/env python3
"""Frames/s of the whole MuseTalk graph: the process runner (stage groups in parallel
processes) against the inline runner (everything in one thread), same clip, same models,
in one run; then the process run's per-stage table.

Models have random weights (tiny by default, `--models full` for the real sizes), so the
mouths are meaningless but the work per frame is real. The clip is a face photograph with
cutaway runs (40 face frames, 10 cutaway frames).

    python bench/pipeline.py [--frames 150] [--size 640x360] [--models tiny|full]
                             [--device cpu|cuda] [--batch 8]
"""
from __future__ import annotations

import os
import time

from _common import MUSETALK, frame_size, model_args, parser, random_models, work_folder, write_json
from lipgraph.graph.profile import format_table
from lipgraph.graph.spec import load_graph
from lipgraph.runners import RunOptions, get_runner
from lipgraph.tools.synthetic import clip_pattern, make_clip, model_sets


def run(runner: str, sets: list[str], profile: str) -> dict:
    graph = load_graph(MUSETALK, sets)
    t = time.perf_counter()
    res = get_runner(runner)(graph, RunOptions(profile_path=profile, progress=False,
                                               table=False)).run()
    wall = time.perf_counter() - t
    if not res.ok:
        raise SystemExit(f"{runner} run failed: {res.error}")
    prof = res.profile
    prof["bench_wall_s"] = wall
    return prof


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--frames", type=int, default=150)
    model_args(ap, "640x360")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--detect-every", type=int, default=1)
    a = ap.parse_args()
    w, h = frame_size(a.size)
    folder = work_folder(a.keep, "lipgraph-bench-")
    print(f"preparing {a.frames} frames at {w}x{h} and {a.models} random models in {folder} ...")
    weights = random_models(folder, a.models)
    pattern = clip_pattern(a.frames)
    video, audio = make_clip(folder, pattern, width=w, height=h)
    faces = pattern.count("F")
    results = {}
    for runner in ("process", "inline"):
        out = os.path.join(folder, f"out-{runner}.mp4")
        sets = model_sets(weights, a.device) + [
            f"video.path={video}", f"audio.path={audio}", f"video.audio={audio}",
            f"mux.audio={audio}", f"mux.path={out}", f"batch.batch_size={a.batch}",
            f"detect.detect_every={a.detect_every}", "mux.preset=veryfast"]
        results[runner] = run(runner, sets, out + ".profile.json")
    print(f"\nclip: {a.frames} frames ({faces} with a face, {a.frames - faces} cutaways), "
          f"{w}x{h}, models {a.models}, device {a.device}, batch {a.batch}")
    for runner, prof in results.items():
        fps = a.frames / prof["stream_wall_s"] if prof["stream_wall_s"] else float("nan")
        print(f"  {runner:<8} {fps:7.2f} frames/s streaming ({prof['stream_wall_s']:.2f} s), "
              f"{prof['bench_wall_s']:.2f} s with setup, peak RSS "
              f"{prof['peak_rss_total_bytes'] / 2**20:.0f} MiB")
    ratio = results["inline"]["stream_wall_s"] / results["process"]["stream_wall_s"]
    print(f"  process / inline: {ratio:.2f}x")
    print("\nper-stage profile of the process run:\n")
    print(format_table(results["process"]))
    write_json(os.path.join(folder, "bench-pipeline.json"),
               {k: {"stream_wall_s": v["stream_wall_s"], "wall_s": v["bench_wall_s"]}
                for k, v in results.items()})


if __name__ == "__main__":
    main()
