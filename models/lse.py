"""The LSE-C / LSE-D lip-sync scores, with SyncNet (`models/syncnet.py`).

LSE-D and LSE-C are the scores of Wav2Lip's evaluation: SyncNet embeds every 5-frame window
of a face crop and the 0.2 s of MFCC under it; the mean distance between the two streams is
taken at each audio offset of -15..15 frames; LSE-D is the smallest mean distance, LSE-C the
median over offsets minus that minimum. Each face track (a run of consecutive face frames of
one shot) is scored on its own and the tracks' scores are averaged.

Reference pipeline, reproduced here:
- frames at 25 fps (other rates are resampled to 25 fps, as `ffmpeg -r 25` does: the frame
  on screen at each tick);
- face crop: box centre and half-side (larger side / 2), each median-filtered over the track
  (kernel 13, zero-padded ends as scipy's `medfilt`); the crop spans 1.4 half-sides left and
  right of the centre, 1 above and 1.8 below, the frame padded with gray 110, resized to
  224 x 224 (bilinear); BGR, 0..255, not normalised;
- audio: 16 kHz mono as int16 values; MFCC as `python_speech_features.mfcc` with its defaults
  (25 ms rectangular window, 10 ms hop, 512-point FFT, 26 mel filters, 13 cepstra, lifter 22,
  pre-emphasis 0.97, c0 replaced by the log frame energy); 4 MFCC steps per video frame, 20
  per window;
- a track of F frames gives F - 5 windows (as the reference does); the audio is cut to the
  track's span; a track counts when it is longer than `min_track` frames (100) and its mean
  box side exceeds `min_face_size` (100 px).

Differences from the reference: face boxes come from the caller (the pipeline's detector)
instead of the reference's own S3FD tracker; crops are not re-encoded (the reference writes
them through an XVID file and JPEGs, which adds compression noise); MFCC is computed here
with numpy and matches `python_speech_features` to floating-point rounding.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .face_detection import iou

FPS = 25.0                   # the network's frame rate
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640      # 16000 / 25
WINDOW = 5                   # video frames per window
MFCC_PER_FRAME = 4           # 100 MFCC steps per second / 25 fps
MFCC_WINDOW = WINDOW * MFCC_PER_FRAME
VSHIFT = 15                  # audio offsets searched: -15..15 frames
CROP_SIZE = 224
CROP_SCALE = 0.4
CROP_FILL = 110
BOX_SMOOTHING = 13
MIN_TRACK = 100
MIN_FACE_SIZE = 100


# ----------------------------------------------------------------------------- audio


def _pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] as the int16 values a 16-bit WAV holds (what the reference reads)."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio.astype(np.float64)
    return np.clip(np.rint(audio.astype(np.float64) * 32768.0), -32768, 32767)


def _mel_filterbank(n_filters: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular filters on FFT bins, [n_filters, n_fft // 2 + 1], edges on whole bins."""
    top = 2595.0 * np.log10(1.0 + (sample_rate / 2) / 700.0)
    mels = np.linspace(0.0, top, n_filters + 2)
    edges = np.floor((n_fft + 1) * 700.0 * (10.0 ** (mels / 2595.0) - 1.0) / sample_rate)
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[None]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = np.where((k >= lo) & (k < mid), (k - lo) / np.maximum(mid - lo, 1.0), 0.0)
    falling = np.where((k >= mid) & (k < hi), (hi - k) / np.maximum(hi - mid, 1.0), 0.0)
    return rising + falling


def _dct_ortho(n_in: int, n_out: int) -> np.ndarray:
    """The first `n_out` rows of the orthonormal DCT-II matrix of size `n_in`."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None]
    m = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))
    m[0] /= np.sqrt(2.0)
    return m


def syncnet_mfcc(audio: np.ndarray, block: int = 4096) -> np.ndarray:
    """MFCC [13, T] at 100 steps per second, as `python_speech_features.mfcc(pcm16, 16000)`.

    `audio` is mono float in [-1, 1] (scaled to int16 values, as the reference reads a
    16-bit WAV) or int16. Frames are computed `block` at a time so memory stays small."""
    x = _pcm16(np.asarray(audio).reshape(-1))
    if len(x):
        x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    win, hop, n_fft = 400, 160, 512          # 25 ms and 10 ms at 16 kHz; FFT: the next power of 2
    count = 1 if len(x) <= win else 1 + int(math.ceil((len(x) - win) / hop))
    padded = np.zeros((count - 1) * hop + win)
    padded[:len(x)] = x
    fbank = _mel_filterbank(26, n_fft, SAMPLE_RATE)
    dct = _dct_ortho(26, 13)
    lift = 1.0 + 11.0 * np.sin(np.pi * np.arange(13) / 22)    # lifter 22
    eps = np.finfo(float).eps
    out = np.empty((count, 13))
    view = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop]
    for s in range(0, count, block):
        power = np.abs(np.fft.rfft(view[s:s + block], n_fft)) ** 2 / n_fft
        energy = power.sum(1)
        energy[energy == 0] = eps
        mel = power @ fbank.T
        mel[mel == 0] = eps
        cep = (np.log(mel) @ dct.T) * lift
        cep[:, 0] = np.log(energy)
        out[s:s + block] = cep
    return out.T.astype(np.float32)


# ----------------------------------------------------------------------------- faces


@dataclass
class FaceTrack:
    """Consecutive face frames of one shot, in 25 fps frame numbers."""

    start: int
    boxes: np.ndarray            # [F, 4] x1, y1, x2, y2

    @property
    def end(self) -> int:        # exclusive
        return self.start + len(self.boxes)


def resample_to_25fps(count: int, fps: float) -> list[int]:
    """Source frame on screen at each 25 fps tick, for `count` frames at a constant `fps`."""
    if count <= 0:
        return []
    if abs(fps - FPS) < 1e-6:
        return list(range(count))
    n_out = max(1, int(round(count * FPS / fps)))
    return [min(count - 1, int(math.floor(k * fps / FPS + 1e-6))) for k in range(n_out)]


def face_tracks(boxes: Sequence[Sequence[float] | None], min_track: int = MIN_TRACK,
                min_face_size: float = MIN_FACE_SIZE, iou_threshold: float = 0.5) -> list[FaceTrack]:
    """Split per-frame boxes (None: no face) into tracks: a track ends at a face-less frame or
    where consecutive boxes overlap by IoU <= `iou_threshold` (a cut). Tracks of more than
    `min_track` frames whose mean box side exceeds `min_face_size` are kept."""
    runs: list[tuple[int, list]] = []
    for i, box in enumerate(boxes):
        if box is None:
            continue
        box = [float(v) for v in box]
        if runs and runs[-1][0] + len(runs[-1][1]) == i and iou(runs[-1][1][-1], box) > iou_threshold:
            runs[-1][1].append(box)
        else:
            runs.append((i, [box]))
    tracks = []
    for start, run in runs:
        b = np.asarray(run, dtype=np.float64)
        size = max(np.mean(b[:, 2] - b[:, 0]), np.mean(b[:, 3] - b[:, 1]))
        if len(b) > min_track and size > min_face_size:
            tracks.append(FaceTrack(start, b))
    return tracks


def _median_filter(x: np.ndarray, kernel: int) -> np.ndarray:
    half = kernel // 2
    padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, kernel), axis=1)


def smooth_track(boxes: np.ndarray, kernel: int = BOX_SMOOTHING) -> np.ndarray:
    """[F, 3] crop centre x, centre y and half-side per frame, median-filtered over the track."""
    x1, y1, x2, y2 = np.asarray(boxes, dtype=np.float64).T[:4]
    half = np.maximum(y2 - y1, x2 - x1) / 2
    return np.stack([_median_filter(v, kernel) for v in ((x1 + x2) / 2, (y1 + y2) / 2, half)], axis=1)


def crop_face(frame: np.ndarray, cx: float, cy: float, half: float, scale: float = CROP_SCALE,
              size: int = CROP_SIZE, fill: int = CROP_FILL) -> np.ndarray:
    """The SyncNet face crop (channel order kept): rows centre-half .. centre+half*(1+2*scale),
    columns centre -/+ half*(1+scale), frame padded with `fill`, resized to size x size."""
    h, w = frame.shape[:2]
    pad = int(half * (1 + 2 * scale))
    # the reference pads the frame by `pad` and truncates float bounds in padded coordinates
    y0 = int(cy + pad - half)
    y1 = min(int(cy + pad + half * (1 + 2 * scale)), h + 2 * pad)
    x0 = int(cx + pad - half * (1 + scale))
    x1 = min(int(cx + pad + half * (1 + scale)), w + 2 * pad)
    y0, x0 = max(y0, 0), max(x0, 0)
    if y1 <= y0 or x1 <= x0:
        return np.full((size, size, frame.shape[2]), fill, np.uint8)
    out = np.full((y1 - y0, x1 - x0, frame.shape[2]), fill, np.uint8)
    sy0, sy1 = max(y0 - pad, 0), min(y1 - pad, h)
    sx0, sx1 = max(x0 - pad, 0), min(x1 - pad, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 + pad - y0:sy1 + pad - y0, sx0 + pad - x0:sx1 + pad - x0] = frame[sy0:sy1, sx0:sx1]
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------- scoring


@dataclass
class SyncScore:
    """Result of the offset search for one track."""

    offset: int                  # frames; > 0: the lips move `offset` frames after the sound
    confidence: float            # LSE-C: median(mean_dists) - min
    min_dist: float              # LSE-D: min(mean_dists)
    mean_dists: np.ndarray       # [2 * vshift + 1] mean distance per audio shift -vshift..vshift
    windows: int


def sync_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """[N, 2*vshift+1]: distance of video window i to audio window i + s for s = -vshift..vshift;
    audio windows outside 0..N-1 are zero vectors, as in the reference."""
    video, audio = torch.as_tensor(video).float(), torch.as_tensor(audio).float()
    if video.shape != audio.shape or video.ndim != 2:
        raise ValueError(f"expected two [N, D] embeddings of one shape, got {tuple(video.shape)} "
                         f"and {tuple(audio.shape)}")
    n = len(video)
    padded = F.pad(audio, (0, 0, vshift, vshift))
    # one shift at a time: memory stays [N, D] however long the track
    return torch.stack([F.pairwise_distance(video, padded[j:j + n]) for j in range(2 * vshift + 1)], 1)


def sync_score(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> SyncScore:
    """Offset, confidence (LSE-C) and minimum distance (LSE-D) of one track's embeddings."""
    mean = sync_distances(video, audio, vshift).mean(0)
    best = int(torch.argmin(mean))
    low = float(mean[best])
    return SyncScore(offset=vshift - best, confidence=float(torch.median(mean)) - low, min_dist=low,
                     mean_dists=mean.numpy(), windows=len(video))


@dataclass
class _TrackState:
    track: FaceTrack
    smooth: np.ndarray
    windows: int
    crops: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    pending: list = field(default_factory=list)
    video: list = field(default_factory=list)
    done: int = 0


def _embed(model: Any, fn: str, batch: np.ndarray) -> torch.Tensor:
    param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    x = torch.from_numpy(batch)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    with torch.inference_mode():
        return getattr(model, fn)(x).float().cpu()


def _flush_lips(state: _TrackState, model: Any) -> None:
    if state.pending:
        # [B, 5, H, W, 3] RGB -> [B, 3, 5, H, W] BGR
        stack = np.stack(state.pending)[..., ::-1].transpose(0, 4, 1, 2, 3).astype(np.float32)
        state.video.append(_embed(model, "embed_lips", np.ascontiguousarray(stack)))
        state.pending = []


def _audio_embeddings(track: FaceTrack, windows: int, audio: np.ndarray, model: Any,
                      batch_size: int) -> torch.Tensor:
    segment = audio[track.start * SAMPLES_PER_FRAME:track.end * SAMPLES_PER_FRAME]
    mfcc = syncnet_mfcc(segment)
    out = []
    for s in range(0, windows, batch_size):
        idx = range(s, min(windows, s + batch_size))
        batch = np.stack([mfcc[:, i * MFCC_PER_FRAME:i * MFCC_PER_FRAME + MFCC_WINDOW] for i in idx])
        out.append(_embed(model, "embed_audio", batch[:, None].astype(np.float32)))
    return torch.cat(out)


def lse_tracks(frames: Iterable, boxes: Sequence[Sequence[float] | None], audio_16k: np.ndarray,
               fps: float, *, model: Any, vshift: int = VSHIFT, min_track: int = MIN_TRACK,
               min_face_size: float = MIN_FACE_SIZE, batch_size: int = 20) -> list[dict]:
    """Score every face track of a video: frames (RGB arrays, or objects with `.image`) are
    read once, in order; `boxes[i]` is frame i's face box or None. `model` is a SyncNet (or
    anything with `embed_lips` / `embed_audio`). Returns one dict per scored track."""
    audio = np.asarray(audio_16k).reshape(-1)
    source = resample_to_25fps(len(boxes), fps)
    tracks = face_tracks([boxes[j] for j in source], min_track, min_face_size)
    states = []
    for t in tracks:
        n = min(len(t.boxes), (len(audio) - t.start * SAMPLES_PER_FRAME) // SAMPLES_PER_FRAME)
        if n - WINDOW >= 1:     # the reference scores F - 5 windows of an F-frame track
            states.append(_TrackState(t, smooth_track(t.boxes), n - WINDOW))
    if not states:
        return []
    by_frame: dict[int, list[int]] = {}
    for k, j in enumerate(source):
        by_frame.setdefault(j, []).append(k)
    active = 0
    for j, frame in enumerate(frames):
        if active >= len(states):
            break
        image = getattr(frame, "image", frame)
        for k in by_frame.get(j, ()):
            while active < len(states) and k >= states[active].track.end:
                _flush_lips(states[active], model)
                active += 1
            if active >= len(states) or k < states[active].track.start:
                continue
            st = states[active]
            cx, cy, half = st.smooth[k - st.track.start]
            st.crops.append(crop_face(image, cx, cy, half))
            if len(st.crops) == WINDOW and st.done < st.windows:
                st.pending.append(np.stack(st.crops))
                st.done += 1
                if len(st.pending) >= batch_size:
                    _flush_lips(st, model)
    for st in states:
        _flush_lips(st, model)
    results = []
    for st in states:
        if st.done < st.windows:
            raise ValueError(f"the video ended after fewer frames than its {len(boxes)} boxes")
        video = torch.cat(st.video)
        score = sync_score(video, _audio_embeddings(st.track, st.windows, audio, model, batch_size), vshift)
        results.append({"start_frame": st.track.start, "frames": len(st.track.boxes),
                        "windows": st.windows, "offset": score.offset,
                        "lse_c": score.confidence, "lse_d": score.min_dist})
    return results
