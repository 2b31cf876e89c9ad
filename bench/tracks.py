#!/usr/bin/env python3
"""What face tracking and speaker selection cost per frame, beside detection: the tracker
alone on synthetic detections (2, 4 and 8 faces per frame, with misses and shot cuts), the
active-speaker choice (mouth patches and correlation) on two faces, and the people listing
(`tools/faces.py`: decode + detection + tracking) on a generated two-person clip, in one run.
Costs are process CPU time (core-ms per frame), so they do not depend on other load.
`--syncnet` adds the SyncNet scorer of the speaker choice (a randomly initialised full-size
SyncNet on the CPU, two faces; also wall ms per frame, as torch uses several threads).

    python bench/tracks.py [--frames 3000] [--size 1280x720] [--syncnet]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

from _common import frame_size, parser
from lipgraph.vision.face_tracks import FaceTracker


def synthetic_detections(frames: int, faces: int, seed: int = 5):
    """Faces drifting around fixed seats, each missed on 3% of frames; a cut every 250."""
    rng = np.random.default_rng(seed)
    seats = rng.uniform(100, 1100, size=(faces, 2))
    out = []
    for i in range(frames):
        boxes = []
        for k, (x, y) in enumerate(seats):
            if rng.random() < 0.03:
                continue
            cx, cy = x + 20 * np.sin(i / 9 + k), y + 10 * np.cos(i / 11 + k)
            boxes.append([cx - 50, cy - 60, cx + 50, cy + 60, 0.99])
        out.append((i % 250 == 0 and i > 0, np.array(boxes, np.float32).reshape(-1, 5)))
    return out


def tracker_cost(frames: int, faces: int) -> tuple[float, int]:
    dets = synthetic_detections(frames, faces)
    t = time.process_time()
    tracker = FaceTracker()
    for i, (cut, boxes) in enumerate(dets):
        if cut:
            tracker.cut()
        tracker.update(i, boxes)
    tracks = tracker.finish()
    return (time.process_time() - t) * 1000 / frames, len(tracks)


def two_faces(frames: int) -> list:
    from lipgraph.tools.synthetic_faces import people_frame, two_people
    people = two_people(away=())
    return [people_frame(i, people, 1280, 720, {"left": np.full(frames, 0.5)}) for i in range(frames)]


def speaker_cost(frames: int = 300) -> float:
    from lipgraph.vision.speaker import ActiveSpeaker
    shots = two_faces(frames)
    rng = np.random.default_rng(1)
    t = time.process_time()
    spk = ActiveSpeaker(25.0)
    for i, (frame, truth) in enumerate(shots):
        spk.update(i, float(rng.random()), frame, {1: truth["left"], 2: truth["right"]})
    return (time.process_time() - t) * 1000 / frames


def syncnet_cost(frames: int = 100) -> tuple[float, float]:
    """Core-ms and wall ms per frame of the speaker choice scored by SyncNet."""
    from lipgraph.models.syncnet import SyncNet
    from lipgraph.tools.synthetic import speech_like, write_wav
    from lipgraph.vision.speaker import ActiveSpeaker, SpeechLoudness
    from lipgraph.vision.speaker_syncnet import KEEP_S, SyncNetConfidence
    shots = two_faces(frames)
    wav = os.path.join(tempfile.mkdtemp(prefix="lipgraph-tracks-"), "speech.wav")
    write_wav(wav, speech_like(frames / 25.0))
    audio = SpeechLoudness(wav, keep_s=KEEP_S)
    spk = ActiveSpeaker(25.0, SyncNetConfidence(SyncNet().eval().requires_grad_(False), audio))
    t, wall = time.process_time(), time.perf_counter()
    for i, (frame, truth) in enumerate(shots):
        when = (i / 25.0, 1 / 25.0)
        spk.update(i, audio.change(*when), frame, {1: truth["left"], 2: truth["right"]}, when)
    return (time.process_time() - t) * 1000 / frames, (time.perf_counter() - wall) * 1000 / frames


def listing_cost(size: str) -> tuple[float, int, int]:
    from lipgraph.tools.faces import list_faces
    from lipgraph.tools.synthetic_faces import make_people_clip, two_people
    w, h = frame_size(size)
    folder = tempfile.mkdtemp(prefix="lipgraph-tracks-")
    pattern = ("F" * 80 + "C" * 15) * 2
    video, _, _ = make_people_clip(folder, pattern, two_people(w, h), width=w, height=h)
    t = time.process_time()
    result = list_faces(video, os.path.join(folder, "out"), "haar", detect_every="auto")
    cpu = (time.process_time() - t) * 1000 / len(pattern)
    return cpu, len(result["tracks"]), result["detected_frames"]


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--syncnet", action="store_true", help="also the SyncNet scorer (slow on CPU)")
    a = ap.parse_args()
    print(f"{'faces/frame':>11} {'tracker core-ms/frame':>22} {'tracks':>7}")
    for faces in (2, 4, 8):
        ms, n = tracker_cost(a.frames, faces)
        print(f"{faces:>11} {ms:>22.3f} {n:>7}")
    print(f"speaker choice on 2 faces at 1280x720: {speaker_cost():.3f} core-ms/frame")
    if a.syncnet:
        cpu, wall = syncnet_cost()
        print(f"speaker choice scored by SyncNet (CPU, full size) on 2 faces at 1280x720: "
              f"{cpu:.1f} core-ms/frame, {wall:.1f} ms/frame wall")
    ms, n, detected = listing_cost(a.size)
    print(f"listing (decode + Haar with detect_every auto + tracking) at {a.size}: "
          f"{ms:.1f} core-ms/frame, {n} tracks, {detected} of 190 frames detected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
