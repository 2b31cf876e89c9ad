#!/usr/bin/env python3
"""The CPU side of the MuseTalk graph alone: core-milliseconds per 1080p frame for each CPU
stage, and the CPU side's throughput with 1 and 2 workers.

The graph is `bench/cpu_side.yaml`: the MuseTalk graph with every model stage replaced by a
stand-in (stages/standins.py), so on a GPU machine this is what the cores must do per frame
whatever the GPU does. Core-ms are CPU time, not wall time, measured in one process (the
inline runner) as the difference between a long and a short clip, so start-up costs cancel:
- per stage: the CPU time of the thread running the stage while it handles its messages
  (OpenCV's own thread pool is set to one thread for this run so its work is counted);
- `helper threads`: the rest of the process's CPU time: FFmpeg's encoder (and decoder)
  threads, which work beside the stages.
`core-ms per frame` is the whole process's CPU time per frame. With 16 cores, 300 fps needs
at most 53 core-ms per frame. Throughput: the process runner on the same clip, wall-clock
frames per second with `workers` 1 and 2 on crop and blend (and encoder threads 1 or 2).

    python bench/cpu_side.py [--size 1920x1080] [--frames 90] [--preset veryfast] [--encoders 2]
"""
from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import cv2

from _common import frame_size, parser, write_json
from lipgraph.graph.spec import load_graph
from lipgraph.runners import RunOptions, get_runner
from lipgraph.tools.synthetic import clip_pattern, make_clip

GRAPH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_side.yaml")


def face_clip(folder: str, frames: int, w: int, h: int) -> tuple[str, str, str, list]:
    """A clip of face runs of 40 and cutaways of 10, the face 0.9 of the frame's height; its
    paths, pattern and the face's box."""
    pattern = clip_pattern(frames, 40, 10)
    side = h * 9 // 10
    video, audio = make_clip(folder, pattern, name=f"clip-{frames}", width=w, height=h, crf=18, side=side)
    # the astronaut's face inside the photograph (0.35..0.53 x 0.13..0.32 of its side)
    x0, y0 = (w - side) // 2, (h - side) // 2 + 10
    box = [int(x0 + 0.30 * side), int(y0 + 0.08 * side), int(x0 + 0.58 * side), int(y0 + 0.40 * side)]
    return video, audio, pattern, box


ENCODERS = "auto"      # mux.encoders for every run (--encoders)


def run_job(graph, runner: str):
    """Run as the command line does: the output written in segments (so mux.encoders counts)."""
    from lipgraph.runners import job
    job.prepare(graph, False)
    return get_runner(runner)(graph, RunOptions(progress=False, table=False)).run()


def sets_for(video, audio, out, pattern, box, preset):
    return {"video.path": video, "video.audio": audio, "mux.audio": audio, "mux.path": out,
            "faces.pattern": pattern, "faces.box": box, "mux.preset": preset,
            "mux.encoders": ENCODERS}


def graph_with_workers(workers: int, work: str) -> str:
    """bench/cpu_side.yaml with `workers` replicas of crop and blend."""
    import yaml
    with open(GRAPH) as f:
        raw = yaml.safe_load(f)
    for name in ("crop", "blend"):
        raw["stages"][name]["workers"] = workers
    path = os.path.join(work, f"cpu_side-{workers}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    return path


class StageClock:
    """Thread CPU time of every stage's handlers (the inline runner calls them in turn)."""

    def __init__(self):
        self.cpu = defaultdict(float)
        self.patched = []

    def wrap(self, cls, name):
        for meth in ("generate", "process", "finish", "on_eos", "close", "open"):
            orig = cls.__dict__.get(meth)
            if orig is None:
                continue
            clock = self

            def timed(self_, *args, _orig=orig, _key=name, **kwargs):
                t = time.thread_time()
                out = _orig(self_, *args, **kwargs)
                clock.cpu[_key] += time.thread_time() - t
                if out is None or isinstance(out, (list, tuple)):
                    return out
                return clock._timed_iter(out, _key)
            setattr(cls, meth, timed)
            self.patched.append((cls, meth, orig))

    def _timed_iter(self, it, key):
        it = iter(it)
        while True:
            t = time.thread_time()
            try:
                value = next(it)
            except StopIteration:
                self.cpu[key] += time.thread_time() - t
                return
            self.cpu[key] += time.thread_time() - t
            yield value

    def restore(self):
        for cls, meth, orig in reversed(self.patched):
            setattr(cls, meth, orig)


def measure_inline(video, audio, pattern, box, preset, work) -> tuple[dict, float, int]:
    out = os.path.join(work, "inline-" + os.path.basename(video))
    sets = sets_for(video, audio, out, pattern, box, preset)
    sets["video.threads"] = "1"                        # the decoder works in the stage's thread
    graph = load_graph(GRAPH, sets)
    clock = StageClock()
    for name, spec in graph.stages.items():
        clock.wrap(spec.cls, name)
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        res = run_job(graph, "inline")
    finally:
        clock.restore()
    after = resource.getrusage(resource.RUSAGE_SELF)
    if not res.ok:
        raise SystemExit(f"inline run failed: {res.error}")
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dict(clock.cpu), total, len(pattern)


def measure_wall(video, audio, pattern, box, preset, work, workers) -> float:
    out = os.path.join(work, f"proc-{workers}.mp4")
    graph = load_graph(graph_with_workers(workers, work), sets_for(video, audio, out, pattern, box, preset))
    t = time.perf_counter()
    res = run_job(graph, "process")
    wall = time.perf_counter() - t
    if not res.ok:
        raise SystemExit(f"process run failed: {res.error}")
    return wall


def measure(w: int, h: int, frames: int, preset: str | None = None, workers=(1, 2),
            work: str | None = None) -> dict:
    """Core-ms per frame (per stage, helper threads, total) and throughput per worker count."""
    preset = preset or load_graph(GRAPH, {"video.path": "x", "mux.path": "y.mp4"}).stages["mux"].params["preset"]
    own = work is None
    work = work or tempfile.mkdtemp(prefix="lipgraph-cpu-side-")
    short, long_ = max(10, frames // 3), frames
    clips = {n: face_clip(work, n, w, h) for n in (short, long_)}
    cv2.setNumThreads(1)            # OpenCV's pool would work outside the stage threads
    try:
        runs = {n: measure_inline(*clips[n], preset, work) for n in (short, long_)}
    finally:
        cv2.setNumThreads(-1)
    (cs, ts, ns), (cl, tl, nl) = runs[short], runs[long_]
    n = nl - ns
    stages = {k: (cl.get(k, 0.0) - cs.get(k, 0.0)) * 1e3 / n for k in cl}
    total = (tl - ts) * 1e3 / n
    result = {"size": f"{w}x{h}", "preset": preset, "frames": [ns, nl], "core_ms_per_frame": total,
              "stage_core_ms": stages, "helper_threads_core_ms": total - sum(stages.values()),
              "fps_16_cores": 16000 / total, "throughput": {}}
    for k in workers:
        walls = {m: measure_wall(*clips[m], preset, work, k) for m in (short, long_)}
        extra = walls[long_] - walls[short]
        # start-up varies by a second or so: too short a clip gives no honest rate
        result["throughput"][str(k)] = (long_ - short) / extra if extra > 0.5 else None
    rates = [v for v in result["throughput"].values() if v]
    result["fps"] = max(rates) if rates else None
    if own:
        shutil.rmtree(work, ignore_errors=True)
    return result


def measure_cpu_side(work: str, reduced: bool) -> dict:
    """bench/device.py's section 4: the same measurement at the device benchmark's size."""
    w, h, frames = (320, 240, 30) if reduced else (1920, 1080, 90)
    folder = os.path.join(work, "cpu_side")
    os.makedirs(folder, exist_ok=True)
    return measure(w, h, frames, workers=(1,) if reduced else (1, 2), work=folder)


def report(r: dict) -> None:
    ns, nl = r["frames"]
    print(f"{r['size']}, mux.preset={r['preset']}, mux.encoders={ENCODERS}, {nl} - {ns} frames "
          "(faces 4 of 5), core-ms per frame:")
    for k, v in sorted(r["stage_core_ms"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:14s} {v:8.1f}")
    print(f"  {'helper threads':14s} {r['helper_threads_core_ms']:8.1f}   (FFmpeg's encoder and decoder threads)")
    print(f"core-ms per frame: {r['core_ms_per_frame']:.1f}")
    print(f"16 cores at this cost: {r['fps_16_cores']:.0f} fps")
    for k, fps in r["throughput"].items():
        shown = f"{fps:.1f} fps" if fps else "n/a (clip too short to tell from start-up)"
        print(f"throughput, {k} worker(s): {shown} (start-up cancelled)")


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--preset", default=None, help="mux.preset (default: the graph's)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--encoders", default="auto", help="mux.encoders (segments encoded at once)")
    ap.add_argument("--json", default="", help="also write the figures here")
    args = ap.parse_args(argv)
    global ENCODERS
    ENCODERS = args.encoders
    w, h = frame_size(args.size)
    r = measure(w, h, args.frames, args.preset, [int(x) for x in args.workers.split(",") if x])
    report(r)
    if args.json:
        write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
