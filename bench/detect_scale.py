#!/usr/bin/env python3
"""What detecting on a downscaled frame changes: face-box IoU of `max_side` N against full
resolution, on real photographs placed at several face sizes in 1080p and 4K frames.

Upstream runs S3FD at full resolution; `detect.max_side` trades that for speed. Run it with
S3FD weights (`--weights DIR` or the torch hub cache) to decide whether a downscale keeps
the boxes (IoU >= 0.95 is the bar in docs/fidelity.md). Without them it measures OpenCV's
Haar cascade instead and says so: those figures describe the fallback detector, not S3FD.

    python bench/detect_scale.py [--weights DIR] [--sides 640,960,1280] [--device cpu|cuda]
"""
from __future__ import annotations

import sys
import time
import warnings

import cv2
import numpy as np

from _common import parser
from lipgraph.models.face_detection import build_face_detector, iou
from lipgraph.tools.synthetic import photo

FRAMES = {"1080p": (1080, 1920), "4K": (2160, 3840)}
FACE_SHARES = (0.12, 0.25, 0.5)       # the photograph's height as a share of the frame's


def scene(frame_hw, share, photo_name="astronaut", seed=0):
    """A frame of the given size with the photograph pasted at `share` of its height on a
    textured background (so the detector sees more than a flat field)."""
    h, w = frame_hw
    rng = np.random.default_rng(seed)
    frame = cv2.resize(photo("coffee"), (w, h), interpolation=cv2.INTER_LINEAR)
    frame = np.clip(frame.astype(np.int16) + rng.integers(-8, 8, frame.shape), 0, 255).astype(np.uint8)
    side = int(h * share)
    face = cv2.resize(photo(photo_name), (side, side), interpolation=cv2.INTER_AREA)
    y, x = (h - side) // 3, (w - side) // 2
    frame[y:y + side, x:x + side] = face
    return frame


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--weights", default="", help="folder holding s3fd-619a316812.pth")
    ap.add_argument("--sides", default="640,960,1280")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    sides = [int(s) for s in args.sides.split(",")]

    def detector(side):
        return build_face_detector("auto", args.weights or None, device=args.device, max_side=side)

    with warnings.catch_warnings(record=True):       # the fallback's warning: said below
        warnings.simplefilter("always")
        full = detector(None)
    name = full.name
    if name != "s3fd":
        print("S3FD weights not found: measuring OpenCV's Haar cascade instead "
              "(the fallback detector; these figures say nothing about S3FD)")
    if name == "haar":
        full.max_side = None           # the cascade's own default downscales: undo it
    print(f"detector: {name}")
    print(f"{'frame':6s} {'face px':>8s} {'max_side':>8s} {'IoU':>6s} {'ms full':>8s} {'ms down':>8s}")
    worst = 1.0
    for label, hw in FRAMES.items():
        for share in FACE_SHARES:
            frame = scene(hw, share)
            t = time.perf_counter()
            ref = full.detect([frame])[0]
            t_full = (time.perf_counter() - t) * 1e3
            if len(ref) == 0:
                print(f"{label:6s} {int(hw[0] * share):8d} {'-':>8s} no face at full resolution")
                continue
            for side in sides:
                down = detector(side)
                t = time.perf_counter()
                got = down.detect([frame])[0]
                t_down = (time.perf_counter() - t) * 1e3
                score = max((iou(ref[0], g) for g in got), default=0.0)
                worst = min(worst, score)
                print(f"{label:6s} {int(hw[0] * share):8d} {side:8d} {score:6.3f} {t_full:8.1f} {t_down:8.1f}")
    print(f"worst IoU: {worst:.3f} ({name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
