"""The active speaker: which face track's mouth moves with the source video's own speech.

Without extra weights: for every track on screen, the motion of its mouth region (mean
absolute change of a small grey patch of the lower-middle face box between consecutive
frames) is correlated with the change of the speech's loudness (absolute frame-to-frame
difference of the RMS envelope, one value per video frame) over a trailing window of about a
second. The track with the highest correlation speaks; a new speaker must beat the current
one by `margin` and the choice is held at least `hold_s`, so it does not flicker. Until any
track has `window` frames of history, or when no track correlates above `floor`, the current
speaker is kept (none at the start).
"""
from __future__ import annotations

import collections

import cv2
import numpy as np

PATCH = (24, 12)          # mouth patch size (w, h) motion is measured on


def mouth_patch(frame: np.ndarray, box) -> np.ndarray | None:
    """Grey patch of the mouth region: the middle half of the box's width, its lower third."""
    x0, y0, x1, y1 = [float(v) for v in box[:4]]
    w, h = x1 - x0, y1 - y0
    xa, xb = int(round(x0 + 0.25 * w)), int(round(x1 - 0.25 * w))
    ya, yb = int(round(y0 + 0.62 * h)), int(round(y1 - 0.05 * h))
    H, W = frame.shape[:2]
    xa, xb, ya, yb = max(xa, 0), min(xb, W), max(ya, 0), min(yb, H)
    if xb - xa < 4 or yb - ya < 4:
        return None
    grey = cv2.cvtColor(np.ascontiguousarray(frame[ya:yb, xa:xb]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, PATCH, interpolation=cv2.INTER_AREA).astype(np.float32)


def loudness_changes(pcm: np.ndarray, sr: int, fps: float, frames: int) -> np.ndarray:
    """|change of the RMS envelope| per video frame (frame i covers [i/fps, (i+1)/fps))."""
    edges = np.round(np.arange(frames + 1) * sr / fps).astype(np.int64)
    rms = np.zeros(frames, np.float32)
    for i in range(frames):
        seg = pcm[edges[i]:edges[i + 1]]
        rms[i] = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0
    return np.abs(np.diff(rms, prepend=rms[:1]))


class ActiveSpeaker:
    """Feed frames in order: `update(index, change, patches)` with the loudness change of
    that frame and {track id: mouth patch}; returns the speaking track id (or None)."""

    def __init__(self, fps: float, window_s: float = 1.0, margin: float = 0.15,
                 hold_s: float = 0.5, floor: float = 0.2):
        self.window = max(4, int(round(window_s * fps)))
        self.margin, self.floor = margin, floor
        self.hold = int(round(hold_s * fps))
        self.loud: collections.deque = collections.deque(maxlen=self.window)
        self.motion: dict[int, collections.deque] = {}
        self.last_patch: dict[int, tuple[int, np.ndarray]] = {}
        self.speaker: int | None = None
        self.since = -10 ** 9
        self.scores: dict[int, float] = {}

    def update(self, index: int, change: float, patches: dict) -> int | None:
        self.loud.append(float(change))
        for tid, patch in patches.items():
            prev = self.last_patch.get(tid)
            m = float(np.abs(patch - prev[1]).mean()) if prev is not None and prev[0] == index - 1 else np.nan
            self.motion.setdefault(tid, collections.deque(maxlen=self.window)).append(m)
            self.last_patch[tid] = (index, patch)
        for tid in list(self.motion):
            if tid not in patches:              # not found on this frame: a gap in its history
                self.motion[tid].append(np.nan)
                if np.isnan(self.motion[tid]).all():      # gone for a whole window
                    del self.motion[tid]
                    self.last_patch.pop(tid, None)
        self.scores = {tid: self._score(m) for tid, m in self.motion.items()}
        speaker = self._decide(index)
        return speaker if speaker in patches else None

    def _score(self, motion) -> float:
        n = len(motion)
        if n < self.window:
            return np.nan
        m = np.asarray(motion, np.float64)
        a = np.asarray(self.loud, np.float64)[-n:]
        if len(a) < n:
            m = m[-len(a):]
        ok = np.isfinite(m)
        if ok.sum() < self.window // 2 or m[ok].std() < 1e-6 or a[ok].std() < 1e-9:
            return 0.0
        return float(np.corrcoef(m[ok], a[ok])[0, 1])

    def _decide(self, index: int) -> int | None:
        ranked = sorted(((s, tid) for tid, s in self.scores.items() if np.isfinite(s)), reverse=True)
        if self.speaker is not None and self.speaker not in self.motion:
            self.speaker = None                  # the speaker left the picture
        if not ranked or ranked[0][0] < self.floor:
            return self.speaker
        best_score, best = ranked[0]
        if self.speaker is None:
            self.speaker, self.since = best, index
        elif best != self.speaker and index - self.since >= self.hold:
            current = self.scores.get(self.speaker, np.nan)
            if not np.isfinite(current) or best_score > current + self.margin:
                self.speaker, self.since = best, index
        return self.speaker


class SpeechLoudness:
    """The RMS envelope of a media file's own audio in 10 ms hops (read once, streaming: one
    number per hop is kept), and the loudness change of the frame shown at a time."""

    HOP_S = 0.01

    def __init__(self, path: str, sr: int = 16000):
        from lipgraph.media.audio import iter_audio_blocks
        hop = int(sr * self.HOP_S)
        rms, rest = [], np.zeros(0, np.float32)
        for block in iter_audio_blocks(path, sr):
            pcm = np.concatenate([rest, block[0]])
            n = len(pcm) // hop
            if n:
                rms.append(np.sqrt(np.mean(pcm[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)))
            rest = pcm[n * hop:]
        self.rms = np.concatenate(rms).astype(np.float32) if rms else np.zeros(0, np.float32)
        self.previous = None

    def level(self, t: float, dt: float) -> float:
        a, b = int(t / self.HOP_S), max(int((t + dt) / self.HOP_S), int(t / self.HOP_S) + 1)
        seg = self.rms[a:b]
        return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0

    def change(self, t: float, dt: float) -> float:
        """|level of this frame - level of the frame before| (frames fed in order)."""
        level = self.level(t, dt)
        prev, self.previous = self.previous, level
        return 0.0 if prev is None else abs(level - prev)
