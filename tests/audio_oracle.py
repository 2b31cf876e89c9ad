"""The whole-clip audio features, written straight from the upstream description: the oracle
the streaming `AudioFeatureStream` is checked against."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from lipgraph.media.audio_features import (
    _HALF_FFT,
    LATENTSYNC_LEFT_STEPS,
    STEPS_PER_FRAME,
    _as_pcm,
    _check_model,
    fps_fraction,
    frame_count,
    frame_start_step,
    musetalk_pad_unit,
    step_count,
)
from lipgraph.models.whisper import (
    HOP_LENGTH,
    N_FFT,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    WhisperAudioEncoder,
    log_mel,
    mel_filters,
    normalize_log_mel,
)


@torch.no_grad()
def reference_features(
    pcm: np.ndarray, fps: float | Fraction, encoder: WhisperAudioEncoder, flavour: str = "musetalk"
) -> np.ndarray:
    """Tokens [N, 10 * (L+1), d] for all N = floor(seconds * fps) frames, the whole clip at once.

    Written straight from the upstream description (all windows, join, trim, pad, slice);
    memory grows with the clip, so use it for short clips and as the streaming oracle.
    """
    _check_model(flavour)
    pcm = _as_pcm(pcm)
    n = pcm.shape[0]
    rate = fps_fraction(fps)
    num_frames = frame_count(n, rate)
    total = step_count(n)
    d = encoder.d_model

    if flavour == "musetalk":
        if n == 0:
            return np.zeros((0, STEPS_PER_FRAME * (encoder.num_layers + 1), d), np.float32)
        mels = [log_mel(pcm[a : a + WINDOW_SAMPLES]) for a in range(0, n, WINDOW_SAMPLES)]
        states = encoder.hidden_states(torch.from_numpy(np.stack(mels)), final_layer_norm=True)
        states = states.float().cpu().numpy().reshape(-1, *states.shape[2:])[:total]
        p = musetalk_pad_unit(rate)
        last_end = frame_start_step(num_frames - 1, rate) + STEPS_PER_FRAME if num_frames else 0
        right = max(6 * p, last_end - (2 * p + total))  # upstream's 6p can fall short above 50 fps
        zeros = np.zeros((1, *states.shape[1:]), np.float32)
        padded = np.concatenate([np.repeat(zeros, 2 * p, 0), states, np.repeat(zeros, right, 0)])
        out = [
            padded[s : s + STEPS_PER_FRAME].reshape(-1, d)
            for s in (frame_start_step(i, rate) for i in range(num_frames))
        ]
    else:
        if n <= _HALF_FFT or total == 0:
            raise ValueError(f"audio too short for LatentSync features: {n} samples")
        x = torch.from_numpy(pcm)
        spec = torch.stft(
            x, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), center=True, return_complex=True
        )[:, :-1]
        log_spec = torch.clamp(mel_filters("openai") @ (spec.abs() ** 2), min=1e-10).log10()
        mel = normalize_log_mel(log_spec, log_spec.max())
        pieces = []
        for seek in range(0, mel.shape[1], WINDOW_FRAMES):
            seg = mel[:, seek : seek + WINDOW_FRAMES]
            kept = seg.shape[1] // 2
            seg = F.pad(seg, (0, WINDOW_FRAMES - seg.shape[1]))
            h = encoder.hidden_states(seg[None], final_layer_norm=False)[0]
            pieces.append(h[:kept].float().cpu().numpy())
        states = np.concatenate(pieces)
        assert states.shape[0] == total, (states.shape, total)
        out = []
        for i in range(num_frames):
            centre = frame_start_step(i, rate)
            first = centre - LATENTSYNC_LEFT_STEPS
            idx = np.clip(np.arange(first, first + STEPS_PER_FRAME), 0, total - 1)
            out.append(states[idx].reshape(-1, d))
    if not out:
        return np.zeros((0, STEPS_PER_FRAME * (encoder.num_layers + 1), d), np.float32)
    return np.stack(out).astype(np.float32, copy=False)
