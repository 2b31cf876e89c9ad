"""The active speaker: which face track's mouth moves with the source video's own speech.

`ActiveSpeaker` makes the choice from per-track scores given by a scorer. The default scorer
(`MouthMotion`, no extra weights): for every track on screen, the motion of its mouth region
(mean absolute change of a small grey patch of the lower-middle face box between consecutive
frames) is correlated with the change of the speech's loudness (absolute frame-to-frame
difference of the RMS envelope, one value per video frame) over a trailing window of about a
second. With SyncNet weights, `vision/speaker_syncnet.py` scores each track by SyncNet's
audio-visual confidence instead. The track with the highest score speaks; a new speaker must
beat the current one by the scorer's `margin` and the choice is held at least `hold_s`, so it
does not flicker. Until any track has a score, or when no track scores above the scorer's
`floor`, the current speaker is kept (none at the start).
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


class MouthMotion:
    """Scorer: the correlation of each track's mouth-patch motion with the loudness change
    over the trailing window (nan until a track has a full window of history)."""

    def __init__(self, fps: float, window_s: float = 1.0, margin: float = 0.15, floor: float = 0.2):
        self.window = max(4, int(round(window_s * fps)))
        self.margin, self.floor = margin, floor
        self.loud: collections.deque = collections.deque(maxlen=self.window)
        self.motion: dict[int, collections.deque] = {}
        self.last_patch: dict[int, tuple[int, np.ndarray]] = {}
        self.scores: dict[int, float] = {}

    def update(self, index: int, change: float, frame: np.ndarray, boxes: dict,
               when: tuple | None = None) -> set:
        """Feed one frame ({track id: box}; its time `when` is not needed here); returns the
        tracks measured on it. `scores` then holds every track still followed (one gone for a
        whole window is dropped)."""
        patches = {tid: p for tid, b in boxes.items() if (p := mouth_patch(frame, b)) is not None}
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
        return set(patches)

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


class ActiveSpeaker:
    """Feed frames in order: `update(index, change, frame, boxes, when)` with the loudness
    change of that frame, the frame, {track id: box} and the frame's (time, duration) in the
    source; returns the speaking track id (or None).
    `scorer` (default `MouthMotion`) scores the tracks; the hysteresis is the same for all."""

    def __init__(self, fps: float, scorer=None, hold_s: float = 0.5):
        self.scorer = scorer if scorer is not None else MouthMotion(fps)
        self.hold = int(round(hold_s * fps))
        self.speaker: int | None = None
        self.since = -10 ** 9

    @property
    def scores(self) -> dict:
        return self.scorer.scores

    def update(self, index: int, change: float, frame: np.ndarray, boxes: dict,
               when: tuple | None = None) -> int | None:
        seen = self.scorer.update(index, change, frame, boxes, when)
        speaker = self._decide(index)
        return speaker if speaker in seen else None

    def _decide(self, index: int) -> int | None:
        scores, floor = self.scorer.scores, self.scorer.floor
        ranked = sorted(((s, tid) for tid, s in scores.items() if np.isfinite(s)), reverse=True)
        if self.speaker is not None and self.speaker not in scores:
            self.speaker = None                  # the speaker left the picture
        if not ranked or ranked[0][0] < floor:
            return self.speaker
        best_score, best = ranked[0]
        if self.speaker is None:
            self.speaker, self.since = best, index
        elif best != self.speaker and index - self.since >= self.hold:
            current = scores.get(self.speaker, np.nan)
            if not np.isfinite(current) or best_score > current + self.scorer.margin:
                self.speaker, self.since = best, index
        return self.speaker


class SpeechLoudness:
    """A media file's own audio, decoded once and only as far as the frames fed (in order)
    need: the RMS envelope in 10 ms hops (one number per hop is kept), the loudness change of
    the frame shown at a time, and the samples of a time span (`span`; only the last `keep_s`
    seconds decoded are kept, for the SyncNet scorer)."""

    HOP_S = 0.01

    def __init__(self, path: str, sr: int = 16000, keep_s: float = 0.0):
        from lipgraph.media.audio import iter_audio_blocks
        self.sr, self.hop, self.keep = sr, int(sr * self.HOP_S), int(round(keep_s * sr))
        self.blocks = iter_audio_blocks(path, sr)
        self.pcm = np.zeros(0, np.float32)    # samples start .. read
        self.start = self.read = self.hops = 0
        self._rms = np.zeros(4096, np.float32)
        self.previous = None
        self._read_to(1)                      # a file without audio fails here, at open

    def _read_to(self, sample: int) -> None:
        while self.read < sample and self.blocks is not None:
            block = next(self.blocks, None)
            if block is None:
                self.blocks = None
                break
            self.pcm = np.concatenate([self.pcm, block[0]])
            self.read += len(block[0])
            first = self.hops * self.hop - self.start      # the next hop, in self.pcm
            n = (len(self.pcm) - first) // self.hop
            if n:
                seg = self.pcm[first:first + n * self.hop].reshape(n, self.hop).astype(np.float64)
                if self.hops + n > len(self._rms):
                    self._rms = np.concatenate([self._rms, np.zeros(max(n, len(self._rms)), np.float32)])
                self._rms[self.hops:self.hops + n] = np.sqrt(np.mean(seg ** 2, axis=1))
                self.hops += n
            # keep the part of the next hop read so far and the last `keep` samples
            drop = min(self.hops * self.hop, self.read - self.keep) - self.start
            if drop > 0:
                self.pcm, self.start = self.pcm[drop:], self.start + drop

    def level(self, t: float, dt: float) -> float:
        a, b = int(t / self.HOP_S), max(int((t + dt) / self.HOP_S), int(t / self.HOP_S) + 1)
        self._read_to(b * self.hop)
        seg = self._rms[a:min(b, self.hops)]
        return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0

    def change(self, t: float, dt: float) -> float:
        """|level of this frame - level of the frame before| (frames fed in order)."""
        level = self.level(t, dt)
        prev, self.previous = self.previous, level
        return 0.0 if prev is None else abs(level - prev)

    def span(self, t: float, dt: float) -> np.ndarray:
        """The samples of [t, t + dt) (zeros beyond the audio's ends)."""
        a, n = int(round(t * self.sr)), int(round(dt * self.sr))
        self._read_to(a + n)
        if max(a, 0) < self.start:
            raise ValueError(f"samples from {t:.3f} s are no longer kept (keep_s={self.keep / self.sr})")
        out = np.zeros(n, np.float32)
        lo, hi = max(a, 0), min(a + n, self.read)
        if hi > lo:
            out[lo - a:hi - a] = self.pcm[lo - self.start:hi - self.start]
        return out
