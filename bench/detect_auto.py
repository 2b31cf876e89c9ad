#!/usr/bin/env python3
"""Detection's cost per frame and the faces it misses: `detect_every` 1 against `auto`
(every 8th frame plus both sides of each shot change), on generated clips with face runs
and cutaways, in one run. A face counts as missed on a frame where detecting every frame
finds one and `auto` gives none; "bridged" counts the opposite: frames where the detector
alone drops a face for a frame inside a face run and `auto`'s interpolation keeps it.

The detector is S3FD when its weights are found (`--weights`), else OpenCV's Haar cascade.

    python bench/detect_auto.py [--size 1920x1080] [--frames 200] [--weights DIR]
"""
from __future__ import annotations

import sys
import time

from _common import frame_size, parser
from lipgraph.graph.items import Item
from lipgraph.graph.stage import StageContext
from lipgraph.stages.face_detect import FaceDetect
from lipgraph.tools.synthetic import clip_pattern, cutaway_frame, face_frame


class Counts(StageContext):
    def __init__(self):
        self.counts = {}

    def count(self, key, amount=1, reason=None):
        self.counts[key] = self.counts.get(key, 0) + amount


def run(frames, every: str, weights: str):
    ctx = Counts()
    stage = FaceDetect("detect", {"detect_every": every, "weights": weights, "device": "cpu"}, ctx)
    stage.open()
    boxes = {}
    t = time.process_time()
    for i, frame in enumerate(frames):
        for _, m in stage.process(Item(i, {"frame": frame}), "in"):
            boxes[m.index] = m.data["box"]
    for _, m in stage.finish():
        boxes[m.index] = m.data["box"]
    cpu_ms = (time.process_time() - t) * 1e3 / len(frames)
    return boxes, cpu_ms, ctx.counts, stage.detector.name


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--weights", default="")
    args = ap.parse_args(argv)
    w, h = frame_size(args.size)
    clips = {
        "runs 40/10": clip_pattern(args.frames, 40, 10),
        "short shots 12/6": clip_pattern(args.frames, 12, 6),
    }
    print(f"{'clip':18s} {'every':>6s} {'detected/frame':>15s} {'core-ms/frame':>14s} "
          f"{'shot changes':>13s} {'missed':>7s} {'bridged':>8s}")
    for label, pattern in clips.items():
        frames = [face_frame(i, w, h, side=h // 2) if c == "F" else cutaway_frame(i, w, h)
                  for i, c in enumerate(pattern)]
        ref, ref_ms, ref_counts, name = run(frames, "1", args.weights)
        got, ms, counts, _ = run(frames, "auto", args.weights)
        missed = sum(ref[i] is not None and got[i] is None for i in ref)
        bridged = sum(ref[i] is None and got[i] is not None for i in ref)
        for every, c, cost, miss, bridge in (("1", ref_counts, ref_ms, "-", "-"),
                                             ("auto", counts, ms, missed, bridged)):
            print(f"{label:18s} {every:>6s} {c.get('detected', 0) / len(frames):15.3f} {cost:14.1f} "
                  f"{c.get('shot_changes', 0):13d} {miss!s:>7s} {bridge!s:>8s}")
    print(f"detector: {name}; core-ms = process CPU time of the detect stage per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
