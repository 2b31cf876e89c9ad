"""Which face of a frame to dub: `face: largest | X,Y | ID[,ID...]` of the face_detect stage.

- `largest`: the face continuing the current one (overlap), else the largest.
- `X,Y` (a point: fractions of the frame such as 0.25,0.5, or pixels such as 640.0,360.0;
  written with decimal points, unlike ids): the face under that point, then that face as it moves (by
  overlap) even when it leaves the point; when it is lost, the face under the point again.
- `ID[,ID...]`: the face tracks listed by `python -m lipgraph.tools.faces` (the same
  detection on every frame, shot cuts and tracking rules, so the same ids); on each frame the
  first listed id present. A frame with none of them takes the cutaway path.
- `ID+ID[+ID...]`: every listed track present on a frame is dubbed (one dub per speaker:
  `--dub ID=AUDIO`); the frame's faces go through the models as items of the same index.
- `speaker`: the track whose mouth moves with the source video's own speech
  (vision/speaker.py), followed frame by frame, so the dub follows turn-taking.
"""
from __future__ import annotations

import numpy as np

from lipgraph.models.face_detection import box_iou, pick_face

from .face_tracks import FaceTracker
from .speaker import ActiveSpeaker

CONTINUE_IOU = 0.3


def parse_choice(text: str) -> tuple:
    """("largest",), ("speaker",), ("point", x, y), ("ids", (id, ...)) or ("all", (id, ...))
    (the forms in the module's docstring); ValueError naming the forms."""
    text = str(text).strip()
    if text in ("largest", "speaker"):
        return (text,)
    every = "+" in text
    parts = [p.strip() for p in text.split("+" if every else ",")]
    try:
        if len(parts) == 2 and all("." in p for p in parts):
            x, y = (float(p) for p in parts)
            if x < 0 or y < 0:
                raise ValueError
            return ("point", x, y)
        ids = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected largest, speaker, a point X.,Y. (fractions of the frame such as "
                         f"0.25,0.5, or pixels such as 640.0,360.0), track ids ID[,ID...] "
                         f"from python -m lipgraph.tools.faces (the first present) or ID+ID... "
                         f"(all present), got {text!r}") from None
    if min(ids) < 1:
        raise ValueError(f"track ids start at 1, got {text!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"a track id is listed twice in {text!r}")
    return ("all" if every else "ids", ids)


def tracks_ids(choice: tuple) -> bool:
    """Whether the choice follows the listing's track ids (ids, all, speaker): every frame is
    then detected and tracked from the video's first frame, as the listing does."""
    return choice[0] in ("ids", "all", "speaker")


class FaceChoice:
    """Feed every detected frame in order: `choose(index, boxes, previous, cut)` returns the
    chosen box (or None) and its track id (ids only, else None)."""

    def __init__(self, choice: tuple, max_lost: int = 25, fps: float = 25.0, scorer=None):
        self.kind = choice[0]
        self.choice = choice
        self.tracker = FaceTracker(max_lost=max_lost) if tracks_ids(choice) else None
        self.others: list = []     # kind "all": the frame's other chosen (box, id), after the first
        # speaker: `scorer` scores the tracks (vision/speaker.py; mouth motion when None)
        self.speaker = ActiveSpeaker(fps, scorer) if self.kind == "speaker" else None

    size = (1, 1)      # the frame's width and height, for a point given in fractions

    def choose(self, index: int, boxes, previous, cut: bool = False, frame=None,
               loudness_change: float = 0.0, when: tuple | None = None):
        boxes = np.asarray(boxes, np.float32)
        boxes = boxes.reshape(-1, boxes.shape[-1] if boxes.size else 5)
        if self.kind == "largest":
            box = pick_face(boxes, previous)
            return (None if box is None else box.astype(np.float32)), None
        if self.kind == "point":
            return self._at_point(boxes, previous), None
        if cut:
            self.tracker.cut()
        on_frame = dict(self.tracker.update(index, boxes))
        if self.kind == "speaker":
            tid = self.speaker.update(index, loudness_change, frame, on_frame, when)
            return (on_frame[tid].astype(np.float32), tid) if tid in on_frame else (None, None)
        present = [(on_frame[t].astype(np.float32), t) for t in self.choice[1] if t in on_frame]
        self.others = present[1:] if self.kind == "all" else []
        return present[0] if present else (None, None)

    def _at_point(self, boxes, previous):
        if not len(boxes):
            return None
        if previous is not None:
            overlap = box_iou(np.asarray(previous)[:4], boxes[:, :4])
            best = int(np.argmax(overlap))
            if overlap[best] >= CONTINUE_IOU:
                return boxes[best].copy()
        _, x, y = self.choice
        if x <= 1 and y <= 1:
            x, y = x * self.size[0], y * self.size[1]
        under = [b for b in boxes if b[0] <= x <= b[2] and b[1] <= y <= b[3]]
        if not under:
            return None
        return min(under, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])).copy()
