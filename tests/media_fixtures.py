"""Generate small test media with PyAV (no ffmpeg binary needed).

Import from a test as `from media_fixtures import make_video, make_audio, ...`
(pytest puts tests/ on sys.path).

- `pattern_frame(i, w, h)`: an RGB frame whose top third carries `i` as 10
  black/white bars that survive lossy coding; `read_pattern_index(img)`
  reads it back, so a test can tell which source frame it got.
- `make_video(path, frames=30, fps=25.0, size=(96, 64), ...)`: writes a video
  and returns the frame times (seconds) it used.
- `make_audio(path, seconds=1.0, sr=16000, ...)`: writes a sine (or a given
  signal) in the format the extension names and returns the samples.
- `dominant_frequency(x, sr)`, `psnr(a, b)`: checks on decoded content.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Sequence

import av
import numpy as np

PATTERN_BITS = 10  # indices 0..1023

# Muxers whose codec or layout needs saying; others are guessed from the extension.
_AUDIO_CODECS = {
    ".wav": "pcm_s16le",
    ".mp3": "libmp3lame",
    ".m4a": "aac",
    ".mp4": "aac",
    ".aac": "aac",
    ".flac": "flac",
    ".ogg": "libopus",
    ".opus": "libopus",
    ".mkv": "aac",
}


def pattern_frame(index: int, width: int = 96, height: int = 64) -> np.ndarray:
    """HxWx3 uint8 frame: index bars on top, colour gradients and a moving box below."""
    image = np.zeros((height, width, 3), np.uint8)
    band = max(1, height // 3)
    edges = np.linspace(0, width, PATTERN_BITS + 1).round().astype(int)
    for bit in range(PATTERN_BITS):
        on = (index >> (PATTERN_BITS - 1 - bit)) & 1
        image[:band, edges[bit] : edges[bit + 1]] = 235 if on else 16
    rows = height - band
    image[band:, :, 0] = np.linspace(20, 235, width, dtype=np.float32).round().astype(np.uint8)[None, :]
    image[band:, :, 1] = np.linspace(20, 235, rows, dtype=np.float32).round().astype(np.uint8)[:, None]
    image[band:, :, 2] = 60
    side = max(2, min(width, rows) // 4)
    x = (index * 3) % max(1, width - side)
    image[band : band + side, x : x + side, 2] = 220
    return image


def read_pattern_index(image: np.ndarray) -> int:
    """The index `pattern_frame` drew into `image` (after decoding)."""
    height, width = image.shape[:2]
    band = max(1, height // 3)
    edges = np.linspace(0, width, PATTERN_BITS + 1)
    y0, y1 = max(0, band // 2 - 2), min(band, band // 2 + 3)
    value = 0
    for bit in range(PATTERN_BITS):
        cx = int((edges[bit] + edges[bit + 1]) / 2)
        patch = image[y0:y1, max(0, cx - 1) : cx + 2].astype(np.float32)
        value = (value << 1) | int(patch.mean() > 125)
    return value


def vfr_times(n: int, fps: float, seed: int = 0) -> list[float]:
    """n irregular frame times: steps between 0.5/fps and 1.5/fps, on 1/90000 s ticks."""
    steps = np.random.default_rng(seed).uniform(0.5, 1.5, max(0, n - 1)) / fps
    ticks = np.round(np.concatenate([[0.0], np.cumsum(steps)]) * 90000)  # whole 1/90000 s ticks
    return (ticks / 90000).tolist()


def sine(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode_audio(container, stream, signal: np.ndarray, sr: int) -> None:
    """Feed [channels, n] float samples to an audio stream in its own sample format."""
    fmt = stream.format.name
    layout = "mono" if signal.shape[0] == 1 else "stereo"
    step, pos = 4096, 0
    while pos < signal.shape[1]:
        block = np.clip(signal[:, pos : pos + step], -1.0, 1.0)
        if fmt.startswith("s16"):
            data = (block * 32767).round().astype(np.int16)
        elif fmt.startswith("s32"):
            data = (block * 2147483647.0).round().astype(np.int32)
        else:
            data = block.astype(np.float32)
        if not fmt.endswith("p"):  # packed: interleave the channels
            data = data.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
        frame.sample_rate = sr
        frame.pts = pos
        frame.time_base = Fraction(1, sr)
        for packet in stream.encode(frame):
            container.mux(packet)
        pos += block.shape[1]
    for packet in stream.encode(None):
        container.mux(packet)


def make_audio(
    path: str | os.PathLike,
    seconds: float = 1.0,
    sr: int = 16000,
    codec: str | None = None,
    freq: float = 440.0,
    channels: int = 1,
    signal: np.ndarray | None = None,
) -> np.ndarray:
    """Write an audio file (.wav .mp3 .m4a .flac .ogg ...) and return its samples.

    The signal is a `freq` Hz sine of amplitude 0.5, or `signal` (float,
    [n] or [channels, n]); the return value is float32 [channels, n]
    (for mono the first axis has length 1).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    codec = codec or _AUDIO_CODECS.get(ext)
    if codec is None:
        raise ValueError(f"no default audio codec for {path}; pass codec=")
    if signal is None:
        signal = np.stack([sine(freq, seconds, sr)] * channels)
    signal = np.atleast_2d(np.asarray(signal, np.float32))
    container = av.open(path, mode="w")
    try:
        stream = container.add_stream(codec, rate=sr, layout="mono" if signal.shape[0] == 1 else "stereo")
        _encode_audio(container, stream, signal, sr)
    finally:
        container.close()
    return signal


def make_video(
    path: str | os.PathLike,
    frames: int | Sequence[np.ndarray] = 30,
    fps: float = 25.0,
    size: tuple[int, int] = (96, 64),
    codec: str = "libx264",
    vfr: bool = False,
    rotation: int | None = None,
    audio: float | np.ndarray | None = None,
    times: Sequence[float] | None = None,
    gop: int | None = None,
    pix_fmt: str | None = None,
    audio_sr: int = 44100,
) -> list[float]:
    """Write a test video and return the time (s) of every frame written.

    frames: a count of `pattern_frame`s of `size` (width, height), or the
        HxWx3 uint8 RGB frames themselves.
    fps: nominal rate (float, e.g. 30000/1001); frame k at k/fps unless
        `vfr=True` (irregular steps, seeded) or explicit `times`.
    rotation: clockwise degrees a player turns the stored picture (the
        phone convention, as `VideoInfo.rotation`). The frames given are the
        upright picture; they are stored turned the other way, with a display
        matrix, so a correct reader returns them unchanged.
    audio: a sine frequency in Hz or a mono float signal at `audio_sr`,
        written as AAC (or the container's usual codec) lasting as long as
        the video.
    gop: keyframe interval; pix_fmt defaults to yuv420p (yuv444p for odd
        sizes with libx264).
    """
    path = os.fspath(path)
    if isinstance(frames, int):
        width, height = size
        images = [pattern_frame(i, width, height) for i in range(frames)]
    else:
        images = [np.asarray(f, np.uint8) for f in frames]
    n = len(images)
    height, width = images[0].shape[:2]
    if times is None:
        times = vfr_times(n, fps) if vfr else [k / fps for k in range(n)]
    times = [float(t) for t in times]
    if len(times) != n:
        raise ValueError(f"{len(times)} times for {n} frames")
    turns = (rotation or 0) // 90 % 4
    if turns % 2:
        width, height = height, width  # stored size
    if pix_fmt is None:
        odd = width % 2 or height % 2
        pix_fmt = "yuv444p" if odd and codec == "libx264" else "yuv420p"

    rate = Fraction(fps).limit_denominator(1001)
    tb = Fraction(1, 90000)
    container = av.open(path, mode="w")
    try:
        options = {"g": str(gop)} if gop else {}
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = tb
        stream.codec_context.time_base = tb
        if turns:
            # PyAV takes the display turn counter-clockwise
            stream.set_display_rotation(-90 * turns)
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream(_AUDIO_CODECS.get(os.path.splitext(path)[1].lower(), "aac"),
                                                rate=audio_sr, layout="mono")
        for image, t in zip(images, times):
            stored = np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = round(Fraction(t) / tb)
            frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio_stream is not None:
            seconds = times[-1] + 1.0 / fps
            if np.isscalar(audio):
                signal = sine(float(audio), seconds, audio_sr)
            else:
                signal = np.asarray(audio, np.float32)
            _encode_audio(container, audio_stream, signal[None, :], audio_sr)
    finally:
        container.close()
    return times


def dominant_frequency(x: np.ndarray, sr: int) -> float:
    """Frequency (Hz) of the strongest spectral peak of a mono signal."""
    x = np.asarray(x, np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * sr / x.size)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
