"""Per-video-frame whisper audio tokens, computed as a stream with flat memory.

The encoder runs on 30 s windows and yields 50 steps per second, each step a stack of the
L+1 encoder states ([L+1, d], 5 x 384 for whisper-tiny). The steps of all windows are joined
and trimmed to ``T = samples // 320`` (floor(seconds * 50)). Video frame i gets 10 consecutive
steps, flattened time-major (time outer, layer inner) to [10 * (L+1), d] = [50, 384].

Which 10 steps (``s = floor(i * 50 / fps)``, exact rational arithmetic, fps never truncated):

- ``musetalk`` (MuseTalk v1.5): steps ``s - 2p .. s - 2p + 9`` with ``p = ceil(50 / fps)``;
  steps outside ``[0, T)`` are zeros. This is upstream's "pad 2p zeros left, 6p right, slice
  [s, s + 10)" with the right padding unbounded. Each window is the Whisper feature
  extractor's log-mel of its own 30 s of audio (zero padded) and the last state is taken
  after the final LayerNorm.
- ``latentsync``: steps ``s - 4 .. s + 5`` clamped to ``[0, T - 1]`` (edge replication).
  LatentSync's offset is fixed at 4 steps (its ``audio_feat_length`` [2, 2] times 2 steps per
  25 fps frame); it only ever runs at 25 fps, where both rules coincide. Its log-mel is one
  STFT over the whole clip (reflect padding only at the clip's ends), clamped 8 decades below
  the whole clip's peak, cut into 3000-frame windows whose tails are padded with zeros
  *after* normalisation; the last state is taken before the final LayerNorm.

Time rule (variable frame rate): a frame shown at ``t`` seconds starts at
``s = floor(t * 50)``. For a constant rate ``t = i / fps``, so it is the index rule exactly.
``int`` and ``Fraction`` times (e.g. ``pts * time_base``) are exact; a float time is treated
as exact to 1e-6 step (20 ns) so that ``i / fps`` rounded just below a step boundary still
lands on it.

Frame count: ``floor(samples * fps / 16000)``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Rational

import numpy as np
import torch
import torch.nn.functional as F

from lipgraph.models.whisper import (
    HOP_LENGTH,
    N_FFT,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    WINDOW_STEPS,
    WhisperAudioEncoder,
    log10_mel_spectrum,
    log_mel,
    normalize_log_mel,
)

MODELS = ("musetalk", "latentsync")
STEPS_PER_SECOND = 50
SAMPLES_PER_STEP = SAMPLE_RATE // STEPS_PER_SECOND  # 320
STEPS_PER_FRAME = 10
LATENTSYNC_LEFT_STEPS = 4
# Largest fps denominator recovered from a float: 29.97 -> 2997/100, 29.970029... -> 30000/1001.
FPS_MAX_DENOMINATOR = 1_000_000
# A float time this close below a step boundary counts as on it.
TIME_EPSILON_STEPS = 1e-6
_HALF_FFT = N_FFT // 2


class NeedMoreAudio(Exception):
    """More audio must be pushed (or the stream closed): ``samples_needed`` in all."""

    def __init__(self, samples_needed: int):
        super().__init__(f"need {samples_needed} samples of audio (or close())")
        self.samples_needed = samples_needed


def fps_fraction(fps: float | int | Fraction | str) -> Fraction:
    """Exact frame rate: ints and Fractions as given, floats to the nearest fraction with a
    denominator <= 10^6 (so 29.97 is 2997/100 and float(30000/1001) is 30000/1001)."""
    if isinstance(fps, (bool, np.bool_)):
        raise ValueError(f"fps must be a number, got {fps!r}")
    if isinstance(fps, Integral):
        value = Fraction(int(fps))
    elif isinstance(fps, Rational):
        value = Fraction(int(fps.numerator), int(fps.denominator))
    elif isinstance(fps, str):
        value = Fraction(fps)
    else:
        f = float(fps)
        if not math.isfinite(f):
            raise ValueError(f"fps must be finite, got {fps!r}")
        value = Fraction(f).limit_denominator(FPS_MAX_DENOMINATOR)
    if value <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return value


def frame_start_step(frame_index: int, fps: float | Fraction) -> int:
    """floor(frame_index * 50 / fps), exactly."""
    rate = fps_fraction(fps)
    return (frame_index * STEPS_PER_SECOND * rate.denominator) // rate.numerator


def time_start_step(t_seconds: float | Fraction) -> int:
    """floor(t * 50): exact for int/Fraction times, to within 1e-6 step for floats."""
    if isinstance(t_seconds, Integral):
        return int(t_seconds) * STEPS_PER_SECOND
    if isinstance(t_seconds, Rational):
        return math.floor(Fraction(int(t_seconds.numerator), int(t_seconds.denominator)) * STEPS_PER_SECOND)
    t = float(t_seconds)
    if not math.isfinite(t):
        raise ValueError(f"time must be finite, got {t_seconds!r}")
    return math.floor(t * STEPS_PER_SECOND + TIME_EPSILON_STEPS)


def frame_count(num_samples: int, fps: float | Fraction) -> int:
    """Video frames covered by the audio: floor(seconds * fps), exactly."""
    rate = fps_fraction(fps)
    return (num_samples * rate.numerator) // (SAMPLE_RATE * rate.denominator)


def step_count(num_samples: int) -> int:
    """Encoder steps kept after trimming: floor(seconds * 50)."""
    return num_samples // SAMPLES_PER_STEP


def musetalk_pad_unit(fps: float | Fraction) -> int:
    """MuseTalk's p = ceil(50 / fps): 2p zero steps go left of the audio, 6p right."""
    rate = fps_fraction(fps)
    return -((-STEPS_PER_SECOND * rate.denominator) // rate.numerator)


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: expected one of {MODELS}")


def _as_pcm(pcm: np.ndarray) -> np.ndarray:
    arr = np.asarray(pcm)
    if arr.ndim != 1:
        raise ValueError(f"expected mono 16 kHz audio [samples], got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


class _PcmBuffer:
    """Samples [start, end) of the audio received so far, as a list of chunks."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self.start = 0
        self.end = 0

    def push(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._chunks.append(pcm.copy())
            self.end += pcm.size

    def _joined(self) -> np.ndarray:
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)]
        return self._chunks[0]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Samples at absolute ``indices`` (all inside [start, end))."""
        return self._joined()[indices - self.start]

    def span(self, a: int, b: int) -> np.ndarray:
        return self._joined()[a - self.start : b - self.start]

    def discard_before(self, position: int) -> None:
        position = min(position, self.end)
        if position > self.start:
            self._chunks = [self._joined()[position - self.start :].copy()]
            self.start = position

    def __len__(self) -> int:
        return self.end - self.start


def _reflect(indices: np.ndarray, n: int) -> np.ndarray:
    """Reflect-pad index map of torch.stft(center=True) at both clip ends (edge not repeated)."""
    indices = np.where(indices < 0, -indices, indices)
    return np.where(indices >= n, 2 * (n - 1) - indices, indices)


def _clip_log10_mel(buffer: _PcmBuffer, k0: int, k1: int, total: int | None) -> torch.Tensor:
    """log10 mel frames [k0, k1) of the whole clip's centred STFT (LatentSync's framing).

    Frame k covers samples [160k - 200, 160k + 200); ``total`` (clip length) is needed only
    when a frame reaches past the end of the samples received.
    """
    idx = np.arange(HOP_LENGTH * k0 - _HALF_FFT, HOP_LENGTH * (k1 - 1) + _HALF_FFT)
    if total is not None:
        idx = _reflect(idx, total)
    elif idx[0] < 0:
        idx = np.abs(idx)
    return log10_mel_spectrum(torch.from_numpy(buffer.take(idx)), "openai")


def latentsync_mel_peak(pcm_chunks) -> float:
    """Peak of the whole clip's log10 mel (the reference of LatentSync's 8-decade clamp).

    Streams over ``pcm_chunks`` (an iterable of 16 kHz mono arrays) in flat memory; pass the
    result as ``mel_peak`` to a LatentSync :class:`AudioFeatureStream`.
    """
    buffer = _PcmBuffer()
    peak = -math.inf
    done = 0  # frames already measured
    for chunk in pcm_chunks:
        buffer.push(_as_pcm(chunk))
        ready = (buffer.end - _HALF_FFT) // HOP_LENGTH + 1  # frames whose samples have all arrived
        if ready - done >= WINDOW_FRAMES:
            peak = max(peak, float(_clip_log10_mel(buffer, done, ready, None).max()))
            done = ready
            buffer.discard_before(HOP_LENGTH * done - _HALF_FFT)
    total_frames = buffer.end // HOP_LENGTH
    if buffer.end <= _HALF_FFT:
        raise ValueError(f"audio too short for LatentSync features: {buffer.end} samples")
    if total_frames > done:
        peak = max(peak, float(_clip_log10_mel(buffer, done, total_frames, buffer.end).max()))
    return peak


class AudioFeatureStream:
    """Audio tokens for video frames in increasing order, computed lazily from pushed audio.

    ``push`` 16 kHz mono float chunks of any size, ``close()`` at the end of the audio, and ask
    ``features(i)`` (or ``features_at_time(t)``) in non-decreasing order; frames may be skipped.
    A request that needs audio not yet pushed raises :class:`NeedMoreAudio`. Only the encoder
    windows the current frame uses are kept (at most 2) and only the samples later windows
    need, so memory stays flat as long as audio is pushed about as fast as frames are asked.

    ``mel_peak`` (LatentSync only): the whole clip's log10-mel peak from
    :func:`latentsync_mel_peak`. Without it each 30 s window uses its own peak, which equals
    upstream for clips up to 30 s and differs only in the floor of very quiet passages after.
    """

    def __init__(
        self,
        encoder: WhisperAudioEncoder,
        model: str = "musetalk",
        fps: float | Fraction = 25.0,
        mel_peak: float | None = None,
    ):
        _check_model(model)
        if mel_peak is not None and model != "latentsync":
            raise ValueError("mel_peak applies to the 'latentsync' model only")
        self.encoder = encoder
        self.model = model
        self.fps = fps_fraction(fps)
        self.mel_peak = None if mel_peak is None else float(mel_peak)
        self.left_steps = (2 * musetalk_pad_unit(self.fps) if model == "musetalk"
                           else LATENTSYNC_LEFT_STEPS)
        self.windows_encoded = 0
        self._pcm = _PcmBuffer()
        self._closed = False
        self._windows: dict[int, np.ndarray] = {}
        self._last_start: int | None = None

    def push(self, pcm: np.ndarray) -> None:
        """Append 16 kHz mono samples (float, any chunk size)."""
        if self._closed:
            raise RuntimeError("push() after close()")
        self._pcm.push(_as_pcm(pcm))

    def close(self) -> None:
        """Mark the end of the audio; the frame and step counts become known."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def samples_received(self) -> int:
        return self._pcm.end

    @property
    def buffered_samples(self) -> int:
        return len(self._pcm)

    @property
    def held_windows(self) -> tuple[int, ...]:
        """Indices of the 30 s encoder windows currently kept."""
        return tuple(sorted(self._windows))

    @property
    def step_count(self) -> int | None:
        """floor(seconds * 50) once closed, else None."""
        return step_count(self._pcm.end) if self._closed else None

    @property
    def frame_count(self) -> int | None:
        """floor(seconds * fps) once closed, else None."""
        return frame_count(self._pcm.end, self.fps) if self._closed else None

    def skip_to_time(self, t_seconds: float | Fraction) -> None:
        """No frame before ``t_seconds`` will be asked: drop the audio and windows only earlier
        frames need, without encoding anything (a stream that is seldom asked, such as a dub
        whose face is off screen, stays as small as one that is asked every frame)."""
        first = max(time_start_step(t_seconds) - self.left_steps, 0) // WINDOW_STEPS
        for w in [w for w in self._windows if w < first]:
            del self._windows[w]
        self._pcm.discard_before(WINDOW_SAMPLES * first - _HALF_FFT)

    def features(self, frame_index: int) -> np.ndarray:
        """Tokens [10 * (L+1), d] (float32; [50, 384] for whisper-tiny) for video frame i."""
        if isinstance(frame_index, bool) or int(frame_index) != frame_index or frame_index < 0:
            raise ValueError(f"frame index must be a non-negative integer, got {frame_index!r}")
        return self._features_from(frame_start_step(int(frame_index), self.fps))

    def features_at_time(self, t_seconds: float | Fraction) -> np.ndarray:
        """Tokens for a frame shown at ``t_seconds`` (start step floor(t * 50))."""
        if t_seconds < 0:
            raise ValueError(f"time must be >= 0, got {t_seconds!r}")
        return self._features_from(time_start_step(t_seconds))

    def _features_from(self, start: int) -> np.ndarray:
        if self._last_start is not None and start < self._last_start:
            raise ValueError(
                f"audio features must be requested in increasing order: start step {start} "
                f"after {self._last_start}"
            )
        steps = start - self.left_steps + np.arange(STEPS_PER_FRAME)
        if self.model == "latentsync":
            steps = np.maximum(steps, 0)
        if self._closed:
            total = step_count(self._pcm.end)
            if self.model == "latentsync":
                if total == 0:
                    raise ValueError(
                        f"audio too short for LatentSync features: {self._pcm.end} samples (< 20 ms)"
                    )
                steps = np.minimum(steps, total - 1)
            valid = (steps >= 0) & (steps < total)
        else:
            # Until the end is known a step exists only once its 320 samples have arrived.
            needed_samples = SAMPLES_PER_STEP * (int(steps.max()) + 1)
            if self._pcm.end < needed_samples:
                raise NeedMoreAudio(needed_samples)
            valid = steps >= 0

        needed = sorted({int(s) // WINDOW_STEPS for s in steps[valid]})
        for w in needed:
            if w not in self._windows and not self._window_ready(w):
                raise NeedMoreAudio(self._samples_for_window(w))
        for w in list(self._windows):
            if w not in needed:  # requests only move forward: never needed again
                del self._windows[w]
        for w in needed:
            if w not in self._windows:
                self._windows[w] = self._encode_window(w)
        self._last_start = start
        next_window = needed[-1] + 1 if needed else max(int(steps.min()), 0) // WINDOW_STEPS
        self._pcm.discard_before(WINDOW_SAMPLES * next_window - _HALF_FFT)

        d = self.encoder.d_model
        out = np.zeros((STEPS_PER_FRAME, self.encoder.num_layers + 1, d), np.float32)
        for row, (s, ok) in enumerate(zip(steps, valid)):
            if ok:
                out[row] = self._windows[int(s) // WINDOW_STEPS][int(s) % WINDOW_STEPS]
        return out.reshape(-1, d)

    def _samples_for_window(self, w: int) -> int:
        end = WINDOW_SAMPLES * (w + 1)
        if self.model == "latentsync":
            # the window's last mel frame reaches 200 - 160 = 40 samples past its end
            end = HOP_LENGTH * (WINDOW_FRAMES * (w + 1) - 1) + _HALF_FFT
        return end

    def _window_ready(self, w: int) -> bool:
        return self._closed or self._pcm.end >= self._samples_for_window(w)

    def _encode_window(self, w: int) -> np.ndarray:
        if self.model == "musetalk":
            a = WINDOW_SAMPLES * w
            pcm = self._pcm.span(a, min(a + WINDOW_SAMPLES, self._pcm.end))
            mel = torch.from_numpy(log_mel(pcm))
        else:
            total = self._pcm.end if self._closed else None
            k0 = WINDOW_FRAMES * w
            k1 = k0 + WINDOW_FRAMES
            if total is not None:
                k1 = min(k1, total // HOP_LENGTH)
            spec = _clip_log10_mel(self._pcm, k0, k1, total)
            peak = self.mel_peak if self.mel_peak is not None else spec.max()
            mel = F.pad(normalize_log_mel(spec, peak), (0, WINDOW_FRAMES - spec.shape[1]))
        states = self.encoder.hidden_states(mel[None], final_layer_norm=self.model == "musetalk")
        self.windows_encoded += 1
        return states[0].float().cpu().numpy()
