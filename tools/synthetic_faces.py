"""Synthetic clips with several people: two copies of a real face photograph (scikit-image's
astronaut, one mirrored and smaller) moving independently, one leaving the frame for a
while, cut with cutaway shots; for tests and benchmarks of face tracks and face choice.

The true box of every face on every frame comes with the clip, so a check can score tracks
against it. Each face's mouth can be opened frame by frame (a dark ellipse drawn over the
lips), to stand for speech in tests of the active speaker.
"""
from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from lipgraph.tools.synthetic import photo, speech_like, stamp_id, write_wav, cutaway_frame

HEAD = (slice(10, 250), slice(110, 350))     # the astronaut's head in the 512 x 512 photograph
MOUTH = (0.47, 0.585, 0.07, 0.02)            # mouth centre x, y and half-axes, in head sides


@dataclasses.dataclass
class Person:
    name: str
    side: int                  # head size in pixels
    x: float                   # centre, as a fraction of the frame width
    y: float                   # centre, as a fraction of the frame height
    mirrored: bool = False
    sway: tuple = (0.0, 0.0)   # horizontal and vertical sway, in pixels
    away: tuple = ()           # (first, last) frames it is out of the picture, inclusive

    def box(self, i: int, width: int, height: int) -> np.ndarray | None:
        if self.away and self.away[0] <= i <= self.away[1]:
            return None
        side = int(round(self.side * (0.95 + 0.05 * np.cos(i / 6.0))))
        cx = self.x * width + self.sway[0] * np.sin(i / 5.0)
        cy = self.y * height + self.sway[1] * np.sin(i / 7.0)
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        return np.array([x0, y0, x0 + side, y0 + side], np.float32)


def two_people(width: int = 640, height: int = 360, away: tuple = (30, 59)) -> list[Person]:
    """A larger face on the left, a smaller mirrored one on the right that leaves for `away`."""
    return [Person("left", int(height * 0.45), 0.28, 0.5, sway=(8, 3)),
            Person("right", int(height * 0.36), 0.72, 0.45, mirrored=True, sway=(3, 6), away=away)]


def head(person: Person, side: int, mouth_open: float) -> np.ndarray:
    face = np.ascontiguousarray(photo("astronaut")[HEAD])
    if person.mirrored:
        face = np.ascontiguousarray(face[:, ::-1])
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    if mouth_open > 0:
        mx, my, ax, ay = MOUTH
        mx = 1 - mx if person.mirrored else mx
        centre = (int(round(mx * side)), int(round(my * side)))
        axes = (max(1, int(round(ax * side))), max(1, int(round(ay * side * (0.3 + 2.5 * mouth_open)))))
        cv2.ellipse(face, centre, axes, 0, 0, 360, (40, 10, 20), -1, cv2.LINE_AA)
    return face


def people_frame(i: int, people: list[Person], width: int, height: int,
                 mouths: dict | None = None) -> tuple[np.ndarray, dict]:
    """One frame with every person in the picture, and their true boxes by name."""
    frame = np.full((height, width, 3), 70, np.uint8)
    frame[:, :, 2] = 90
    truth = {}
    for p in people:
        box = p.box(i, width, height)
        if box is None:
            continue
        x0, y0, x1, y1 = box.astype(int)
        opened = float(mouths[p.name][i]) if mouths and p.name in mouths else 0.0
        face = head(p, x1 - x0, opened)
        # clip to the frame: a face may stand partly outside it
        fx0, fy0 = max(0, -x0), max(0, -y0)
        fx1, fy1 = face.shape[1] - max(0, x1 - width), face.shape[0] - max(0, y1 - height)
        frame[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)] = face[fy0:fy1, fx0:fx1]
        truth[p.name] = box
    return stamp_id(frame, i), truth


def make_people_clip(folder: str, pattern: str, people: list[Person] | None = None,
                     fps: float = 25.0, width: int = 640, height: int = 360,
                     mouths: dict | None = None, name: str = "people",
                     audio=None) -> tuple[str, str, list[dict]]:
    """`pattern`: 'F' a frame of the people, 'C' a cutaway. Writes the video and a wav
    (`audio`: samples at 16 kHz, else speech-like); returns their paths and, per frame, the
    true boxes by person name (empty on cutaways)."""
    from lipgraph.media.writer import VideoWriter
    people = people or two_people(width, height)
    video = os.path.join(folder, f"{name}.mp4")
    truth = []
    with VideoWriter(video, width, height, fps, crf=14, preset="veryfast") as w:
        for i, c in enumerate(pattern):
            if c == "F":
                frame, boxes = people_frame(i, people, width, height, mouths)
            else:
                frame, boxes = cutaway_frame(i, width, height), {}
            w.write(frame)
            truth.append(boxes)
    wav = os.path.join(folder, f"{name}.wav")
    write_wav(wav, speech_like(len(pattern) / fps) if audio is None else audio)
    return video, wav, truth
