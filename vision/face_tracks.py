"""Face tracks: detections of the same face linked across frames, each with a stable id.

Rules (also in README "Several people"):
- A detection continues a track when its box overlaps the track's predicted box (the last
  box moved by the track's velocity over the frames since) with IoU >= `min_iou`, or, for
  faces moving fast between sparse detections (`detect_every`), when its centre lies within
  `max_jump` box sides of the predicted centre and its size is within a factor 1.5. Pairs
  are matched greedily, best overlap first, so two faces never share a track.
- A track ends at a shot cut, and when it has not been matched for `max_lost` frames (a face
  that leaves the frame for longer comes back as a new track).
- Ids are given in order of first appearance, left to right within a frame, starting at 1:
  the same video with the same detector gives the same ids.
- Frames the detector skipped (`detect_every`) between two consecutive detections matched to
  the same track belong to it (boxes interpolated), so tracks are complete when the detector
  runs every Nth frame only. A frame where detection ran and did not find the face is not on
  the track.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lipgraph.models.face_detection import box_iou


@dataclasses.dataclass
class Track:
    id: int
    frames: list[int] = dataclasses.field(default_factory=list)
    boxes: list[np.ndarray] = dataclasses.field(default_factory=list)
    ended: bool = False

    @property
    def first_frame(self) -> int:
        return self.frames[0]

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    def mean_box(self) -> np.ndarray:
        return np.mean([b[:4] for b in self.boxes], axis=0)

    def ranges(self) -> list[list[int]]:
        """The frames it is on, as inclusive [first, last] runs."""
        runs: list[list[int]] = []
        for f in self.frames:
            if runs and f == runs[-1][1] + 1:
                runs[-1][1] = f
            else:
                runs.append([f, f])
        return runs

    def box_at(self, frame: int) -> np.ndarray | None:
        """Its box on `frame`, or None when it is not on that frame."""
        i = int(np.searchsorted(self.frames, frame))
        return self.boxes[i] if i < len(self.frames) and self.frames[i] == frame else None

    def predicted(self, frame: int) -> np.ndarray:
        last = self.boxes[-1][:4]
        if len(self.frames) < 2:
            return last
        gap = self.frames[-1] - self.frames[-2]
        velocity = (last - self.boxes[-2][:4]) / max(gap, 1)
        return last + velocity * (frame - self.frames[-1])


def _side(box) -> float:
    return float(max(box[2] - box[0], box[3] - box[1], 1.0))


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


class FaceTracker:
    """Feed each detected frame's boxes in frame order (`update`), shot cuts (`cut`), then
    `finish()` for the tracks."""

    def __init__(self, min_iou: float = 0.3, max_jump: float = 0.6, max_lost: int = 25):
        self.min_iou, self.max_jump, self.max_lost = min_iou, max_jump, max_lost
        self.tracks: list[Track] = []
        self.active: list[Track] = []
        self.last_detected: int | None = None     # the previous frame detection ran on

    def cut(self) -> None:
        for t in self.active:
            t.ended = True
        self.active = []

    def update(self, frame: int, boxes) -> list[tuple[int, np.ndarray]]:
        """Link the detections of a frame detection ran on (also when it found nothing);
        returns (track id, box) for each detection."""
        boxes = np.asarray(boxes, np.float32)
        boxes = boxes.reshape(-1, boxes.shape[-1] if boxes.size else 5)
        for t in self.active:
            t.ended = frame - t.last_frame > self.max_lost
        self.active = [t for t in self.active if not t.ended]
        pairs = self._match(frame, boxes)
        matched = {d for _, d in pairs}
        out = []
        for t, d in pairs:
            self._extend(t, frame, boxes[d], fill=t.last_frame == self.last_detected)
            out.append((t.id, boxes[d]))
        self.last_detected = frame
        fresh = sorted((d for d in range(len(boxes)) if d not in matched), key=lambda d: boxes[d][0])
        for d in fresh:
            t = Track(id=len(self.tracks) + 1, frames=[frame], boxes=[boxes[d].copy()])
            self.tracks.append(t)
            self.active.append(t)
            out.append((t.id, boxes[d]))
        return out

    def finish(self) -> list[Track]:
        self.cut()
        return self.tracks

    def _match(self, frame: int, boxes: np.ndarray) -> list[tuple[Track, int]]:
        if not self.active or not len(boxes):
            return []
        candidates = []
        for t in self.active:
            pred = t.predicted(frame)
            overlap = box_iou(pred, boxes[:, :4])
            side = _side(pred)
            for d, box in enumerate(boxes):
                dist = np.linalg.norm(_centre(box) - _centre(pred))
                similar = 1 / 1.5 <= _side(box) / side <= 1.5
                if overlap[d] >= self.min_iou or (dist <= self.max_jump * side and similar):
                    # overlap first, then distance, so the tightest pairs win
                    candidates.append((overlap[d] - dist / (side * 100), t.id, d, t))
        pairs, used_t, used_d = [], set(), set()
        for _, tid, d, t in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
            if tid not in used_t and d not in used_d:
                pairs.append((t, d))
                used_t.add(tid)
                used_d.add(d)
        return pairs

    @staticmethod
    def _extend(t: Track, frame: int, box: np.ndarray, fill: bool) -> None:
        last_f, last_b = t.frames[-1], t.boxes[-1]
        for f in range(last_f + 1, frame if fill else last_f + 1):   # skipped frames
            w = (f - last_f) / (frame - last_f)
            b = ((1 - w) * last_b + w * box).astype(np.float32)
            t.frames.append(f)
            t.boxes.append(b)
        t.frames.append(frame)
        t.boxes.append(box.copy())
