"""SyncNet's audio-visual confidence as the active-speaker score: `face: speaker` when SyncNet's
weights are found (stages/face_detect.py, param `syncnet`).

Each track's SyncNet face crop (models/lse.py `crop_face`, from the track's box on that frame)
is kept for every 25 fps tick (the frame on screen at the tick, as LSE resamples) over a
trailing second. Every `every` ticks, each track on screen with a full second is scored as
LSE-C scores a track: lip embeddings of its 5-frame windows, audio embeddings of the source's
MFCC over the same span, and `sync_score`'s confidence (median over audio offsets of the mean
distance, minus the minimum; offsets of +-7 frames, as 20 windows hold too few pairs for
LSE-C's +-15). A track keeps its last score between evaluations; `margin` and `floor` of the
choice (vision/speaker.py `ActiveSpeaker`) are in confidence units.
"""
from __future__ import annotations

import collections
import math

import numpy as np
import torch

from lipgraph.models.lse import (FPS, WINDOW, FaceTrack, _audio_embeddings, _embed, crop_face,
                                 smooth_track, sync_score)

KEEP_S = 2.0     # audio SpeechLoudness must keep for `span`: the window and a decoded block


class _Track:
    def __init__(self, frames: int):
        self.crops: collections.deque = collections.deque(maxlen=frames)   # one per tick
        self.lips: dict[int, torch.Tensor] = {}   # window start tick -> lip embedding
        self.next = self.seen = None              # the tick expected next; the last tick on screen
        self.score = np.nan


class SyncNetConfidence:
    """Scorer for `ActiveSpeaker`: `update(index, change, frame, boxes, when)` per frame, in
    order, `when` the frame's (time, duration) in the source; the source's audio is read from
    `audio` (vision/speaker.py `SpeechLoudness`, kept >= KEEP_S); `scores` {track id:
    confidence, nan until scored}."""

    def __init__(self, model, audio, window_s: float = 1.0, every: int = 5, vshift: int = 7,
                 margin: float = 1.0, floor: float = 1.0):
        self.model, self.audio = model, audio
        self.frames = max(WINDOW + 1, int(round(window_s * FPS)))
        self.windows = self.frames - WINDOW       # as LSE: F frames give F - 5 windows
        self.every, self.vshift = every, vshift
        self.margin, self.floor = margin, floor
        self.tracks: dict[int, _Track] = {}
        self.scores: dict[int, float] = {}

    def update(self, index: int, change: float, frame: np.ndarray, boxes: dict,
               when: tuple) -> set:
        t, dt = when
        first, end = math.ceil(t * FPS - 1e-6), math.ceil((t + dt) * FPS - 1e-6)   # ticks shown
        for tid, box in boxes.items():
            track = self.tracks.setdefault(tid, _Track(self.frames))
            track.seen = end
            if end <= first:                       # between two ticks (a rate above 25 fps)
                continue
            if track.next != first:                # a gap: start the window over
                track.crops.clear()
                track.lips.clear()
            cx, cy, half = smooth_track(np.asarray([box[:4]]), kernel=1)[0]
            crop = crop_face(frame, cx, cy, half)
            track.crops.extend([crop] * (end - first))
            track.next = end
        for tid in [tid for tid, tr in self.tracks.items() if end - tr.seen >= self.frames]:
            del self.tracks[tid]                   # gone for a whole window
        if end // self.every > first // self.every:
            self._evaluate(end)
        self.scores = {tid: tr.score for tid, tr in self.tracks.items()}
        return set(boxes)

    def _evaluate(self, end: int) -> None:
        ready = [tr for tr in self.tracks.values() if tr.next == end and len(tr.crops) == self.frames]
        if not ready:
            return
        k0 = end - self.frames
        pcm = self.audio.span(k0 / FPS, self.frames / FPS)
        # the window as a track of its own: its audio windows as lse_tracks cuts them
        audio = _audio_embeddings(FaceTrack(0, np.zeros((self.frames, 4))), self.windows, pcm,
                                  self.model, self.windows)
        starts = range(k0, k0 + self.windows)
        for tr in ready:
            tr.lips = {s: tr.lips[s] for s in starts if s in tr.lips}
            new = [s for s in starts if s not in tr.lips]
            if new:
                crops = list(tr.crops)
                batch = np.stack([np.stack(crops[s - k0:s - k0 + WINDOW]) for s in new])
                # [B, 5, H, W, 3] RGB -> [B, 3, 5, H, W] BGR, as models/lse.py feeds SyncNet
                batch = np.ascontiguousarray(batch[..., ::-1].transpose(0, 4, 1, 2, 3), np.float32)
                tr.lips.update(zip(new, _embed(self.model, "embed_lips", batch)))
            video = torch.stack([tr.lips[s] for s in starts])
            tr.score = sync_score(video, audio, self.vshift).confidence
