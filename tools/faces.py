"""List the people in a video: face tracks with stable ids, for choosing whom to dub.

    python -m lipgraph.tools.faces VIDEO OUTDIR [--detector auto|s3fd|haar] [--weights DIR]
                                   [--detect-every N|auto] [--min-frames 5]

Writes OUTDIR/faces.json (per track: id, first_frame, last_frame, frames, mean box and the
frame ranges it is on), OUTDIR/faces.png (a contact sheet: one labelled thumbnail per track)
and prints a table. With `--detect-every N` (or auto: 8) detection runs on every Nth frame
and on both sides of each shot change, and a track's ends are known to within N-1 frames.
The ids are those `--face ID` takes: the same video with the same
detector gives the same ids. How detections become tracks: lipgraph/vision/face_tracks.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

from lipgraph.vision.face_tracks import FaceTracker, Track
from lipgraph.vision.shots import ShotCuts

AUTO_EVERY = 8      # detect_every: auto (and always on both sides of a shot change)
THUMB = 128


def find_tracks(video: str, detector, detect_every: str | int = 1, batch: int = 8,
                max_lost_s: float = 1.0) -> tuple[list[Track], dict]:
    """Detect and track every face of `video`; the tracks and the frames' thumbnails of each
    track's largest box (for the contact sheet), plus counts."""
    from lipgraph.media.probe import probe_video
    from lipgraph.media.video import VideoReader
    info = probe_video(video)
    auto = str(detect_every) == "auto"
    every = AUTO_EVERY if auto else int(detect_every)
    tracker = FaceTracker(max_lost=max(1, int(round(max_lost_s * info.fps))))
    cuts = ShotCuts()
    best: dict[int, tuple[float, np.ndarray]] = {}
    pending: list = []               # (index, frame, cut before it) waiting for a batch
    counts = {"frames": 0, "detected": 0, "shot_changes": 0}

    def flush():
        frames = [f for _, f, _ in pending]
        found = detector.detect(frames) if frames else []
        for (index, frame, cut), boxes in zip(pending, found):
            if cut:
                tracker.cut()
            for tid, box in tracker.update(index, boxes):
                area = float((box[2] - box[0]) * (box[3] - box[1]))
                if area > best.get(tid, (-1.0, None))[0]:
                    best[tid] = (area, _thumb(frame, box))
        counts["detected"] += len(pending)
        pending.clear()

    with VideoReader(video) as reader:
        prev = None                  # the last frame not sent to detection
        for vf in reader:
            counts["frames"] += 1
            cut = cuts.is_cut(vf.image)
            counts["shot_changes"] += cut
            if cut and prev is not None:          # the old shot's last frame closes its tracks
                pending.append(prev)
            if vf.index % every == 0 or cut:
                pending.append((vf.index, vf.image, cut))
                prev = None
            else:
                prev = (vf.index, vf.image, False)
            if len(pending) >= batch:
                flush()
        if prev is not None:                      # the video's last frame too
            pending.append(prev)
        flush()
    tracks = tracker.finish()
    return tracks, {"thumbs": {t: b for t, (_, b) in best.items()}, "fps": info.fps, **counts}


def _thumb(frame: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box[:4]
    pad = 0.25 * max(x1 - x0, y1 - y0)
    h, w = frame.shape[:2]
    x0, y0 = int(max(0, x0 - pad)), int(max(0, y0 - pad))
    x1, y1 = int(min(w, x1 + pad)), int(min(h, y1 + pad))
    crop = frame[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    side = max(crop.shape[:2])
    square = np.full((side, side, 3), 40, np.uint8)
    square[:crop.shape[0], :crop.shape[1]] = crop
    return cv2.resize(square, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def track_record(t: Track, fps: float) -> dict:
    box = t.mean_box()
    return {"id": t.id, "first_frame": t.first_frame, "last_frame": t.last_frame,
            "frames": len(t.frames), "seconds": round(len(t.frames) / fps, 2),
            "mean_box": [round(float(v), 1) for v in box], "on": t.ranges()}


def contact_sheet(records: list[dict], thumbs: dict, columns: int = 6) -> np.ndarray:
    """One labelled thumbnail per track (RGB)."""
    label_h = 34
    rows = max(1, -(-len(records) // columns))
    cols = max(1, min(columns, len(records)))
    sheet = np.full((rows * (THUMB + label_h), cols * THUMB, 3), 255, np.uint8)
    for k, r in enumerate(records):
        y, x = (k // cols) * (THUMB + label_h), (k % cols) * THUMB
        sheet[y:y + THUMB, x:x + THUMB] = thumbs[r["id"]]
        cv2.putText(sheet, f"id {r['id']}", (x + 4, y + THUMB + 14), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(sheet, f"{r['first_frame']}-{r['last_frame']}", (x + 4, y + THUMB + 29),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    return sheet


def list_faces(video: str, outdir: str, detector: str = "auto", weights: str | None = None,
               detect_every: str | int = 1, min_frames: int = 5) -> dict:
    """Write faces.json and faces.png for `video` under `outdir`; returns the JSON content."""
    from lipgraph.models.face_detection import build_face_detector
    det = build_face_detector(detector, weights)
    t0 = time.perf_counter()
    tracks, extra = find_tracks(video, det, detect_every)
    kept = [t for t in tracks if len(t.frames) >= min_frames]
    records = [track_record(t, extra["fps"]) for t in kept]
    result = {"video": os.path.abspath(video), "frames": extra["frames"],
              "detected_frames": extra["detected"], "shot_changes": extra["shot_changes"],
              "detect_every": str(detect_every), "min_frames": min_frames,
              "short_tracks_dropped": len(tracks) - len(kept), "tracks": records,
              "seconds": round(time.perf_counter() - t0, 2)}
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "faces.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    sheet = contact_sheet(records, extra["thumbs"]) if records else np.full((40, 200, 3), 255, np.uint8)
    cv2.imwrite(os.path.join(outdir, "faces.png"), sheet[:, :, ::-1])
    return result


def format_table(result: dict) -> str:
    lines = [f"{len(result['tracks'])} face track(s) in {result['frames']} frames "
             f"({result['shot_changes']} shot changes; {result['short_tracks_dropped']} track(s) "
             f"under {result['min_frames']} frames left out)",
             f"{'id':>4} {'first':>7} {'last':>7} {'frames':>7}  mean box (x1 y1 x2 y2)"]
    for r in result["tracks"]:
        box = " ".join(f"{v:.0f}" for v in r["mean_box"])
        lines.append(f"{r['id']:>4} {r['first_frame']:>7} {r['last_frame']:>7} {r['frames']:>7}  {box}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lipgraph.tools.faces", description=__doc__.split("\n\n")[0])
    ap.add_argument("video")
    ap.add_argument("outdir")
    ap.add_argument("--detector", default="auto", choices=("auto", "s3fd", "haar"))
    ap.add_argument("--weights", default=None, help="folder with s3fd-619a316812.pth")
    ap.add_argument("--detect-every", default="1", help="N or auto (as detect.detect_every)")
    ap.add_argument("--min-frames", type=int, default=5, help="leave out shorter tracks")
    a = ap.parse_args(argv)
    if a.detect_every != "auto" and not (a.detect_every.isdigit() and int(a.detect_every) >= 1):
        ap.error(f"--detect-every: expected a whole number >= 1 or auto, got {a.detect_every!r}")
    try:
        result = list_faces(a.video, a.outdir, a.detector, a.weights, a.detect_every, a.min_frames)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lipgraph faces: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"wrote {os.path.join(a.outdir, 'faces.json')} and {os.path.join(a.outdir, 'faces.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
