#!/usr/bin/env python3
"""Re-dubbing the same footage: the second language reuses the prepared-video cache.

Runs the MuseTalk graph three times on one clip, in one run: dub A with `--cache` (computes
everything and fills the cache), dub B without the cache (what a re-dub costs otherwise),
and dub B with the cache (detection, crops, VAE encodes and parsing skipped). Prints the
wall and streaming times, the speed-up of the cached re-dub, and the cache's size.

    python bench/redub.py [--frames 300] [--size 640x360] [--models tiny|full] [--device cpu]
"""
from __future__ import annotations

import json
import os

from _common import (MUSETALK, frame_size, model_args, parser, random_models, timed_graph_run,
                     work_folder)
from lipgraph.tools.synthetic import clip_pattern, graph_command, make_clip, model_sets, speech_like, write_wav


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--frames", type=int, default=300)
    model_args(ap, "640x360")
    a = ap.parse_args()
    w, h = frame_size(a.size)
    folder = work_folder(a.keep, "lipgraph-redub-")
    weights = random_models(folder, a.models)
    video, dub_a = make_clip(folder, clip_pattern(a.frames), width=w, height=h)
    dub_b = os.path.join(folder, "dub_b.wav")
    write_wav(dub_b, 0.8 * speech_like(a.frames / 25.0)[::-1].copy())
    cache = os.path.join(folder, "cache")
    sets = model_sets(weights, a.device) + ["mux.preset=veryfast"]
    runs = [("dub A, filling the cache", dub_a, True), ("dub B, no cache", dub_b, False),
            ("dub B, from the cache", dub_b, True)]
    results = []
    for label, audio, use_cache in runs:
        out = os.path.join(folder, f"out-{len(results)}.mp4")
        cmd = graph_command(MUSETALK, video, audio, out, sets, "--quiet", "--no-trace",
                            *(["--cache", cache] if use_cache else []))
        wall = timed_graph_run(cmd, label)
        prof = json.load(open(out + ".profile.json"))
        results.append((label, wall, prof["stream_wall_s"], prof))
        print(f"  {label:<26} {wall:7.2f} s wall, {prof['stream_wall_s']:7.2f} s streaming, "
              f"bottleneck {prof['bottleneck']['stage']}", flush=True)
    (_, w_fill, s_fill, _), (_, w_plain, s_plain, _), (_, w_cached, s_cached, p) = results
    hits = p["stages"]["cache_in"]["counters"].get("cache_hits", 0)
    print(f"\nclip: {a.frames} frames at {w}x{h}, {a.models} models, {a.device}")
    print(f"re-dub from the cache vs without: {w_plain / w_cached:.2f}x wall, "
          f"{s_plain / s_cached:.2f}x streaming ({hits}/{a.frames} frames from the cache)")
    print(f"re-dub from the cache vs the first run (which filled it): {w_fill / w_cached:.2f}x wall")
    print(f"cache size: {dir_size(cache) / 2**20:.1f} MiB ({dir_size(cache) / a.frames / 1024:.1f} KiB/frame)")


if __name__ == "__main__":
    main()
